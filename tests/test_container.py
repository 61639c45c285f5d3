"""The container image: scripts/container-check.sh builds the Dockerfile's `check` target
(fixtures rebuilt from source, rewritten and verified, the quick suite run inside the
image) and the `ftpatch` target, and smoke-tests the latter. Slow: marker `docker`."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, require

SCRIPT = ROOT / "scripts" / "container-check.sh"


@pytest.mark.docker
def test_container_check_builds_and_passes() -> None:
    require("bash")
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=40 * 60,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"container-check.sh exited {proc.returncode}:\n{tail}"
    assert "== container-check: OK" in proc.stdout, tail
