#!/usr/bin/env bash
# The main job on the shipped fixtures: install ftpatch (pip), then scan,
# rewrite and check the real-compiler objects in fixtures/obj, on copies in a
# temporary directory (the committed fixtures stay pristine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --runtime
work=$(mktemp -d "${TMPDIR:-/tmp}/ftpatch-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
objs=()
for o in fixtures/obj/*.o; do
    case "$o" in *bad-site*) continue ;; esac
    cp "$o" "$work/"
    objs+=("$work/$(basename "$o")")
done
echo "== ftpatch scan (before)"
ftpatch scan "$work/gcc-prefix42-bti.o"
echo "== ftpatch rewrite --check (exit 1: work to do)"
ftpatch rewrite --check "${objs[@]}" || echo "exit status $?"
echo "== ftpatch rewrite"
ftpatch rewrite "${objs[@]}"
echo "== ftpatch scan (after)"
ftpatch scan "$work/gcc-prefix42-bti.o"
echo "== ftpatch rewrite --check (exit 0: nothing left)"
ftpatch rewrite --check -q "${objs[@]}" && echo "exit status 0"
if ftpatch verify --help >/dev/null 2>&1; then
    echo "== ftpatch verify"
    ftpatch verify "${objs[@]}"
fi
echo "== bad input is refused, file untouched"
cp fixtures/obj/bad-site.o "$work/"
ftpatch rewrite "$work/bad-site.o" || echo "exit status $?"
