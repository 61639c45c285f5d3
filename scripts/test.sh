#!/usr/bin/env bash
# The whole test suite: install everything (apt + pip), lint, type-check, test.
#   scripts/test.sh           full suite with the container check (the kernel
#                             check runs on its own: pytest -m kernel)
#   scripts/test.sh --quick   also skip the container build
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

bash scripts/install-deps.sh
echo "== ruff"; python3 -m ruff check $(ls -d ftpatch tests benchmarks fuzz 2>/dev/null)
echo "== mypy"; python3 -m mypy
# The kernel end-to-end check (scripts/kernel-e2e.sh, `pytest -m kernel`,
# about 8-15 minutes on 2 cores) is not part of this run yet: boots under
# qemu here fail intermittently in three ways.  Two were also seen on the
# stock kernel (the dynamic ftrace self-test; an oops in function_trace_call)
# and the script retries them, reporting each.  The third (the ftrace
# recursion self-test) was seen once, on the ftpatch kernel only (issue 7's
# note).  A green CI cannot depend on that.  --quick also skips the
# container build.
marker="not kernel"
if [[ $quick -eq 1 ]]; then marker="not kernel and not docker"; fi
echo "== pytest"
set +e
if [[ -n "$marker" ]]; then
    python3 -m pytest -q -ra -m "$marker" -p no:cacheprovider
else
    python3 -m pytest -q -ra -p no:cacheprovider
fi
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exit $rc
