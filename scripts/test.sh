#!/usr/bin/env bash
# The whole test suite: install everything (apt, and ftpatch[test] into the
# virtual environment .venv), lint, type-check, test, all with .venv's python.
#   scripts/test.sh           full suite: the container check and the real
#                             Linux kernel build + qemu boots included
#   scripts/test.sh --quick   skip those two (and install nothing they alone need)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

if [[ $quick -eq 1 ]]; then bash scripts/install-deps.sh --quick; else bash scripts/install-deps.sh; fi
PY=.venv/bin/python
echo "== ruff"; $PY -m ruff check $(ls -d ftpatch tests benchmarks fuzz scripts 2>/dev/null)
echo "== mypy"; $PY -m mypy
# Everything, the real-kernel end-to-end check included (scripts/kernel-e2e.sh,
# pytest marker "kernel", three kernels, 40-50 minutes on 2 cores).  --quick skips
# that and the container build.
marker=""
if [[ $quick -eq 1 ]]; then marker="not kernel and not docker"; fi
echo "== pytest"
set +e
if [[ -n "$marker" ]]; then
    $PY -m pytest -q -ra -m "$marker" -p no:cacheprovider
else
    $PY -m pytest -q -ra -p no:cacheprovider
fi
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit $rc
