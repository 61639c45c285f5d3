"""The committed fixture objects are the ones fixtures/MANIFEST.json describes.

Every object must exist with the recorded sha256, and its record count (taken
by binutils readelf when the manifest was written) must match an independent
count through pyelftools.  With the cross toolchain installed, fixtures/build.sh
--check rebuilds everything in a temporary directory and proves the committed
bytes are reproducible from fixtures/src with the recorded commands.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "MANIFEST.json").read_text())
OBJECTS: list[dict[str, Any]] = MANIFEST["objects"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pyelftools_record_count(path: Path) -> int:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    with path.open("rb") as stream:
        elf = ELFFile(stream)
        return sum(
            section.num_relocations()
            for section in elf.iter_sections()
            if isinstance(section, RelocationSection)
            and elf.get_section(section["sh_info"]).name == "__patchable_function_entries"
        )


@pytest.mark.parametrize("entry", OBJECTS, ids=[e["path"] for e in OBJECTS])
def test_object_matches_manifest(entry: dict[str, Any]) -> None:
    path = FIXTURES / entry["path"]
    assert path.is_file(), f"{entry['path']} listed in MANIFEST.json but missing"
    assert _sha256(path) == entry["sha256"], f"{entry['path']}: sha256 differs from MANIFEST.json"
    for source in entry["sources"]:
        assert (FIXTURES / source).is_file(), f"{entry['path']}: source {source} missing"
    assert entry["command"].endswith(f"-o {entry['path']}")


@pytest.mark.parametrize("entry", OBJECTS, ids=[e["path"] for e in OBJECTS])
def test_record_count_agrees_with_readelf(entry: dict[str, Any]) -> None:
    pytest.importorskip("elftools")
    assert _pyelftools_record_count(FIXTURES / entry["path"]) == entry["records"]


def test_every_committed_object_is_in_manifest() -> None:
    on_disk = {p.relative_to(FIXTURES).as_posix() for p in (FIXTURES / "obj").rglob("*.o")}
    assert on_disk == {e["path"] for e in OBJECTS}


def test_e2e_expected_stdout_matches_manifest() -> None:
    e2e = MANIFEST["e2e"]
    expected = FIXTURES / e2e["expected_stdout"]
    assert _sha256(expected) == e2e["expected_stdout_sha256"]
    assert expected.read_text().rstrip("\n").endswith("ALL OK")
    for variant in e2e["variants"]:
        assert list((FIXTURES / "obj" / "e2e" / variant).glob("*.o")), variant


@pytest.mark.toolchain
@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None,
    reason="aarch64-linux-gnu-gcc not installed: cannot rebuild the fixtures to check them",
)
def test_build_check_reproduces_committed_objects() -> None:
    result = subprocess.run(
        ["bash", str(FIXTURES / "build.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
