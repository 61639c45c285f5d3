"""Shared helpers: the committed real-compiler fixtures and the CLI runners."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())

OBJECTS = sorted(str(Path(e["path"])) for e in MANIFEST["objects"] if "/e2e/" not in e["path"])
# Objects whose every record is a well-formed pristine site.
BAD = {"obj/bad-site.o", "obj/bad-site-aw.o"}
GOOD_OBJECTS = [o for o in OBJECTS if o not in BAD]


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


needs_toolchain = pytest.mark.toolchain


def require(*tools: str) -> None:
    """Fail (not skip) under CI when a tool the suite installs is missing."""
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have {', '.join(missing)} (scripts/install-deps.sh installs it)")
        pytest.skip(f"needs {', '.join(missing)} (run scripts/install-deps.sh)")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def ftpatch(*args: str | Path, cwd: Path | None = None) -> Run:
    """Run the real command in a subprocess, as a Makefile would."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def anonymous_site_object(tmp_path: Path) -> Path:
    """An object whose only record has no function symbol and sits on four
    NOPs: nothing in the file says how many are a prefix.  Hand-written (no
    compiler leaves such a file), assembled by the real assembler."""
    require("aarch64-linux-gnu-as")
    src = tmp_path / "anon.s"
    src.write_text(
        "\t.text\n\t.p2align 3\n\tnop\n\tnop\n\tnop\n\tnop\n"
        "\tsub w0, w0, #3\n\tret\n"
        '\t.section __patchable_function_entries,"aw",@progbits\n'
        "\t.p2align 3\n\t.xword .text\n"
    )
    obj = tmp_path / "anon.o"
    subprocess.run(["aarch64-linux-gnu-as", "-o", obj, src], check=True)
    return obj


def rewritten(tmp_path: Path, name: str) -> Path:
    """A copy of fixture ``name`` in ``tmp_path``, rewritten by ftpatch in-process."""
    from ftpatch.rewrite import rewrite_file

    dest = tmp_path / Path(name).name
    shutil.copyfile(fixture_path(name), dest)
    dest.chmod(0o644)
    rewrite_file(str(dest))
    return dest


@pytest.fixture
def copy_fixture(tmp_path: Path):  # type: ignore[no-untyped-def]
    def copy(name: str) -> Path:
        dest = tmp_path / Path(name).name
        shutil.copyfile(fixture_path(name), dest)
        dest.chmod(0o644)
        return dest

    return copy
