#!/usr/bin/env bash
# The README's first command.  Installs ftpatch into the virtual environment
# .venv at the repository root (scripts/install-deps.sh --runtime; nothing is
# reinstalled when it is already there), then shows each part of the tool on
# copies of the shipped real-compiler fixtures in a temporary directory (the
# committed fixtures stay pristine):
#   scan, rewrite --check, rewrite, scan again, a second rewrite that changes
#   nothing, verify (passing sites, and the two-slot counterexample on a
#   pristine copy), and bad input refused with the file left byte-identical.
# Every step's exit status and key output is checked: the demo exits 1 as soon
# as ftpatch does not behave as shown.  tests/test_demo.py runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --runtime
VENV=$PWD/.venv
fixtures=$PWD/fixtures/obj

ftpatch() { "$VENV/bin/ftpatch" "$@"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }
# expect STATUS CMD...: run CMD, show its exit status, fail unless it is STATUS.
expect() {
    local want=$1 rc=0
    shift
    "$@" || rc=$?
    echo "(exit status $rc)"
    [[ $rc == "$want" ]] || fail "$*: exit status $rc, expected $want"
}

work=$(mktemp -d "${TMPDIR:-/tmp}/ftpatch-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/pristine"
cd "$work"
objs=()
for o in "$fixtures"/*.o; do
    name=$(basename "$o")
    case "$name" in bad-site*) continue ;; esac  # the bad input, shown last
    cp "$o" "$name"
    cp "$o" pristine/
    objs+=("$name")
done
chmod u+w ./*.o pristine/*.o

echo "== ftpatch scan gcc-prefix42-bti.o    (every record, its layout and state)"
ftpatch scan gcc-prefix42-bti.o
echo
echo "== ftpatch rewrite --check -q *.o     (exit 1: work to do)"
expect 1 ftpatch rewrite --check -q "${objs[@]}"
echo
echo "== ftpatch rewrite *.o"
expect 0 ftpatch rewrite "${objs[@]}"
echo
echo "== ftpatch scan gcc-prefix42-bti.o    (after: mov x9, x30 ; nop, the record on the nop)"
ftpatch scan gcc-prefix42-bti.o | tee scan.txt
grep -q "rewritten" scan.txt && ! grep -q "pristine\|invalid" <(tail -n +2 scan.txt) \
    || fail "scan after rewrite: not every site rewritten"
echo
echo "== ftpatch rewrite *.o again          (idempotent: nothing to do, not a byte changed)"
sha256sum "${objs[@]}" >sums
expect 0 ftpatch rewrite -q "${objs[@]}"  # -q: errors only
sha256sum -c --quiet sums || fail "a second rewrite changed a file"
expect 0 ftpatch rewrite --check -q "${objs[@]}"  # --check: nothing left to do
echo "unchanged: ${#objs[@]} files"
echo

# verify proves each site safe to patch concurrently.  The four
# -fpatchable-function-entry=4,2 fixtures (*prefix42*) are left out here, not
# because verify is wrong about them: they were compiled without
# -falign-functions=8, so the 8-byte literal a CALL_OPS kernel keeps in their
# two prefix NOPs is not 8-aligned, and verify rightly reports
# [prefix-misaligned] and exits 1 (tests/test_verify.py checks exactly that).
clean=()
for o in "${objs[@]}"; do
    case "$o" in *prefix42*) ;; *) clean+=("$o") ;; esac
done
echo "== ftpatch verify gcc-plain-O2.o      (a passing object: every site, every interleaving)"
expect 0 ftpatch verify gcc-plain-O2.o
echo
echo "== ftpatch verify <the ${#clean[@]} rewritten objects without prefix NOPs>"
expect 0 ftpatch verify "${clean[@]}"
echo
# Without ftpatch the kernel writes two words, MOV then BL: on the pristine
# object verify finds the interleaving that breaks it.  (On a rewritten object
# the MOV is already there, so the two-slot scheme has nothing left to break.)
echo "== ftpatch verify --scheme two-slot pristine/gcc-plain-O2.o   (exit 1: the counterexample; first one shown)"
rc=0
ftpatch verify --scheme two-slot pristine/gcc-plain-O2.o >two-slot.txt || rc=$?
grep -q "counterexample, enable (two-slot)" two-slot.txt || fail "two-slot: no counterexample"
awk '/\[emulation\] enable/ { shown = 1 } shown { print } shown && /violation: the trampoline/ { exit }' two-slot.txt
tail -n 1 two-slot.txt
echo "(exit status $rc)"
[[ $rc == 1 ]] || fail "verify --scheme two-slot on a pristine object: exit $rc, expected 1"
echo

echo "== ftpatch rewrite bad-site.o         (bad input: refused, exit 2, file untouched)"
cp "$fixtures/bad-site.o" .
chmod u+w bad-site.o
expect 2 ftpatch rewrite bad-site.o
cmp bad-site.o "$fixtures/bad-site.o" || fail "bad-site.o changed"
echo "cmp: bad-site.o is byte-identical to the fixture"
echo
echo "== ftpatch scan fifo.o                (not a regular file: refused at once, exit 2)"
mkfifo fifo.o
expect 2 timeout 10 "$VENV/bin/ftpatch" scan fifo.o
echo
echo "demo: OK"
