#!/bin/bash
# Show qemu running a stale translation of kernel code that ftrace rewrote
# (examples/kernel/README.md, "Direct calls"):
#
#   bash examples/kernel/stale-code.sh OUT KIND LOOPS [QEMU]
#
# OUT is the output directory of a 6.12 e2e run (for instance
# /var/tmp/ftpatch-kernel-6.12-clang/out), KIND stock or ftpatch, QEMU the
# qemu-system-aarch64 to run (default: the system's).  The boot loads,
# switches the function tracer over, and unloads ftrace-direct-multi and
# -multi-modify LOOPS times each (ftpatch.direct_loop, examples/kernel/init.c).
# If an Oops comes, the script reads the first four words of schedule and
# wake_up_process from guest memory through qemu's monitor and prints
# them: a NOP (d503201f) in the BL slot there, under an Oops whose pc is
# the unloaded trampoline and whose lr is schedule+0xc, is qemu executing
# a BL that is no longer in memory.  Prints one line: KIND, loops done,
# Oopses; the log is OUT/stale-code-KIND.log.
set -euo pipefail
out=$1 kind=$2 loops=$3 qemu=${4:-qemu-system-aarch64}
log=$out/stale-code-$kind.log
sock=$(mktemp -u /tmp/stale-code-XXXXXX.sock)
monitor() {
	python3 - "$sock" "$@" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.3)
s.recv(65536)
for cmd in sys.argv[2:]:
    s.sendall((cmd + "\n").encode())
    time.sleep(0.5)
    for line in s.recv(65536).decode(errors="replace").replace("\r", "").splitlines():
        if line.startswith("ffff"):
            print(line)
EOF
}
rm -f "$log"
# panic=0: after the Oops the machine stays up for the monitor to read it.
timeout 1800 "$qemu" -M virt -cpu "${QEMU_CPU:-max,pauth-impdef=on}" -smp 4 -m 512 \
	-nographic -no-reboot -nic none -monitor "unix:$sock,server,nowait" -serial "file:$log" \
	-kernel "$out/Image-$kind" -initrd "$out/modules-$kind.cpio" \
	-append "console=ttyAMA0 panic=0 ftpatch.direct_loop=$loops" </dev/null >/dev/null 2>&1 &
qpid=$!
while kill -0 "$qpid" 2>/dev/null; do
	sleep 2
	grep -aq "Internal error" "$log" || continue
	sleep 3
	grep -a -m2 "pc : \|lr : " "$log" | tr -d '\r'
	for sym in schedule wake_up_process; do
		addr=$(grep -a -o "$sym at 0x[0-9a-f]*" "$log" | head -1 | awk '{print $3}')
		echo "memory at $sym ($addr):"
		monitor "x /4xw $addr"
	done
	monitor quit >/dev/null || true
	break
done
wait "$qpid" || true
echo "$kind: $(grep -ac 'direct loop: [0-9]* of' "$log") of $loops loops done, $(grep -ac 'Internal error' "$log") Oops line(s)"
