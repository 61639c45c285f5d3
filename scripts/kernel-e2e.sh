#!/usr/bin/env bash
# End-to-end: a real Linux arm64 kernel built with ftpatch boots and traces.
#
# FTPATCH_KERNEL_VERSION picks the kernel (examples/kernel/README.md has the
# details of each):
#   6.1   (default) linux-source-6.1, DYNAMIC_FTRACE_WITH_REGS,
#         -fpatchable-function-entry=2, no KASLR, the series in patches/6.1
#   6.12  linux-source-6.12, DYNAMIC_FTRACE_WITH_ARGS + _WITH_CALL_OPS,
#         -fpatchable-function-entry=4,2 (two prefix NOPs hold the ops
#         literal), KASLR (the two passing boots must be moved, each its own
#         way), the series in patches/6.12, and two ftrace users at once
#         (ftpatch.ops=N) so sites move between per-callsite ops under load
#   6.12-clang  the same built with Clang and LLD (LLVM=1),
#         ARM64_BTI_KERNEL + ARM64_PTR_AUTH_KERNEL, booted on qemu -cpu
#         max,pauth-impdef=on (the boots must show BTI and PAuth detected)
# With CONFIG_FTPATCH=y the link rewrites vmlinux.o (FTPATCH names the
# command) and fails if it is not rewritten.  Modules call ftrace_caller
# directly (6.1, 6.12-clang) or through their ftrace PLTs (6.12 GCC,
# RANDOMIZE_MODULE_REGION_FULL: ftpatch.module_path; a boot whose random
# module region cannot show the path asked for is booted again).
#
# From Debian's linux-source-VERSION this script builds, in one output
# directory and incrementally, four arm64 tinyconfig+ftrace kernels:
#   stock     the series but 0002 (CONFIG_FTPATCH=n: hook inert), and the
#             test-only timing print (patches/VERSION/test): the kernel
#             writes MOV X9, X30 into every site at boot
#   negative  CONFIG_FTPATCH=y, so vmlinux.o is rewritten, but the arm64
#             ftrace code is stock (no 0002): must fail loudly at boot
#   ftpatch   the whole series (and the timing print) and CONFIG_FTPATCH=y:
#             must boot and trace
#   unrewritten  the same, every ftpatch command "true" (after a
#             build whose "rewrite" does nothing failed at the link): the
#             patched ftrace_init_nop() must refuse the NOPs (ftrace bug)
# plus the test module (examples/kernel/module) for the stock and ftpatch
# kernels, one built with a "rewrite" that does nothing, one damaged, and on
# CALL_OPS kernels one whose symbol-less site is rewritten one word off,
# boots each under qemu-system-aarch64 (-M virt, 4 CPUs; -nic none, as the
# default NIC wants an iPXE ROM that is not installed) with the static init
# from examples/kernel/init.c, and has scripts/kernel_e2e (python -m
# kernel_e2e) judge every log and image: it writes $WORK/out/summary.json
# and prints one "E2E ..." line per finding.  This script only installs,
# unpacks, configures, builds, boots and prints what the judge says.
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
#   FTPATCH_E2E_DIRECT_SAMPLES 6.12: 0 = build, rewrite and check the
#                        samples/ftrace modules but boot without them (default 1)
#   FTPATCH_QEMU         qemu-system-aarch64 to boot with (default: the
#                        system's if it is qemu 10 or newer, else bookworm-
#                        backports' 10.0, unpacked by scripts/fetch-qemu.sh:
#                        7.2 runs stale translations of patched kernel code)
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
	SAMPLES_M=()
	;;
6.12 | 6.12-clang)
	WORK=${FTPATCH_KERNEL_WORK:-/var/tmp/ftpatch-kernel-$KVER}
	PATCHES=$REPO/patches/6.12
	FRAGMENT=$REPO/examples/kernel/ftpatch-6.12.config
	PFE=-fpatchable-function-entry=4,2
	OPS_CYCLES=${FTPATCH_E2E_OPS:-10}
	FTRACE_Y=(DYNAMIC_FTRACE_WITH_ARGS DYNAMIC_FTRACE_WITH_CALL_OPS RELOCATABLE RANDOMIZE_BASE
		MODULES MODULE_UNLOAD DYNAMIC_FTRACE_WITH_DIRECT_CALLS)
	# The kernel's direct-call clients and ftrace-ops (samples/ftrace).
	SAMPLES_M=(SAMPLE_FTRACE_DIRECT SAMPLE_FTRACE_DIRECT_MULTI SAMPLE_FTRACE_OPS)
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
# 6.12: the samples/ftrace modules the init loads (sample-NAME.ko), each
# kernel's own build of them kept in $OUT/samples-KIND/.
DIRECT_SAMPLES=()
# Booted unless FTPATCH_E2E_DIRECT_SAMPLES=0; built, rewritten, verified and
# read by the records checker either way.  (Under qemu 7.2 an unload oopsed
# now and then, stock and ftpatch alike: a stale translation of the BL;
# examples/kernel/README.md, "Direct calls".)
BOOT_SAMPLES=${FTPATCH_E2E_DIRECT_SAMPLES:-1}
[ ${#SAMPLES_M[@]} -eq 0 ] ||
	DIRECT_SAMPLES=(ftrace-direct ftrace-direct-multi ftrace-direct-modify ftrace-direct-multi-modify ftrace-ops)
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
now() { printf '%s\n' "${EPOCHREALTIME/[.,]/}"; }  # microseconds
elapsed() { local ds=$((($2 - $1 + 50000) / 100000)); printf '%d.%d\n' $((ds / 10)) $((ds % 10)); }

DEFERRED_FAIL=()    # failures that do not stop the run
SUMMARY=$OUT/summary.json
# The judgement (scripts/kernel_e2e): it prints its findings, adds them to
# $SUMMARY, and exits 1 after an "E2E FAIL" line when a check fails.
e2e() { PYTHONPATH=$REPO/scripts "$FTPATCH_PY" -m kernel_e2e "$@"; }
# note KEY VALUE: a fact of the build, typed by the judge's summary.
note() { e2e note "$SUMMARY" "$1" "$2"; }

install_deps() {
	local need=()
	command -v ${CROSS}gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
	[ -n "${FTPATCH_QEMU:-}" ] || command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
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
	pick_qemu
}

# QEMU: FTPATCH_QEMU, else the system's qemu-system-aarch64 if it is 10 or
# newer, else bookworm-backports' (scripts/fetch-qemu.sh).  Debian 12's 7.2
# can go on running a translation of kernel code after the guest rewrote it:
# after an Oops, guest memory held the NOP ftrace had written over a BL
# that every vCPU still took (examples/kernel/README.md).
pick_qemu() {
	local major
	QEMU=${FTPATCH_QEMU:-}
	if [ -z "$QEMU" ]; then
		major=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
		if [ "${major:-0}" -ge 10 ]; then
			QEMU=qemu-system-aarch64
		else
			log "qemu-system-aarch64 is ${major:-unknown}.x: fetching qemu 10 from bookworm-backports"
			QEMU=$(bash "$REPO/scripts/fetch-qemu.sh" | tail -1)
		fi
	fi
	"$QEMU" --version >/dev/null || die "qemu not runnable: $QEMU --version"
	log "booting with $("$QEMU" --version | head -1) ($QEMU)"
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
	for sym in "${SAMPLES_M[@]}"; do
		grep -qx "CONFIG_$sym=m" "$BUILD/.config" || missing+=("$sym=m")
	done
	grep -qx "# CONFIG_CC_OPTIMIZE_FOR_SIZE is not set" "$BUILD/.config" || missing+=("!CC_OPTIMIZE_FOR_SIZE")
	grep -qx "CONFIG_INITRAMFS_SOURCE=\"$OUT/initramfs.list\"" "$BUILD/.config" || missing+=(INITRAMFS_SOURCE)
	[ ${#missing[@]} -eq 0 ] || die "config: not set as required: ${missing[*]}"
	note config_checked "${#REQUIRED_Y[@]} options y, ${#SAMPLES_M[@]} m, -O2, initramfs"
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
	note "build_seconds_$name" "$(elapsed "$t0" "$t1")"
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

# keep_samples KIND: the samples/ftrace modules of the build in $BUILD (by
# its last "make modules") to $OUT/samples-KIND/, and their initramfs specs
# (sample-NAME=PATH) in SAMPLE_SPECS.
keep_samples() {
	local kind=$1 name
	SAMPLE_SPECS=()
	mkdir -p "$OUT/samples-$kind"
	for name in "${DIRECT_SAMPLES[@]}"; do
		[ -f "$BUILD/samples/ftrace/$name.ko" ] ||
			die "make modules built no samples/ftrace/$name.ko (${SAMPLES_M[*]} =m?)"
		cp "$BUILD/samples/ftrace/$name.ko" "$OUT/samples-$kind/"
		SAMPLE_SPECS+=("sample-$name=$OUT/samples-$kind/$name.ko")
	done
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

# boot NAME SWITCHES GRAPH: one qemu boot of Image-NAME, log in boot-NAME[-try].log
# (with $OUT/modules-NAME.cpio as a second initramfs when there is one)
boot() {
	local name=$1 switches=$2 graph=$3 logf=$OUT/boot-$1.log t0 t1 rc=0 initrd=()
	[ -f "$OUT/modules-$1.cpio" ] && initrd=(-initrd "$OUT/modules-$1.cpio")
	[ "${BOOT_TRY:-1}" -gt 1 ] && logf=$OUT/boot-$1-try$BOOT_TRY.log
	log "booting $name (function x$switches, function_graph x$graph, two users x$OPS_CYCLES; log $logf)"
	t0=$(now)
	timeout --foreground "$QEMU_TIMEOUT" "$QEMU" -M virt -cpu "$QEMU_CPU" -smp 4 -m 512 \
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

# boot_expect_pass NAME SWITCHES GRAPH: boot; while the judge calls the boot
# a known flake, boot again, up to FLAKE_RETRIES more times; while it calls
# it a module layout that cannot show the module path asked for, up to
# LAYOUT_RETRIES times.  The judge then reports every retry apart
# (flakes_NAME, flake_logs_NAME, layout_retries_NAME, layout_logs_NAME) and
# fails on anything but a pass.  The self-test flakes hit about one boot in
# two on 6.1 (stock and ftpatch alike, 2 host cores, qemu -smp 4); such a
# boot stops within seconds of the self-tests, so 12 retries cost little and
# leave ~0.5^13 = 1e-4 of runs failing on flakes alone.  A layout retry
# (about one boot in 15 on 6.12 GCC) stops ~10 s in.
boot_expect_pass() {
	local name=$1 verdict try=1 flakes=0 layouts=0 retries=()
	while :; do
		BOOT_TRY=$try boot "$@"
		verdict=$(e2e judge "$BOOT_LOG" --rc "$BOOT_RC" --vmlinux "$OUT/vmlinux-$name")
		if [ "$verdict" = again:module-layout ] && [ "$layouts" -lt "$LAYOUT_RETRIES" ]; then
			layouts=$((layouts + 1))
			retries+=(--layout-log "$BOOT_LOG")
			printf 'E2E AGAIN %s boot %d: its module region cannot show ftpatch.module_path=%s (%s); booting again\n' \
				"$name" "$try" "$MODULE_PATH" "$BOOT_LOG"
		elif [[ "$verdict" == flake:* ]] && [ "$flakes" -lt "$FLAKE_RETRIES" ]; then
			flakes=$((flakes + 1))
			retries+=(--flake-log "$BOOT_LOG")
			printf 'E2E FLAKE %s boot %d: known %s flake (seen on stock kernels too) in %s; booting again\n' \
				"$name" "$try" "${verdict#flake:}" "$BOOT_LOG"
		else
			break
		fi
		try=$((try + 1))
	done
	e2e boot "$SUMMARY" "$name" "$BOOT_LOG" --rc "$BOOT_RC" --seconds "$BOOT_SECONDS" \
		--vmlinux "$OUT/vmlinux-$name" --ops-cycles "$OPS_CYCLES" "${retries[@]}" || exit 1
}

# must_fail NAME: boot NAME (negative or unrewritten), which the judge
# requires to fail in its ftrace init, each its own way.
must_fail() {
	# earlycon: these kernels may die before the PL011 driver takes the
	# console (6.12-clang: BTI makes the stock adjustment land on aligned
	# words, so nothing is "misaligned", and the kernel panics right after
	# its ftrace bug); the boot console shows it.
	BOOT_APPEND=earlycon boot "$1" 2 1
	e2e must-fail "$SUMMARY" "$1" "$BOOT_LOG" --rc "$BOOT_RC" --seconds "$BOOT_SECONDS" \
		--vmlinux "$OUT/vmlinux-$1" || exit 1
}

# The C files the series touches (patches/VERSION/0*.patch), as objects,
# and kernel/module/main.o, which includes the asm/vermagic.h of 0001.
W1_OBJS=($(sed -n 's|^diff --git a/\(.*\)\.c b/.*|\1.o|p' "$PATCHES"/0*.patch | sort -u) kernel/module/main.o)

# w1_build KIND: those objects compiled again with W=1 (the kernel's extra
# warnings) in the tree as it is, the log in $OUT/w1-KIND.log.  The next
# build compiles them again without W=1 (their command line changed).
w1_build() {
	log "compiling ${W1_OBJS[*]} with W=1 ($1)"
	"${KMAKE[@]}" W=1 "${W1_OBJS[@]}" > "$OUT/w1-$1.log" 2>&1 ||
		{ tail -20 "$OUT/w1-$1.log"; die "make W=1 ${W1_OBJS[*]} failed ($1; see $OUT/w1-$1.log)"; }
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
	w1_build stock
	grep -q 'FTPATCH  *vmlinux.o' "$OUT/build-stock.log" && die "stock build ran ftpatch"
	build_module stock
	grep -q 'FTPATCH \[M\]' "$OUT/build-module-stock.log" && die "stock module build ran ftpatch"
	[ -f "$BUILD/$INTREE_KO" ] || die "make modules built no $INTREE_KO (CONFIG_SAMPLE_TRACE_EVENTS=m?)"
	$FTPATCH_CMD rewrite --check --quiet "$BUILD/$INTREE_KO" 2>/dev/null &&
		die "the stock build's in-tree $INTREE_KO is rewritten"
	keep_samples stock
	STOCK_SAMPLE_SPECS=("${SAMPLE_SPECS[@]}")
	local name
	for name in "${DIRECT_SAMPLES[@]}"; do
		$FTPATCH_CMD rewrite --check --quiet "$OUT/samples-stock/$name.ko" 2>/dev/null &&
			die "the stock build's samples/ftrace/$name.ko is rewritten"
	done

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
	# The samples/ftrace modules, rewritten by the same "make modules" and
	# passed by ftpatch verify.
	keep_samples ftpatch
	for name in "${DIRECT_SAMPLES[@]}"; do
		$FTPATCH_CMD rewrite --check --quiet "$OUT/samples-ftpatch/$name.ko" ||
			die "make modules left samples/ftrace/$name.ko not rewritten"
	done
	if [ ${#DIRECT_SAMPLES[@]} -gt 0 ]; then
		$FTPATCH_CMD verify "$OUT"/samples-ftpatch/*.ko > "$OUT/verify-samples.log" 2>&1 ||
			DEFERRED_FAIL+=("ftpatch verify failed the samples/ftrace modules (see $OUT/verify-samples.log)")
		note samples_verify "$(tail -1 "$OUT/verify-samples.log")"
	fi
	$FTPATCH_CMD scan --json "$OUT/intree-${INTREE_KO##*/}" > "$OUT/scan-intree.json"
	# With its sites outside .init.text: what the kernel lists once it has loaded.
	e2e scan "$SUMMARY" "$OUT/scan-intree.json" --counts intree_module_sites \
		--core-sites intree_module_core_sites
	"${KMAKE[@]}" M="$WORK/modules/ftpatch" modules > "$OUT/build-module-again.log" 2>&1 ||
		die "module rebuild failed (see $OUT/build-module-again.log)"
	grep -q 'FTPATCH \[M\]' "$OUT/build-module-again.log" &&
		die "an unchanged module was rewritten again (see $OUT/build-module-again.log)"
	$FTPATCH_CMD scan --json "$WORK/modules/ftpatch/ftpatch_test.ko" > "$OUT/scan-module.json"
	e2e scan "$SUMMARY" "$OUT/scan-module.json" --counts module_sites
	FTPATCH=true build_module unrewritten
	$FTPATCH_CMD rewrite --check --quiet "$WORK/modules/unrewritten/ftpatch_test.ko" &&
		die "the module built with FTPATCH=true is rewritten"
	# Its first MOV X9, X30 in .text turned into a NOP (found with pyelftools, not ftpatch).
	note module_damaged_site "$(e2e damage "$WORK/modules/ftpatch/ftpatch_test.ko" "$OUT/ftpatch_test-damaged.ko")"
	# CALL_OPS kernels: one whose ops literal lies over code (its symbol-less
	# site rewritten one word off, with pyelftools), which ftpatch verify
	# must fail as the kernel refuses it.
	local literal=() where rc=0
	if [ "$KVER" != 6.1 ]; then
		where=$(e2e misplace-literal "$WORK/modules/ftpatch/ftpatch_test.ko" "$OUT/ftpatch_test-literal-damaged.ko") ||
			die "could not make the literal-damaged module"
		note module_literal_damaged_site "$where"
		literal=(refuse-literal-damaged="$OUT/ftpatch_test-literal-damaged.ko")
		$FTPATCH_CMD verify "$OUT/ftpatch_test-literal-damaged.ko" > "$OUT/verify-literal-damaged.log" 2>&1 || rc=$?
		case $rc in
		0)
			note module_literal_damaged_verify passed
			DEFERRED_FAIL+=("ftpatch verify passes the literal-damaged module (see $OUT/verify-literal-damaged.log)")
			;;
		1) note module_literal_damaged_verify "failed: $(grep -m1 -o 'FAIL.*' "$OUT/verify-literal-damaged.log")" ;;
		*) DEFERRED_FAIL+=("ftpatch verify exited $rc on $OUT/ftpatch_test-literal-damaged.ko") ;;
		esac
	fi
	local BOOTED_SAMPLES=() STOCK_BOOTED_SAMPLES=()
	if [ "$BOOT_SAMPLES" = 1 ]; then
		BOOTED_SAMPLES=("${SAMPLE_SPECS[@]}")
		STOCK_BOOTED_SAMPLES=("${STOCK_SAMPLE_SPECS[@]}")
	fi
	[ ${#DIRECT_SAMPLES[@]} -eq 0 ] ||
		note direct_samples_booted "$([ "$BOOT_SAMPLES" = 1 ] && echo yes || echo "no (FTPATCH_E2E_DIRECT_SAMPLES=0)")"
	module_initrd ftpatch "$WORK/modules/ftpatch/ftpatch_test.ko" \
		refuse-foreign="$WORK/modules/stock/ftpatch_test.ko" \
		refuse-unrewritten="$WORK/modules/unrewritten/ftpatch_test.ko" \
		refuse-damaged="$OUT/ftpatch_test-damaged.ko" "${literal[@]}" \
		"intree-$(basename "$INTREE_KO" .ko)"="$OUT/intree-${INTREE_KO##*/}" "${BOOTED_SAMPLES[@]}"
	module_initrd stock "$WORK/modules/stock/ftpatch_test.ko" \
		refuse-foreign="$WORK/modules/ftpatch/ftpatch_test.ko" "${STOCK_BOOTED_SAMPLES[@]}"
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
	note module_stamp_tracks_command yes
}

# records_check IMAGE EXPECT KEY [ARGS...]: every record of IMAGE (a linked
# vmlinux or a module) in state EXPECT, read by the judge's records checker
# (pyelftools and binutils, never ftpatch), in the layout of this kernel.
records_check() {
	local image=$1 expect=$2 key=$3 call_ops=()
	shift 3
	[ "$KVER" = 6.1 ] || call_ops=(--call-ops)
	e2e records "$image" --expect "$expect" "${call_ops[@]}" --summary "$SUMMARY" --key "$key" "$@" ||
		exit 1
}

main() {
	install_deps
	prepare_tree
	rm -f "$SUMMARY"
	note kernel_version "$KVER"
	note qemu "$("$QEMU" --version | head -1)"
	build_init
	configure

	build_kernels
	module_stamp_check
	grep -q -- "$PFE" "$BUILD/kernel/.fork.o.cmd" ||
		die "kernel not compiled with $PFE"

	# Static checks of the rewrite.
	$FTPATCH_CMD scan "$BUILD/vmlinux.o" --json > "$OUT/scan-vmlinux.o.json"
	e2e scan "$SUMMARY" "$OUT/scan-vmlinux.o.json" --sites sites_in_vmlinux_o --states scan_states
	# The linked images, read by ftpatch's own image reader, and every
	# record against readers independent of ftpatch: the words between
	# __start_mcount_loc and __stop_mcount_loc, the function symbols
	# (pyelftools) and the instructions at each (objdump); ftpatch scan must
	# list the same records.  Then the modules: the test module as each
	# kernel's build left it, and the rewritten in-tree one.
	local kind expect
	for kind in stock ftpatch; do
		$FTPATCH_CMD scan "$OUT/vmlinux-$kind" --json > "$OUT/scan-vmlinux-$kind.json"
		e2e scan "$SUMMARY" "$OUT/scan-vmlinux-$kind.json" --counts "scan_counts_vmlinux_$kind"
		expect=pristine
		[ "$kind" = stock ] || expect=rewritten
		records_check "$OUT/vmlinux-$kind" "$expect" "records_check_$kind" \
			--objdump "${CROSS}objdump" --scan "$OUT/scan-vmlinux-$kind.json"
		records_check "$WORK/modules/$kind/ftpatch_test.ko" "$expect" "records_check_module_$kind"
	done
	records_check "$OUT/intree-${INTREE_KO##*/}" rewritten records_check_intree_module
	local name
	for name in "${DIRECT_SAMPLES[@]}"; do
		records_check "$OUT/samples-stock/$name.ko" pristine "records_check_sample_stock_$name"
		records_check "$OUT/samples-ftpatch/$name.ko" rewritten "records_check_sample_ftpatch_$name"
	done
	# A verify failure is reported now and fails the run at the end, after
	# the boots, so one run shows everything.
	if $FTPATCH_CMD verify --help >/dev/null 2>&1; then
		if $FTPATCH_CMD verify "$OUT/vmlinux-ftpatch" > "$OUT/verify.log" 2>&1; then
			note verify passed
		else
			tail -3 "$OUT/verify.log"
			note verify "failed: $(tail -1 "$OUT/verify.log" | sed 's/.*FAIL: //') (see $OUT/verify.log)"
			DEFERRED_FAIL+=("ftpatch verify $OUT/vmlinux-ftpatch failed")
		fi
	else
		printf 'E2E SKIP ftpatch verify: "%s verify --help" does not work yet\n' "$FTPATCH_CMD"
		note verify "skipped: ftpatch verify not available"
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
	note norewrite_build_failed yes
	export FTPATCH=true
	rm -f "$BUILD/vmlinux.o" "$BUILD/vmlinux"
	build unrewritten
	unset FTPATCH
	# The ftpatch kernel's sources and config (the last build of this run).
	w1_build ftpatch
	e2e w1 "$SUMMARY" --stock "$OUT/w1-stock.log" --ftpatch "$OUT/w1-ftpatch.log" \
		--source "$SRC" --objects "${W1_OBJS[*]}" || exit 1
	$FTPATCH_CMD rewrite --check --quiet "$BUILD/vmlinux.o" &&
		die "unrewritten build: vmlinux.o is rewritten"

	# Boots.  The stock kernel gets the same tracer switching as the ftpatch
	# kernel: an equal control.  Then, across both passing boots, the
	# modules (each refuse-*.ko refused for its reason, the test module
	# loaded, traced, unloaded and reloaded along MODULE_PATH), KASLR (6.12)
	# and BTI with PAuth (6.12-clang).
	boot_expect_pass ftpatch "$SWITCHES" 3
	boot_expect_pass stock "$SWITCHES" 3
	local checks=()
	[ "$KVER" = 6.1 ] || checks+=(--kaslr)
	[ "$KVER" != 6.12-clang ] || checks+=(--bti)
	[ "$KVER" = 6.1 ] || checks+=(--call-ops)
	[ ${#DIRECT_SAMPLES[@]} -eq 0 ] || [ "$BOOT_SAMPLES" != 1 ] ||
		checks+=(--direct-samples "${DIRECT_SAMPLES[*]}")
	e2e boots-check "$SUMMARY" --out "$OUT" --module-path "$MODULE_PATH" "${checks[@]}" || exit 1

	# The negative kernel's stock ftrace_call_adjust() moves the records a
	# second time; the unrewritten kernel's patched ftrace_init_nop() finds
	# NOP where it wants the MOV.  Both must fail in their ftrace init.
	must_fail negative
	must_fail unrewritten

	# The records of vmlinux.o, of the linked images and those the kernels
	# saw agree; then the verdict of the whole run.
	e2e final "$SUMMARY" "${DEFERRED_FAIL[@]/#/--deferred-fail=}" || exit 1
}

main "$@"
