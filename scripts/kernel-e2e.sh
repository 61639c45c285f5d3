#!/usr/bin/env bash
# End-to-end: a real Linux arm64 kernel built with ftpatch boots and traces.
#
# FTPATCH_KERNEL_VERSION picks the kernel:
#   6.1   (default) linux-source-6.1, DYNAMIC_FTRACE_WITH_REGS,
#         -fpatchable-function-entry=2, no KASLR, patches/000[123]-*.patch;
#         the rewrite runs when CONFIG_FTPATCH=y (FTPATCH names the
#         command) and the link fails if vmlinux.o is not rewritten, as
#         for 6.12 below; modules as for 6.12 (their calls go direct)
#   6.12  linux-source-6.12, DYNAMIC_FTRACE_WITH_ARGS + _WITH_CALL_OPS,
#         -fpatchable-function-entry=4,2 (two prefix NOPs hold the ops
#         literal), KASLR (RELOCATABLE + RANDOMIZE_BASE: vmlinux is a PIE
#         whose records are R_AARCH64_RELATIVE addends; each boot's offset is
#         read from /proc/kallsyms and must be non-zero and differ between
#         the two passing boots), patches/6.12/000[123]-*.patch; the rewrite runs when
#         CONFIG_FTPATCH=y (FTPATCH names the command), the link fails if
#         vmlinux.o is not rewritten (checked: a build with a rewrite that
#         does nothing must fail), and the init also runs two ftrace users
#         at once (ftpatch.ops=N: a filtered function tracer in a second
#         instance while the top one switches function/function_graph), so
#         sites move between per-callsite ops under load.
#   6.12-clang  the same 6.12 kernel built with Clang and LLD (LLVM=1) and
#         ARM64_BTI_KERNEL + ARM64_PTR_AUTH_KERNEL (BTI C between the
#         prefix NOPs and the entry NOPs, PACIASP after them), booted on
#         qemu -cpu max,pauth-impdef=on (FEAT_BTI and PAuth; the boot log
#         must show both detected), in /var/tmp/ftpatch-kernel-6.12-clang.
#         Without RANDOMIZE_MODULE_REGION_FULL: its modules call
#         ftrace_caller directly, the GCC kernel's through their ftrace PLTs
#         (ftpatch.module_path: a boot whose random module region cannot
#         show the path asked for is booted again).
#
# From Debian's linux-source-VERSION this script builds, in one output
# directory and incrementally, four arm64 tinyconfig+ftrace kernels:
#   stock     patches 0001 (CONFIG_FTPATCH=n: hook inert) + 0003 (timing
#             print): the kernel writes MOV X9, X30 into every site at boot
#   negative  CONFIG_FTPATCH=y, so vmlinux.o is rewritten, but the arm64
#             ftrace code is stock (no 0002): must fail loudly at boot
#   ftpatch   all three patches and CONFIG_FTPATCH=y: must boot and trace
#   unrewritten  all three patches, every ftpatch command "true" (after a
#             build whose "rewrite" does nothing failed at the link): the
#             patched ftrace_init_nop() must refuse the NOPs (ftrace bug)
# plus the test module (examples/kernel/module) for the stock and ftpatch
# kernels, one built with a "rewrite" that does nothing and one damaged,
# boots each under qemu-system-aarch64 (-M virt, 4 CPUs; -nic none, as the
# default NIC wants an iPXE ROM that is not installed) with the static init
# from examples/kernel/init.c, judges every log, and writes
# $WORK/out/summary.json plus one "E2E ..." line per finding.
#
# Environment:
#   FTPATCH_KERNEL_VERSION 6.1 (default), 6.12 or 6.12-clang
#   FTPATCH_KERNEL_WORK  work directory (default /var/tmp/ftpatch-kernel-VERSION,
#                        /var/tmp/ftpatch-kernel for 6.1)
#   FTPATCH_KERNEL_REUSE 1 = keep the extracted tree and build dir of a previous
#                        run (incremental; build times are then meaningless)
#   FTPATCH              ftpatch command (default: python -m ftpatch from this repo, .venv's python if any)
#   FTPATCH_E2E_SWITCHES function tracer on/off cycles in the ftpatch boot (30)
#   FTPATCH_QEMU_TIMEOUT seconds before a boot is killed (900)
#   FTPATCH_OOPS_GRACE   seconds a boot may run on after its first Oops (20)
#   FTPATCH_FLAKE_RETRIES boots after a known qemu flake, each reported (12)
#   FTPATCH_LAYOUT_RETRIES boots after one whose module region cannot show
#                        the module path asked for, each reported (8)
#   FTPATCH_E2E_OPS      6.12: cycles with two ftrace users at once (10)
#   JOBS                 make -j (default 2)
# Exit status 0 only if every check holds.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
KVER=${FTPATCH_KERNEL_VERSION:-6.1}
case "$KVER" in
6.1)
	WORK=${FTPATCH_KERNEL_WORK:-/var/tmp/ftpatch-kernel}
	PATCHES=$REPO/patches/6.1
	FRAGMENT=$REPO/examples/kernel/ftpatch.config
	PFE=-fpatchable-function-entry=2
	OPS_CYCLES=0
	FTRACE_Y=(DYNAMIC_FTRACE_WITH_REGS MODULES MODULE_UNLOAD)
	# No KASLR: the module region lies within BL range of the kernel text.
	MODULE_PATH=direct
	;;
6.12 | 6.12-clang)
	WORK=${FTPATCH_KERNEL_WORK:-/var/tmp/ftpatch-kernel-$KVER}
	PATCHES=$REPO/patches/6.12
	FRAGMENT=$REPO/examples/kernel/ftpatch-6.12.config
	PFE=-fpatchable-function-entry=4,2
	OPS_CYCLES=${FTPATCH_E2E_OPS:-10}
	FTRACE_Y=(DYNAMIC_FTRACE_WITH_ARGS DYNAMIC_FTRACE_WITH_CALL_OPS RELOCATABLE RANDOMIZE_BASE
		MODULES MODULE_UNLOAD)
	# Where the module's text lands, so both of a module's ways to reach
	# ftrace_caller are exercised: GCC with RANDOMIZE_MODULE_REGION_FULL
	# (a 2 GiB region picked once per boot: its ftrace PLTs, a boot whose
	# region starts in BL range being booted again), Clang without (a
	# random 128 MiB window around the kernel: direct BLs).
	MODULE_PATH=plt
	[ "$KVER" = 6.12 ] && FTRACE_Y+=(RANDOMIZE_MODULE_REGION_FULL)
	;;
*)
	printf 'E2E FAIL FTPATCH_KERNEL_VERSION=%s: 6.1, 6.12 or 6.12-clang\n' "$KVER"
	exit 1
	;;
esac
SRCVER=${KVER%-clang}
FRAGMENTS=("$FRAGMENT")
QEMU_CPU=cortex-a57
LLVM_MAKE=()
if [ "$KVER" = 6.12-clang ]; then
	FRAGMENTS+=("$REPO/examples/kernel/ftpatch-6.12-clang.config")
	FTRACE_Y+=(CC_IS_CLANG LD_IS_LLD ARM64_BTI_KERNEL ARM64_PTR_AUTH_KERNEL)
	QEMU_CPU=max,pauth-impdef=on
	LLVM_MAKE=(LLVM=1)
	MODULE_PATH=direct
fi
# patches/VERSION: the series a user applies (the cover letter apart), then
# the test-only patches of patches/VERSION/test (the init timing).  Patch
# 0002 is the arm64 kernel side; every other one is in every kernel (0001
# the link step, 0003 the documentation, test/0001 the init timing).
MODULE_SRC=$REPO/examples/kernel/module
# An in-tree module (CONFIG_SAMPLE_TRACE_EVENTS=m), relative to the build dir.
INTREE_KO=samples/trace_events/trace-events-sample.ko
BASE_PATCHES=()
for p in "$PATCHES"/0*.patch "$PATCHES"/test/*.patch; do
	case "$p" in */0000-cover-letter.patch | "$PATCHES"/0002-*) ;; *) BASE_PATCHES+=("$p") ;; esac
done
KERNEL_PATCH=$(echo "$PATCHES"/0002-*.patch)
REUSE=${FTPATCH_KERNEL_REUSE:-0}
# The venv scripts/install-deps.sh makes, when there is one (Debian's python3 has no ftpatch deps).
FTPATCH_PY=python3; [[ -x $REPO/.venv/bin/python ]] && FTPATCH_PY=$REPO/.venv/bin/python
FTPATCH_CMD=${FTPATCH:-env PYTHONPATH=$REPO $FTPATCH_PY -m ftpatch}
SWITCHES=${FTPATCH_E2E_SWITCHES:-30}
QEMU_TIMEOUT=${FTPATCH_QEMU_TIMEOUT:-900}
OOPS_GRACE=${FTPATCH_OOPS_GRACE:-20}
FLAKE_RETRIES=${FTPATCH_FLAKE_RETRIES:-12}
LAYOUT_RETRIES=${FTPATCH_LAYOUT_RETRIES:-8}
JOBS=${JOBS:-2}
TARBALL=/usr/src/linux-source-$SRCVER.tar.xz
SRC=$WORK/linux-source-$SRCVER
BUILD=$WORK/build
OUT=$WORK/out
CROSS=aarch64-linux-gnu-
KMAKE=(make -C "$SRC" O="$BUILD" ARCH=arm64 CROSS_COMPILE=$CROSS "${LLVM_MAKE[@]}" -j"$JOBS")

# Every kernel option the test depends on; checked in the final .config.
REQUIRED_Y=(SMP CC_OPTIMIZE_FOR_PERFORMANCE ARM_AMBA SERIAL_AMBA_PL011
	SERIAL_AMBA_PL011_CONSOLE TTY PRINTK BUG DEBUG_BUGVERBOSE BLK_DEV_INITRD BINFMT_ELF PROC_FS
	SYSFS DEVTMPFS KALLSYMS FTRACE TRACING FUNCTION_TRACER
	FUNCTION_GRAPH_TRACER DYNAMIC_FTRACE "${FTRACE_Y[@]}"
	FTRACE_MCOUNT_USE_PATCHABLE_FUNCTION_ENTRY FTRACE_STARTUP_TEST)

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'E2E FAIL %s\n' "$*"; exit 1; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

DEFERRED_FAIL=()    # failures that do not stop the run
declare -A RESULT   # key -> value, written to summary.json at the end
result() { RESULT[$1]=$2; printf 'E2E %s=%s\n' "$1" "$2"; }

write_summary() {
	local args=()
	for k in "${!RESULT[@]}"; do args+=("$k" "${RESULT[$k]}"); done
	python3 - "$OUT/summary.json" "${args[@]}" <<'EOF'
import json, sys
path, kv = sys.argv[1], sys.argv[2:]
d = {}
for k, v in zip(kv[::2], kv[1::2]):
    try:
        d[k] = json.loads(v)
    except ValueError:
        d[k] = v
json.dump(dict(sorted(d.items())), open(path, "w"), indent=1)
EOF
}

install_deps() {
	local need=()
	command -v ${CROSS}gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
	command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
	[ -f "$TARBALL" ] || need+=("linux-source-$SRCVER")
	if [ ${#LLVM_MAKE[@]} -gt 0 ]; then
		for tool in clang:clang ld.lld:lld llvm-objcopy:llvm; do
			command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
		done
	fi
	for tool in make:make flex:flex bison:bison bc:bc xz:xz-utils patch:patch \
		perl:perl timeout:coreutils; do
		command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
	done
	if [ ${#need[@]} -gt 0 ]; then
		log "apt-get install ${need[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
			{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
	fi
	$FTPATCH_CMD --help >/dev/null || die "ftpatch not runnable: $FTPATCH_CMD --help"
}

prepare_tree() {
	mkdir -p "$WORK" "$OUT"
	if [ "$REUSE" = 1 ] && [ -f "$SRC/.ftpatch-e2e-base" ]; then
		log "reusing $SRC"
		# Back to the base state (all but 0002) if a previous run applied 0002.
		if [ -f "$SRC/.ftpatch-e2e-0002" ]; then
			patch -p1 -R -d "$SRC" < "$KERNEL_PATCH" >&2
			rm "$SRC/.ftpatch-e2e-0002"
		fi
		return
	fi
	rm -rf "$SRC" "$BUILD" "$OUT"
	mkdir -p "$OUT"
	log "extracting $TARBALL"
	tar -xf "$TARBALL" -C "$WORK"
	for p in "${BASE_PATCHES[@]}"; do
		patch -p1 -d "$SRC" < "$p" >&2
	done
	touch "$SRC/.ftpatch-e2e-base"
}

build_init() {
	log "building the static init"
	${CROSS}gcc -static -O2 -Wall -Wextra -Werror -o "$OUT/init" "$REPO/examples/kernel/init.c"
	cat > "$OUT/initramfs.list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
file /init $OUT/init 0755 0 0
EOF
}

configure() {
	log "configuring tinyconfig + ${FRAGMENTS[*]#"$REPO"/}"
	mkdir -p "$BUILD"
	"${KMAKE[@]}" tinyconfig >/dev/null
	"$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" \
		"${FRAGMENTS[@]}" >/dev/null
	"$SRC/scripts/config" --file "$BUILD/.config" --set-str INITRAMFS_SOURCE "$OUT/initramfs.list"
	"${KMAKE[@]}" olddefconfig >/dev/null
	local missing=()
	for sym in "${REQUIRED_Y[@]}"; do
		grep -qx "CONFIG_$sym=y" "$BUILD/.config" || missing+=("$sym")
	done
	grep -qx "# CONFIG_CC_OPTIMIZE_FOR_SIZE is not set" "$BUILD/.config" || missing+=("!CC_OPTIMIZE_FOR_SIZE")
	grep -qx "CONFIG_INITRAMFS_SOURCE=\"$OUT/initramfs.list\"" "$BUILD/.config" || missing+=(INITRAMFS_SOURCE)
	[ ${#missing[@]} -eq 0 ] || die "config: not set as required: ${missing[*]}"
	result config_checked "\"${#REQUIRED_Y[@]} options y, -O2, initramfs\""
}

# build NAME: make Image, time it, keep Image and vmlinux as $OUT/*-NAME.
build() {
	local name=$1 t0 t1
	log "building the $name kernel (FTPATCH=${FTPATCH:-unset})"
	t0=$(now)
	"${KMAKE[@]}" Image > "$OUT/build-$name.log" 2>&1 ||
		{ tail -40 "$OUT/build-$name.log"; die "build $name: make failed (see $OUT/build-$name.log)"; }
	t1=$(now)
	cp "$BUILD/arch/arm64/boot/Image" "$OUT/Image-$name"
	cp "$BUILD/vmlinux" "$OUT/vmlinux-$name"
	result "build_seconds_$name" "$(elapsed "$t0" "$t1")"
}

# objdump_check KIND: with binutils objdump (independent of ftpatch), look at
# every site that "ftpatch scan" lists in vmlinux-KIND and count those whose
# instructions are as expected: "mov x9, x30" then the record's "nop" (the BL
# slot) for the rewritten kernel, "nop; nop" from the record for stock.
# Zero words (6.12: scripts/sorttable zeroes the records of overridden weak
# functions) have no address and are not counted.
objdump_check() {
	local kind=$1
	${CROSS}objdump -d --no-show-raw-insn "$OUT/vmlinux-$kind" > "$OUT/objdump-$kind.txt"
	python3 - "$OUT/objdump-$kind.txt" "$OUT/scan-vmlinux-$kind.json" "$kind" <<'EOF'
import json, re, sys
insn = {}
for m in re.finditer(r"^ *([0-9a-f]+):\t(\S+)(?:\t(.*\S))?", open(sys.argv[1]).read(), re.M):
    insn[int(m.group(1), 16)] = " ".join(filter(None, (m.group(2), m.group(3))))
sites = [s for s in json.load(open(sys.argv[2]))["files"][0]["sites"] if s["target_address"]]
want = (("mov x9, x30", -4), ("nop", 0)) if sys.argv[3] == "ftpatch" else (("nop", 0), ("nop", 4))
ok = sum(all(insn.get(s["target_address"] + d) == w for w, d in want) for s in sites)
print(f"{ok}")
EOF
}

# build_module NAME: build examples/kernel/module out of tree (make M=)
# against the kernel in $BUILD, in $WORK/modules/NAME, log in
# $OUT/build-module-NAME.log; FTPATCH as the environment has it.
build_module() {
	local name=$1 dir=$WORK/modules/$1
	log "building the test module for $name (FTPATCH=${FTPATCH:-unset})"
	rm -rf "$dir" && mkdir -p "$dir" && cp "$MODULE_SRC"/* "$dir"/
	# "make Image" leaves no Module.symvers, which an external module needs.
	{ "${KMAKE[@]}" modules && "${KMAKE[@]}" M="$dir" modules; } > "$OUT/build-module-$name.log" 2>&1 ||
		{ tail -40 "$OUT/build-module-$name.log"; die "module $name: make failed (see $OUT/build-module-$name.log)"; }
}

# module_initrd NAME MODULE [refuse-WHAT=KO ...]: $OUT/modules-NAME.cpio with
# /modules/ftpatch_test.ko (MODULE) and each /modules/refuse-WHAT.ko, for
# the init's module checks.
module_initrd() {
	local name=$1 good=$2 spec
	shift 2
	{
		printf 'dir /modules 0755 0 0\n'
		printf 'file /modules/ftpatch_test.ko %s 0644 0 0\n' "$good"
		for spec in "$@"; do
			printf 'file /modules/%s.ko %s 0644 0 0\n' "${spec%%=*}" "${spec#*=}"
		done
	} > "$OUT/modules-$name.list"
	"$BUILD/usr/gen_init_cpio" "$OUT/modules-$name.list" > "$OUT/modules-$name.cpio"
}

# damage_one_site KO OUT: OUT is KO with its first MOV X9, X30 in .text
# turned into a NOP (found with pyelftools, not ftpatch); prints where.
damage_one_site() {
	"$FTPATCH_PY" - "$1" "$2" <<'EOF'
import shutil, struct, sys
from elftools.elf.elffile import ELFFile
src, dst = sys.argv[1:3]
with open(src, "rb") as f:
    text = ELFFile(f).get_section_by_name(".text")
    base, data = text["sh_offset"], text.data()
words = struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4])
at = base + 4 * words.index(0xAA1E03E9)
shutil.copyfile(src, dst)
with open(dst, "r+b") as f:
    f.seek(at)
    f.write(struct.pack("<I", 0xD503201F))
print(f".text+{at - base:#x}")
EOF
}

# scan_counts JSON: the per-state site counts of the one file in an
# "ftpatch scan --json" output, as JSON.
scan_counts() {
	python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["files"][0]["counts"]))' "$1"
}

# boot NAME SWITCHES GRAPH: one qemu boot of Image-NAME, log in boot-NAME[-try].log
# (with $OUT/modules-NAME.cpio as a second initramfs when there is one)
boot() {
	local name=$1 switches=$2 graph=$3 logf=$OUT/boot-$1.log t0 t1 rc=0 initrd=()
	[ -f "$OUT/modules-$1.cpio" ] && initrd=(-initrd "$OUT/modules-$1.cpio")
	[ "${BOOT_TRY:-1}" -gt 1 ] && logf=$OUT/boot-$1-try$BOOT_TRY.log
	log "booting $name (function x$switches, function_graph x$graph, two users x$OPS_CYCLES; log $logf)"
	t0=$(now)
	timeout --foreground "$QEMU_TIMEOUT" qemu-system-aarch64 -M virt -cpu "$QEMU_CPU" -smp 4 -m 512 \
		-nographic -no-reboot -nic none -kernel "$OUT/Image-$name" "${initrd[@]}" \
		-append "console=ttyAMA0 panic=-1 ftpatch.switches=$switches ftpatch.graph=$graph ftpatch.ops=$OPS_CYCLES ftpatch.module_path=$MODULE_PATH${BOOT_APPEND:+ $BOOT_APPEND}" \
		< /dev/null > "$logf" 2>&1 &
	# An Oops fails the boot whatever follows, and often leaves the other
	# CPUs stalled with the machine up until the timeout (15 minutes of a
	# CI run): stop qemu OOPS_GRACE seconds after the first one, once every
	# CPU has had time to print its report (qemu then says "terminating on
	# signal 15" and exits 0; the judge fails the Oops, or calls it the
	# known race).
	local qpid=$! oops_at=
	while kill -0 "$qpid" 2>/dev/null; do
		sleep 1
		[ -n "$oops_at" ] || ! grep -q 'Internal error: Oops' "$logf" || oops_at=$SECONDS
		if [ -n "$oops_at" ] && [ $((SECONDS - oops_at)) -ge "$OOPS_GRACE" ]; then
			log "boot $name: stopping qemu ${OOPS_GRACE}s after an Oops"
			pkill -TERM -P "$qpid" 2>/dev/null || true
			break
		fi
	done
	wait "$qpid" || rc=$?
	t1=$(now)
	BOOT_LOG=$logf
	BOOT_RC=$rc
	BOOT_SECONDS=$(elapsed "$t0" "$t1")
	tr -d '\r' < "$logf" > "$logf.tmp" && mv "$logf.tmp" "$logf"
}

# oops_race LOG LIST_END: true when LOG shows exactly the known qemu oops and
# nothing else: every oops is function_trace_call+0x18 called from
# ftrace_call with op (x2) = &ftrace_list_end, the ops of "no tracer", on
# the worker CPUs at once, while the function tracer is switched.  Seen on
# stock kernels as on rewritten ones (stock: 1 of 12 boots with 30+3
# switches here; ftpatch: 1 in the CI-style run): what running an
# already-replaced "bl" gives (see examples/kernel/README.md).
# LIST_END is ftrace_list_end's address in the image that booted.
oops_race() {
	local logf=$1 list_end=$2 oopses
	[ -n "$list_end" ] || return 1
	oopses=$(grep -c 'Internal error: Oops' "$logf" || true)
	[ "$oopses" -ge 1 ] || return 1
	[ "$(grep -c 'pc : function_trace_call+0x18/' "$logf" || true)" -eq "$oopses" ] || return 1
	[ "$(grep -c 'lr : ftrace_call+0x4/' "$logf" || true)" -eq "$oopses" ] || return 1
	[ "$(grep -c "x2 : $list_end " "$logf" || true)" -eq "$oopses" ] || return 1
	[ "$(grep -c 'x2 : ' "$logf" || true)" -eq "$oopses" ] || return 1
	! grep -qE 'ftrace bug|Kernel panic|WARNING:|FAILED' "$logf"
}

# The known flakes of the stock 6.1 function tracer start-up self-tests
# under qemu (TCG, -smp 4): a callback registered for one filtered function
# (DYN_FTRACE_TEST_NAME) is also called from other functions.  Each test
# reports it its own way; one FAILED line of these shapes, no other:
#   Testing dynamic ftrace: .. filter did not filter .. FAILED!
#   (4 0 1 73756 0) FAILED!        (after "Testing dynamic ftrace ops #1/#2: ")
#   Testing ftrace recursion: *callback not called once (or twice) (10)* FAILED!
#   Testing ftrace recursion safe: *callback not called expected 2 times (3)* FAILED!
# All four were seen on the stock kernel (no rewrite, no 0002): in 300 boots
# to the end of the self-tests, one at a time, in 45% of stock boots and 53%
# of ftpatch ones; in none of 200 with one TCG thread for all vCPUs (counts
# and reasoning in examples/kernel/README.md).
SELFTEST_FLAKE_RE='Testing dynamic ftrace: \.\. filter did not filter \.\. FAILED!|\([0-9]+( [0-9]+){4}\) FAILED!|Testing ftrace recursion: \*callback not called once \(or twice\) \([0-9]+\)\* FAILED!|Testing ftrace recursion safe: \*callback not called expected 2 times \([0-9]+\)\* FAILED!'

# selftest_flake LOG: true when the self-test failures in LOG are exactly one
# known flake (SELFTEST_FLAKE_RE) and what follows from it, nothing else: the
# failed function tracer is disabled ("tracer: function failed selftest,
# disabling", a WARNING from init_trace_selftests), the function_graph
# self-test then fails to init (-19, a bare "FAILED!"), every WARNING comes
# from run_tracer_selftest or init_trace_selftests, and there is no ftrace
# bug and no oops.  Whether the boot went on well is judge's business.
selftest_flake() {
	local logf=$1 failed primary bare warnings
	failed=$(grep 'FAILED' "$logf" | sed -E 's/^\[ *[0-9.]+\] //') || return 1
	primary=$(grep -vxF 'FAILED!' <<<"$failed" || true)
	[ -n "$primary" ] && [ "$(wc -l <<<"$primary")" -eq 1 ] || return 1
	grep -qxE "$SELFTEST_FLAKE_RE" <<<"$primary" || return 1
	if [[ "$primary" == "("* ]]; then
		grep -qE '\] Testing dynamic ftrace ops #[12]: $' "$logf" || return 1
	fi
	bare=$(grep -cxF 'FAILED!' <<<"$failed" || true)
	if [ "$bare" -gt 0 ]; then
		[ "$bare" -eq 1 ] && grep -q 'Failed to init function_graph tracer, init returned -19' "$logf" || return 1
	fi
	warnings=$(grep -c 'WARNING:' "$logf" || true)
	[ "$warnings" -le $((bare + 2)) ] || return 1
	[ "$(grep 'WARNING:' "$logf" | grep -cE ' (run_tracer_selftest|init_trace_selftests)\+')" -eq "$warnings" ] || return 1
	! grep -qE 'ftrace bug|Oops|Internal error:' "$logf"
}

# kaslr_offset NAME LOG: the boot's _stext (the init's "kallsyms:" line in
# LOG) minus _stext in $OUT/vmlinux-NAME, in hex; nothing without the line.
kaslr_offset() {
	local run link
	run=$(sed -n 's/^ftpatch-init: kallsyms: \([0-9a-f]*\) [Tt] _stext$/\1/p' "$2" 2>/dev/null | head -1)
	link=$(${CROSS}nm "$OUT/vmlinux-$1" 2>/dev/null | sed -n 's/^\([0-9a-f]*\) [Tt] _stext$/\1/p')
	[ -n "$run" ] && [ -n "$link" ] || return 0
	printf '%x\n' $((0x$run - 0x$link))
}

# list_end NAME [LOG]: ftrace_list_end's address in $OUT/vmlinux-NAME, moved
# by the KASLR offset of the boot that wrote LOG (kaslr_offset).
list_end() {
	local addr off
	addr=$(${CROSS}nm "$OUT/vmlinux-$1" 2>/dev/null | sed -n 's/^\([0-9a-f]*\) D ftrace_list_end$/\1/p')
	[ -n "$addr" ] || return 0
	off=
	if [ -n "${2-}" ]; then off=$(kaslr_offset "$1" "$2"); fi
	printf '%016x\n' $((0x$addr + 0x${off:-0}))
}

# judge LOG NAME [LIST_END]: prints one of pass / flake:<kind> / fail:<reasons>.
# LIST_END defaults to list_end NAME LOG.
judge() {
	local logf=$1 name=$2 reasons=() passed failed warnings
	passed=$(grep -c 'PASSED' "$logf" || true)
	failed=$(grep -c 'FAILED' "$logf" || true)
	warnings=$(grep -c 'WARNING:' "$logf" || true)
	[ "$passed" -ge 5 ] || reasons+=("only $passed self-test PASSED lines")
	[ "$failed" -eq 0 ] || reasons+=("$failed self-test FAILED")
	grep -q 'ftrace bug' "$logf" && reasons+=("ftrace bug")
	[ "$warnings" -eq 0 ] || reasons+=("$warnings WARNING")
	grep -qE 'Oops|Internal error:' "$logf" && reasons+=("Oops")
	grep -q 'Kernel panic' "$logf" && reasons+=("panic")
	grep -q '^FTPATCH-E2E: PASS' "$logf" || reasons+=("init did not report PASS")
	[ "$BOOT_RC" -eq 0 ] || reasons+=("qemu exit $BOOT_RC (124 = timeout)")
	if [ ${#reasons[@]} -eq 0 ]; then
		echo pass
	elif module_layout "$logf" && [ "$BOOT_RC" -eq 0 ]; then
		echo again:module-layout
	# The init cannot select the function tracer once its self-test has
	# disabled it, so it fails; that is part of the flake, a panic is not.
	elif selftest_flake "$logf" && ! grep -q 'Kernel panic' "$logf" && [ "$BOOT_RC" -eq 0 ]; then
		echo flake:self-test
	elif oops_race "$logf" "${3-$(list_end "$name" "$logf")}"; then
		echo flake:oops-race
	elif filter_leak "$logf" && [ "$BOOT_RC" -eq 0 ]; then
		echo flake:filter-leak
	else
		local IFS=';'
		echo "fail:${reasons[*]}"
	fi
}

# ftrace_init_ms LOG: the 0003 timing line converted with the arch timer rate.
ftrace_init_ms() {
	python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
cyc = re.search(r"ftrace: processed (\d+) entries in (\d+) counter cycles", text)
mhz = re.search(r"arch_timer: cp15 timer\(s\) running at ([0-9.]+)MHz", text)
print(f"{int(cyc.group(2)) / (float(mhz.group(1)) * 1e3):.2f}" if cyc and mhz else "null")
EOF
}

# sole_verdict LOG ERE: true when LOG's one "FTPATCH-E2E:" line (the init's
# last) matches ERE and the kernel reported nothing wrong in LOG.
sole_verdict() {
	[ "$(grep -c '^FTPATCH-E2E: ' "$1" || true)" -eq 1 ] || return 1
	grep -qE "$2" "$1" || return 1
	! grep -qE 'FAILED|ftrace bug|Oops|Internal error:|WARNING:|Kernel panic' "$1"
}

# module_layout LOG: true when the init stopped because this boot's module
# region cannot show the module path asked for (ftpatch.module_path; the
# kernel picks the region once per boot, examples/kernel/init.c) and
# nothing had gone wrong before.
module_layout() {
	sole_verdict "$1" '^FTPATCH-E2E: AGAIN module layout: '
}

# filter_leak LOG: true when LOG failed only in the init's module trace check
# (a module function missing from a burst of the tracer filtered to the
# module) and that trace shows functions the filter does not hold: the
# kernel ran BLs it had not enabled, which is the stale-code flake of the
# self-tests (examples/kernel/README.md) met later in the boot.  Seen on the
# stock 6.1 kernel (graph trace of tick_handle_periodic with the filter on
# the module).  Nothing else may have gone wrong.
filter_leak() {
	local logf=$1
	sole_verdict "$logf" "^FTPATCH-E2E: FAIL (function|function_graph): no ftpatch_test_[a-z_]+ in the module's trace \([0-9]+ calls\)$" || return 1
	# The trace the init printed: from its last "# tracer:" header on.
	awk '/^# tracer: /{n=NR} {line[NR]=$0} END{for(i=n;i<=NR;i++) if(n) print line[i]}' "$logf" |
		grep -oE '[|] +[A-Za-z0-9_.]+\(\)|: [A-Za-z0-9_.]+ <-' |
		sed -E 's/^[|] +//; s/^: //; s/\(\)$//; s/ <-$//' |
		grep -qvE '^(ftpatch_test_[A-Za-z0-9_.]*|__arm64_sys_getppid)$'
}

# boot_expect_pass NAME SWITCHES GRAPH: boot; on an exact known flake (see
# judge) boot again, up to FLAKE_RETRIES more times, and report every flake
# (flakes_NAME, flake_logs_NAME); anything else fails at once.  The
# self-test flakes hit about one boot in two here (stock and ftpatch alike,
# 2 host cores, qemu -smp 4); such a boot stops within seconds of the
# self-tests, so 12 retries cost little and leave ~0.5^13 = 1e-4 of runs
# failing on flakes alone.  A boot whose module region cannot show the
# module path asked for (again:module-layout, about one boot in 15 on 6.12
# GCC; it stops ~10 s in) is booted again as well, up to LAYOUT_RETRIES
# times, and reported apart (layout_retries_NAME, layout_logs_NAME).
boot_expect_pass() {
	local name=$1 verdict try=1 flake_logs=() layout_logs=()
	while :; do
		BOOT_TRY=$try boot "$@"
		verdict=$(judge "$BOOT_LOG" "$name")
		if [ "$verdict" = again:module-layout ] && [ ${#layout_logs[@]} -lt "$LAYOUT_RETRIES" ]; then
			layout_logs+=("\"$BOOT_LOG\"")
			printf 'E2E AGAIN %s boot %d: its module region cannot show ftpatch.module_path=%s (%s); booting again\n' \
				"$name" "$try" "$MODULE_PATH" "$BOOT_LOG"
		elif [[ "$verdict" == flake:* ]] && [ ${#flake_logs[@]} -lt "$FLAKE_RETRIES" ]; then
			flake_logs+=("\"$BOOT_LOG\"")
			printf 'E2E FLAKE %s boot %d: known %s flake (seen on stock kernels too) in %s; booting again\n' \
				"$name" "$try" "${verdict#flake:}" "$BOOT_LOG"
		else
			break
		fi
		try=$((try + 1))
	done
	result "boots_$name" "$try"
	result "flakes_$name" "${#flake_logs[@]}"
	result "layout_retries_$name" "${#layout_logs[@]}"
	local IFS=,
	result "flake_logs_$name" "[${flake_logs[*]}]"
	result "layout_logs_$name" "[${layout_logs[*]}]"
	unset IFS
	result "boot_seconds_$name" "$BOOT_SECONDS"
	result "boot_log_$name" "\"$BOOT_LOG\""
	result "boot_verdict_$name" "\"$verdict\""
	result "ftrace_init_ms_$name" "$(ftrace_init_ms "$BOOT_LOG")"
	result "self_tests_passed_$name" "$(grep -c PASSED "$BOOT_LOG" || true)"
	local entries
	entries=$(sed -n 's/.*ftrace: allocating \([0-9]*\) entries.*/\1/p' "$BOOT_LOG" | head -1)
	result "ftrace_entries_$name" "${entries:-null}"
	grep -E '^ftpatch-init: |^FTPATCH-E2E' "$BOOT_LOG" >&2 || true
	[ "$verdict" = pass ] || die "boot $name: $verdict (log $BOOT_LOG)"
}

# set_ftpatch_config y|n: CONFIG_FTPATCH in the build's .config.
set_ftpatch_config() {
	if [ "$1" = y ]; then
		"$SRC/scripts/config" --file "$BUILD/.config" --enable FTPATCH
	else
		"$SRC/scripts/config" --file "$BUILD/.config" --disable FTPATCH
	fi
	"${KMAKE[@]}" olddefconfig >/dev/null
	if [ "$1" = y ]; then
		grep -qx 'CONFIG_FTPATCH=y' "$BUILD/.config" || die "config: CONFIG_FTPATCH=y did not stick"
	else
		grep -q '^CONFIG_FTPATCH=y' "$BUILD/.config" && die "config: CONFIG_FTPATCH still y"
	fi
	return 0
}

# build_ftpatch: the ftpatch kernel: add the arm64 kernel patch (0002); make
# rebuilds what it touches (arch/arm64/kernel/ftrace.c), vmlinux.o is
# relinked from vmlinux.a and rewritten again, and the link verifies vmlinux.
build_ftpatch() {
	patch -p1 -d "$SRC" < "$KERNEL_PATCH" >&2
	touch "$SRC/.ftpatch-e2e-0002"
	build ftpatch
	grep -q 'FTPATCH  *vmlinux.o' "$OUT/build-ftpatch.log" || die "ftpatch build did not run ftpatch"
	grep -q 'FTVERIFY  *vmlinux' "$OUT/build-ftpatch.log" || die "ftpatch build did not verify vmlinux"
}

# The link step runs when CONFIG_FTPATCH=y; FTPATCH names the command.
build_kernels() {
	# 1. stock: CONFIG_FTPATCH=n, the kernel writes the MOVs at boot.
	unset FTPATCH
	set_ftpatch_config n
	build stock
	grep -q 'FTPATCH  *vmlinux.o' "$OUT/build-stock.log" && die "stock build ran ftpatch"
	build_module stock
	grep -q 'FTPATCH \[M\]' "$OUT/build-module-stock.log" && die "stock module build ran ftpatch"
	[ -f "$BUILD/$INTREE_KO" ] || die "make modules built no $INTREE_KO (CONFIG_SAMPLE_TRACE_EVENTS=m?)"
	$FTPATCH_CMD rewrite --check --quiet "$BUILD/$INTREE_KO" 2>/dev/null &&
		die "the stock build's in-tree $INTREE_KO is rewritten"

	# 2. negative: CONFIG_FTPATCH=y without the arm64 kernel side (0002):
	#    vmlinux.o is rewritten, ftrace_call_adjust() still adds 12/16
	#    (6.1: 4).
	#    Nothing compiled depends on CONFIG_FTPATCH yet: force the relink.
	export FTPATCH=$FTPATCH_CMD
	set_ftpatch_config y
	rm -f "$BUILD/vmlinux.o" "$BUILD/vmlinux"
	build negative
	grep -q 'FTPATCH  *vmlinux.o' "$OUT/build-negative.log" || die "negative build did not run ftpatch"

	build_ftpatch

	# Modules: rewritten by the module build (one FTPATCH [M] step), and
	# not again when nothing changed; one built with a "rewrite" that does
	# nothing; one with a damaged site.
	build_module ftpatch
	grep -q 'FTPATCH \[M\] 1 module' "$OUT/build-module-ftpatch.log" ||
		die "module build did not run ftpatch (see $OUT/build-module-ftpatch.log)"
	$FTPATCH_CMD rewrite --check --quiet "$WORK/modules/ftpatch/ftpatch_test.ko" ||
		die "the module build left ftpatch_test.ko not rewritten"
	# The in-tree module, rewritten by the same build's "make modules".
	$FTPATCH_CMD rewrite --check --quiet "$BUILD/$INTREE_KO" ||
		die "make modules left the in-tree $INTREE_KO not rewritten"
	cp "$BUILD/$INTREE_KO" "$OUT/intree-${INTREE_KO##*/}"
	$FTPATCH_CMD scan --json "$OUT/intree-${INTREE_KO##*/}" > "$OUT/scan-intree.json"
	result intree_module_sites "$(scan_counts "$OUT/scan-intree.json")"
	# Its sites outside .init.text: what the kernel lists once it has loaded.
	result intree_module_core_sites "$(python3 -c 'import json, sys; print(sum(not s["target_section"].startswith(".init") for s in json.load(open(sys.argv[1]))["files"][0]["sites"]))' "$OUT/scan-intree.json")"
	"${KMAKE[@]}" M="$WORK/modules/ftpatch" modules > "$OUT/build-module-again.log" 2>&1 ||
		die "module rebuild failed (see $OUT/build-module-again.log)"
	grep -q 'FTPATCH \[M\]' "$OUT/build-module-again.log" &&
		die "an unchanged module was rewritten again (see $OUT/build-module-again.log)"
	$FTPATCH_CMD scan --json "$WORK/modules/ftpatch/ftpatch_test.ko" > "$OUT/scan-module.json"
	result module_sites "$(scan_counts "$OUT/scan-module.json")"
	FTPATCH=true build_module unrewritten
	$FTPATCH_CMD rewrite --check --quiet "$WORK/modules/unrewritten/ftpatch_test.ko" &&
		die "the module built with FTPATCH=true is rewritten"
	result module_damaged_site "\"$(damage_one_site "$WORK/modules/ftpatch/ftpatch_test.ko" "$OUT/ftpatch_test-damaged.ko")\""
	module_initrd ftpatch "$WORK/modules/ftpatch/ftpatch_test.ko" \
		refuse-foreign="$WORK/modules/stock/ftpatch_test.ko" \
		refuse-unrewritten="$WORK/modules/unrewritten/ftpatch_test.ko" \
		refuse-damaged="$OUT/ftpatch_test-damaged.ko" \
		"intree-$(basename "$INTREE_KO" .ko)"="$OUT/intree-${INTREE_KO##*/}"
	module_initrd stock "$WORK/modules/stock/ftpatch_test.ko" \
		refuse-foreign="$WORK/modules/ftpatch/ftpatch_test.ko"
}

# module_check: the passing boots refused each refuse-*.ko for the
# reason it was made for, and loaded, traced, unloaded and reloaded the
# test module (the init checks the traces); the rest of each boot shows
# ftrace still works.
module_check() {
	local ftp=${RESULT[boot_log_ftpatch]//\"/} stk=${RESULT[boot_log_stock]//\"/} kind logf
	for kind in foreign unrewritten damaged; do
		grep -q "^ftpatch-init: module refuse-$kind.ko refused: Exec format error" "$ftp" ||
			die "boot ftpatch: refuse-$kind.ko not refused (log $ftp)"
	done
	grep -q "^ftpatch-init: module refuse-foreign.ko refused: Exec format error" "$stk" ||
		die "boot stock: the rewritten module was not refused (log $stk)"
	grep -q "ftpatch_test: version magic '.* aarch64 ftpatch' should be '.* aarch64'" "$stk" ||
		die "boot stock: no version magic message for the rewritten module (log $stk)"
	grep -q "ftpatch_test: version magic '.* aarch64' should be '.* aarch64 ftpatch'" "$ftp" ||
		die "boot ftpatch: no version magic message for the stock module (log $ftp)"
	# ftpatch_module_check() refuses the unrewritten module at its first
	# site (6.12: its record on the first prefix NOP, not at a BL slot; 6.1:
	# on the first entry NOP, no MOV before it) and the damaged one at the
	# site damage_one_site changed (NOP where the MOV was).
	[ "$(grep -c 'ftpatch_test: ftrace site .*not rewritten by ftpatch' "$ftp")" -eq 2 ] ||
		die "boot ftpatch: expected two module refusals by ftpatch_module_check (log $ftp)"
	grep -qE "ftpatch_test: ftrace site at (init_)?text\+0x[0-9a-f]+: found 0xd503201f 0xd503201f, expected 0xaa1e03e9 0xd503201f: not rewritten by ftpatch" "$ftp" ||
		die "boot ftpatch: no refusal of the damaged site (log $ftp)"
	grep -q "^ftpatch-init: in-tree module trace_events_sample loaded: [1-9][0-9]* functions listed for ftrace; unloaded" "$ftp" ||
		die "boot ftpatch: the in-tree module did not load with its functions listed (log $ftp)"
	result intree_module_listed "$(sed -n 's/^ftpatch-init: in-tree module trace_events_sample loaded: \([0-9]*\) functions.*/\1/p' "$ftp")"
	[ "${RESULT[intree_module_listed]}" = "${RESULT[intree_module_core_sites]}" ] ||
		die "boot ftpatch: the in-tree module has ${RESULT[intree_module_core_sites]} sites outside .init.text, the kernel listed ${RESULT[intree_module_listed]} functions"
	result module_refusals "\"$(grep -o 'ftpatch_test: ftrace site [^:]*: found 0x[0-9a-f]* 0x[0-9a-f]*' "$ftp" | sed 's/ftpatch_test: ftrace site at //' | paste -sd';')\""
	for kind in ftpatch stock; do
		logf=${RESULT[boot_log_$kind]//\"/}
		grep -q '^ftpatch-init: module: reloaded and traced' "$logf" ||
			die "boot $kind: the module checks did not finish (log $logf)"
		result "module_calls_$kind" "\"$(sed -n 's/^ftpatch-init: module: text [a-z_]* at .*calls go //p' "$logf")\""
		result "module_init_calls_$kind" "\"$(sed -n 's/^ftpatch-init: module: init text [a-z_]* at .*calls go //p' "$logf")\""
		# Bursts the init recorded again (a module function missing, nothing
		# outside the filter: see module_burst in examples/kernel/init.c).
		result "module_burst_retries_$kind" "$(grep -c '^ftpatch-init: module: [a-z_]* burst [0-9] lacks ' "$logf" || true)"
		grep -q "^ftpatch-init: module: text and init text calls go $MODULE_PATH " "$logf" ||
			die "boot $kind: the module's calls did not go $MODULE_PATH (log $logf)"
	done
}

# module_stamp_check: the module build's stamp holds the FTPATCH command:
# the same command leaves an unchanged module alone (checked in the build),
# another one takes every module again, and then no more.
module_stamp_check() {
	local dir=$WORK/modules/ftpatch newcmd="env FTPATCH_E2E_STAMP=1 $FTPATCH_CMD"
	FTPATCH=$newcmd "${KMAKE[@]}" M="$dir" modules \
		> "$OUT/build-module-newcmd.log" 2>&1 || die "module rebuild failed (see $OUT/build-module-newcmd.log)"
	grep -q 'FTPATCH \[M\] 1 module' "$OUT/build-module-newcmd.log" ||
		die "another FTPATCH command did not rewrite the module again (see $OUT/build-module-newcmd.log)"
	FTPATCH=$newcmd "${KMAKE[@]}" M="$dir" modules \
		> "$OUT/build-module-samecmd.log" 2>&1 || die "module rebuild failed (see $OUT/build-module-samecmd.log)"
	grep -q 'FTPATCH \[M\]' "$OUT/build-module-samecmd.log" &&
		die "the same FTPATCH command rewrote an unchanged module again (see $OUT/build-module-samecmd.log)"
	$FTPATCH_CMD rewrite --check --quiet "$dir/ftpatch_test.ko" ||
		die "after the FTPATCH command changed, ftpatch_test.ko is not rewritten"
	result module_stamp_tracks_command '"yes"'
}

# ops_check NAME: with OPS_CYCLES > 0, the passing boot of NAME ran the two
# ftrace users OPS_CYCLES times and its instance traced only its filter.
ops_check() {
	local name=$1 logf=${RESULT[boot_log_$1]} last
	[ "$OPS_CYCLES" -gt 0 ] || return 0
	logf=${logf//\"/}
	grep -q "^ftpatch-init: two ftrace users: $OPS_CYCLES cycles" "$logf" ||
		die "boot $name: no \"two ftrace users: $OPS_CYCLES cycles\" line in $logf"
	last=$(grep 'burst of [0-9]* ms (function_graph at the top)' "$logf" | tail -1)
	[ -n "$last" ] || die "boot $name: no instance burst line in $logf"
	result "ops_instance_burst_$name" "\"${last#ftpatch-init: }\""
}

# enabled_check NAME: in the passing boot of NAME, with the function tracer
# on for the first time, enabled_functions listed every live record
# (dyn_ftrace_total_info: the records the kernel keeps once the init text is
# freed), each one turned into a BL by ftrace_modify_code() after it checked
# the NOP it expected.
enabled_check() {
	local name=$1 logf=${RESULT[boot_log_$1]} enabled live
	logf=${logf//\"/}
	enabled=$(sed -n 's/^ftpatch-init: function tracer on: \([0-9]*\) lines in enabled_functions$/\1/p' "$logf")
	live=$(sed -n 's/^ftpatch-init: dyn_ftrace_total_info: \([0-9]*\) .*/\1/p' "$logf")
	result "enabled_functions_$name" "${enabled:-null}"
	result "live_records_$name" "${live:-null}"
	[ -n "$enabled" ] && [ "$enabled" = "$live" ] ||
		die "boot $name: the function tracer enabled ${enabled:-?} functions of ${live:-?} live records (log $logf)"
}

# kaslr_check: 6.12, both passing boots were randomized, each its own way:
# the kernel said "KASLR enabled" and _stext moved by a non-zero offset that
# differs between the two boots (qemu -M virt gives each boot a kaslr-seed).
kaslr_check() {
	local kind logf off offs=()
	for kind in ftpatch stock; do
		logf=${RESULT[boot_log_$kind]//\"/}
		off=$(kaslr_offset "$kind" "$logf")
		result "kaslr_offset_$kind" "\"0x${off:-?}\""
		grep -q 'KASLR enabled' "$logf" || die "boot $kind: no \"KASLR enabled\" in $logf"
		[ -n "$off" ] && [ "$off" != 0 ] || die "boot $kind: _stext not moved (offset ${off:-unknown}) in $logf"
		offs+=("$off")
	done
	[ "${offs[0]}" != "${offs[1]}" ] || die "the ftpatch and stock boots have the same KASLR offset 0x${offs[0]}"
}

# bti_check: 6.12-clang, the passing boots ran with BTI and PAuth detected.
bti_check() {
	local kind logf
	for kind in ftpatch stock; do
		logf=${RESULT[boot_log_$kind]//\"/}
		grep -q 'CPU features: detected: Branch Target Identification' "$logf" ||
			die "boot $kind: BTI not detected (log $logf)"
		grep -qE 'CPU features: detected: Address authentication' "$logf" ||
			die "boot $kind: PAuth not detected (log $logf)"
	done
	result bti_pauth_detected '"yes"'
}

main() {
	result kernel_version "\"$KVER\""
	install_deps
	prepare_tree
	build_init
	configure

	build_kernels
	module_stamp_check
	grep -q -- "$PFE" "$BUILD/kernel/.fork.o.cmd" ||
		die "kernel not compiled with $PFE"

	# Static checks of the rewrite.
	$FTPATCH_CMD scan "$BUILD/vmlinux.o" --json > "$OUT/scan-vmlinux.o.json"
	python3 - "$OUT/scan-vmlinux.o.json" > "$OUT/scan-states.txt" <<'EOF'
import collections, json, sys
(entry,) = json.load(open(sys.argv[1]))["files"]
states = collections.Counter(site["state"] for site in entry["sites"])
print(len(entry["sites"]), " ".join(f"{k}={v}" for k, v in sorted(states.items())))
EOF
	result sites_in_vmlinux_o "$(cut -d' ' -f1 "$OUT/scan-states.txt")"
	result scan_states "\"$(cut -d' ' -f2- "$OUT/scan-states.txt")\""
	# The linked images, read by ftpatch's own image reader.
	local kind
	for kind in stock ftpatch; do
		$FTPATCH_CMD scan "$OUT/vmlinux-$kind" --json > "$OUT/scan-vmlinux-$kind.json"
		result "scan_counts_vmlinux_$kind" "$(scan_counts "$OUT/scan-vmlinux-$kind.json")"
	done
	result objdump_mov_nop_sites_ftpatch "$(objdump_check ftpatch)"
	result objdump_nop_nop_sites_stock "$(objdump_check stock)"
	# Every record against readers independent of ftpatch: the words between
	# __start_mcount_loc and __stop_mcount_loc and the function symbols
	# (pyelftools), the instructions around each (objdump, above).
	local layout=plain
	[ "$KVER" = 6.1 ] || layout=call-ops
	for kind in ftpatch stock; do
		result "mcount_check_$kind" "$("$FTPATCH_PY" "$REPO/scripts/mcount-check.py" "$OUT/vmlinux-$kind" \
			"$OUT/objdump-$kind.txt" "$OUT/scan-vmlinux-$kind.json" "$kind" "$layout")"
	done
	# And scripts/check-records.py (pyelftools alone, each record's state
	# from the typed, sized function symbols, or from its words where the
	# kernel kept a function without its symbol: 6.1's overridden weak
	# functions, 45 records with MODULES, 40 without): exit 1 on any
	# non-zero record not in the expected state.
	local expect prefix=0
	[ "$KVER" = 6.1 ] || prefix=2
	for kind in ftpatch stock; do
		expect=pristine
		[ "$kind" = stock ] || expect=rewritten
		if "$FTPATCH_PY" "$REPO/scripts/check-records.py" "$OUT/vmlinux-$kind" --expect "$expect" \
			--prefix "$prefix" > "$OUT/check-records-$kind.txt" 2>&1; then
			result "check_records_$kind" "\"$(tail -1 "$OUT/check-records-$kind.txt")\""
		else
			cat "$OUT/check-records-$kind.txt"
			die "scripts/check-records.py: vmlinux-$kind not all $expect (see $OUT/check-records-$kind.txt)"
		fi
	done
	# A verify failure is reported now and fails the run at the end, after
	# the boots, so one run shows everything.
	if $FTPATCH_CMD verify --help >/dev/null 2>&1; then
		if $FTPATCH_CMD verify "$OUT/vmlinux-ftpatch" > "$OUT/verify.log" 2>&1; then
			result verify '"passed"'
		else
			tail -3 "$OUT/verify.log"
			result verify "\"failed: $(tail -1 "$OUT/verify.log" | sed 's/.*FAIL: //; s/"//g') (see $OUT/verify.log)\""
			DEFERRED_FAIL+=("ftpatch verify $OUT/vmlinux-ftpatch failed")
		fi
	else
		printf 'E2E SKIP ftpatch verify: "%s verify --help" does not work yet\n' "$FTPATCH_CMD"
		result verify '"skipped: ftpatch verify not available"'
	fi

	# 4. unrewritten: the ftpatch kernel code (0002) and a vmlinux.o that is
	#    relinked from vmlinux.a and not rewritten: the patched
	#    ftrace_init_nop() must refuse the NOPs.  The link refuses an
	#    unrewritten vmlinux.o (checked first), so every ftpatch command is
	#    replaced by "true" to get one.  First that check: the ftpatch
	#    kernel with a "rewrite" that does nothing (every other ftpatch
	#    command real) must fail to link.
	printf '%s\n' '#!/bin/sh' \
		'# ftpatch whose "rewrite" (without --check) does nothing: the link must fail.' \
		'if [ "$1" = rewrite ]; then' \
		'	case " $* " in *" --check "*) ;; *) exit 0 ;; esac' \
		'fi' \
		"exec $FTPATCH_CMD \"\$@\"" > "$OUT/ftpatch-no-rewrite"
	chmod +x "$OUT/ftpatch-no-rewrite"
	rm -f "$BUILD/vmlinux.o" "$BUILD/vmlinux"
	log "building with a rewrite that does nothing (the link must fail)"
	if FTPATCH=$OUT/ftpatch-no-rewrite "${KMAKE[@]}" Image > "$OUT/build-norewrite.log" 2>&1; then
		die "CONFIG_FTPATCH=y build succeeded with vmlinux.o not rewritten (see $OUT/build-norewrite.log)"
	fi
	grep -q 'vmlinux.o is not rewritten' "$OUT/build-norewrite.log" ||
		die "the norewrite build failed, but not on the unrewritten vmlinux.o (see $OUT/build-norewrite.log)"
	result norewrite_build_failed '"yes"'
	export FTPATCH=true
	rm -f "$BUILD/vmlinux.o" "$BUILD/vmlinux"
	build unrewritten
	unset FTPATCH
	$FTPATCH_CMD rewrite --check --quiet "$BUILD/vmlinux.o" &&
		die "unrewritten build: vmlinux.o is rewritten"

	# Boots.
	boot_expect_pass ftpatch "$SWITCHES" 3
	ops_check ftpatch
	enabled_check ftpatch
	# The same tracer switching as the ftpatch kernel: an equal control.
	boot_expect_pass stock "$SWITCHES" 3
	ops_check stock
	enabled_check stock
	[ "$KVER" = 6.1 ] || kaslr_check
	module_check
	[ "$KVER" != 6.12-clang ] || bti_check

	# earlycon: these kernels may die before the PL011 driver takes the
	# console (6.12-clang: BTI makes the stock adjustment land on aligned
	# words, so nothing is "misaligned", and the kernel panics right after
	# its ftrace bug); the boot console shows it.
	BOOT_APPEND=earlycon boot negative 2 1
	local verdict
	verdict=$(judge "$BOOT_LOG" negative)
	result boot_seconds_negative "$BOOT_SECONDS"
	result boot_log_negative "\"$BOOT_LOG\""
	result boot_verdict_negative "\"$verdict\""
	# The stock ftrace_call_adjust() moves the records a second time
	# ("Misaligned patch-site", 0 for such a record); ftrace_init_nop() then
	# fails on them: an ftrace bug, or with MODULES (EXECMEM) a BUG in
	# patch_map() while it writes the ops literal at the bogus address.
	if grep -q 'ftrace bug' "$BOOT_LOG"; then
		result negative_failure '"ftrace bug"'
	elif grep -q 'Internal error: Oops' "$BOOT_LOG" && grep -q ' ftrace_init_nop+' "$BOOT_LOG" &&
		grep -q ' ftrace_process_locs+' "$BOOT_LOG"; then
		result negative_failure '"oops in ftrace_init_nop"'
	else
		die "negative kernel (rewritten vmlinux.o, stock arm64 ftrace) did not fail in its ftrace init: the checks are not real"
	fi
	grep -q '^FTPATCH-E2E: PASS' "$BOOT_LOG" && die "negative kernel's init reported PASS"
	result negative_ftrace_bug '"yes"'

	BOOT_APPEND=earlycon boot unrewritten 2 1
	verdict=$(judge "$BOOT_LOG" unrewritten)
	result boot_seconds_unrewritten "$BOOT_SECONDS"
	result boot_log_unrewritten "\"$BOOT_LOG\""
	result boot_verdict_unrewritten "\"$verdict\""
	# ftrace_bug() during ftrace_init_nop() says "Initializing ftrace call
	# sites".  (The first record, gic_handle_irq+0x0, is the first word of
	# .text, so reading rec->ip - 4 faults: "ftrace faulted on modifying";
	# later sites would say "found 0xd503201f, expected 0xaa1e03e9".)
	grep -q 'ftrace bug' "$BOOT_LOG" && grep -q 'Initializing ftrace call sites' "$BOOT_LOG" ||
		die "unrewritten kernel (patched ftrace_init_nop, vmlinux.o not rewritten) did not refuse the sites"
	grep -q '^FTPATCH-E2E: PASS' "$BOOT_LOG" && die "unrewritten kernel's init reported PASS"
	result unrewritten_ftrace_bug '"yes"'

	# Sites against what the kernel saw, and the entry instructions.  The
	# kernel skips zero words (the records scripts/sorttable zeroes for
	# overridden weak functions: 6.12, not 6.1), so it sees the non-zero
	# records of the linked vmlinux, which pyelftools counted.
	local sites kernel_entries=${RESULT[ftrace_entries_ftpatch]} zero_words
	sites=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["records"])' "${RESULT[mcount_check_ftpatch]}")
	zero_words=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["zero_words"])' "${RESULT[mcount_check_ftpatch]}")
	result linked_records "$sites"
	result linked_zero_words "$zero_words"
	[ $((sites + zero_words)) = "${RESULT[sites_in_vmlinux_o]}" ] ||
		die "vmlinux.o has ${RESULT[sites_in_vmlinux_o]} records, the linked vmlinux $sites and $zero_words zero words"
	[ "$kernel_entries" = "${RESULT[ftrace_entries_stock]}" ] ||
		die "stock and ftpatch kernels record different entry counts: ${RESULT[ftrace_entries_stock]} vs $kernel_entries"
	[ "$sites" = "$kernel_entries" ] ||
		die "the linked vmlinux has $sites non-zero records but the kernel recorded $kernel_entries"
	[ "${RESULT[objdump_mov_nop_sites_ftpatch]}" = "$sites" ] ||
		die "objdump: only ${RESULT[objdump_mov_nop_sites_ftpatch]} of $sites sites in vmlinux-ftpatch are mov x9, x30; nop"
	[ "${RESULT[objdump_nop_nop_sites_stock]}" = "$sites" ] ||
		die "objdump: only ${RESULT[objdump_nop_nop_sites_stock]} of $sites sites in vmlinux-stock are nop; nop"
	for kind in ftpatch stock; do
		python3 -c '
import json, sys
c, n = json.loads(sys.argv[1]), int(sys.argv[2])
sys.exit(not (c["records"] == c["layout_ok"] == c["entry_symbol_ok"] + c["entry_without_symbol"] == n
              and c["scan_lists_the_same_records"]))
' "${RESULT[mcount_check_$kind]}" "$sites" ||
			die "mcount_loc records of vmlinux-$kind against pyelftools/objdump: ${RESULT[mcount_check_$kind]} ($sites sites)"
	done

	write_summary
	if [ ${#DEFERRED_FAIL[@]} -gt 0 ]; then
		printf 'E2E FAIL %s\n' "${DEFERRED_FAIL[@]}"
		exit 1
	fi
	printf 'E2E PASS: Linux %s: %s patch sites in vmlinux.o, %s zeroed in vmlinux; the kernel saw %s; ftrace_init %s ms (ftpatch) vs %s ms (stock)\n' \
		"$KVER" "${RESULT[sites_in_vmlinux_o]}" "$zero_words" "$kernel_entries" "${RESULT[ftrace_init_ms_ftpatch]}" "${RESULT[ftrace_init_ms_stock]}"
}

# Sourced (tests/test_kernel_judge.py) it only defines the functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	trap 'write_summary 2>/dev/null || true' EXIT
	main "$@"
fi
