"""rewrite on every real-compiler fixture: exactly the planned bytes change.

The expectations come from independent tools (readelf, llvm-objdump,
pyelftools) and from a byte comparison of the files, never from ftpatch's own
reader alone.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import GOOD_OBJECTS, fixture_path, ftpatch, require, sha256
from elftools.elf.elffile import ELFFile
from test_reader import readelf_records

MOV = bytes.fromhex("e9031eaa")  # mov x9, x30, little-endian in memory
NOP = bytes.fromhex("1f2003d5")  # nop


def record_targets(path: Path) -> list[tuple[str, int]]:
    """(text section, offset) of every record, read with pyelftools."""
    out = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_RELA":
                continue
            if elf.get_section(sec["sh_info"]).name != "__patchable_function_entries":
                continue
            for rel in sec.iter_relocations():
                sym = symtab.get_symbol(rel["r_info_sym"])
                text = elf.get_section(sym["st_shndx"])
                out.append((text.name, text["sh_offset"], sym["st_value"] + rel["r_addend"]))
    return [(name, base + off) for name, base, off in out]


@pytest.mark.parametrize("name", GOOD_OBJECTS)
def test_only_entry_words_and_addends_change(name: str, tmp_path: Path) -> None:
    src = fixture_path(name)
    out = tmp_path / "out.o"
    before = src.read_bytes()
    r = ftpatch("rewrite", "--json", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert src.read_bytes() == before, "-o must leave the input alone"
    after = out.read_bytes()
    assert len(after) == len(before)
    doc = json.loads(r.stdout)["files"][0]
    planned: dict[int, tuple[bytes, bytes]] = {
        e["file_offset"]: (bytes.fromhex(e["old"]), bytes.fromhex(e["new"])) for e in doc["edits"]
    }
    allowed = set()
    for off, (old, new) in planned.items():
        assert before[off : off + len(old)] == old
        assert after[off : off + len(new)] == new
        allowed.update(range(off, off + len(old)))
    changed = {i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b}
    assert changed <= allowed, f"bytes changed outside the plan: {sorted(changed - allowed)[:8]}"
    # Each MOV lands exactly 4 bytes before where the moved record now points,
    # judged by pyelftools on the output.
    targets_before = record_targets(src)
    targets_after = record_targets(out)
    assert len(targets_before) == len(targets_after) == doc["sites"]
    for (_, fo_before), (_, fo_after) in zip(targets_before, targets_after, strict=True):
        assert fo_after > fo_before
        assert after[fo_after - 4 : fo_after] == MOV
        assert after[fo_after : fo_after + 4] == NOP
        assert before[fo_after - 4 : fo_after] == NOP


@pytest.mark.parametrize("name", GOOD_OBJECTS)
def test_second_run_changes_nothing(name: str, copy_fixture) -> None:  # type: ignore[no-untyped-def]
    path = copy_fixture(name)
    first = ftpatch("rewrite", path)
    assert first.returncode == 0, first.stderr
    digest = sha256(path)
    second = ftpatch("rewrite", path)
    assert second.returncode == 0
    assert "nothing to do" in second.stdout
    assert sha256(path) == digest
    check = ftpatch("rewrite", "--check", path)
    assert check.returncode == 0
    scan = json.loads(ftpatch("scan", "--json", path).stdout)["files"][0]
    assert scan["counts"]["pristine"] == 0 and scan["counts"]["invalid"] == 0
    assert scan["counts"]["rewritten"] == len(scan["sites"])


OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2} ){4})\s*(.*)$")


def llvm_objdump(path: Path) -> dict[str, dict[int, str]]:
    out = subprocess.run(
        ["llvm-objdump", "-d", str(path)], capture_output=True, text=True, check=True
    ).stdout
    by_section: dict[str, dict[int, str]] = {}
    current: dict[int, str] = {}
    for line in out.splitlines():
        if line.startswith("Disassembly of section "):
            current = by_section.setdefault(line[len("Disassembly of section ") : -1], {})
            continue
        m = OBJDUMP_LINE.match(line)
        if m:
            current[int(m.group(1), 16)] = " ".join(m.group(3).split())
    return by_section


@pytest.mark.toolchain
@pytest.mark.parametrize("name", GOOD_OBJECTS)
def test_disassembly_and_relocations_match_the_plan(name: str, copy_fixture) -> None:  # type: ignore[no-untyped-def]
    """readelf sees every record moved to the BL slot; llvm-objdump sees mov x9, x30 before it."""
    require("aarch64-linux-gnu-readelf", "llvm-objdump")
    path = copy_fixture(name)
    before = readelf_records(str(path))
    scan = json.loads(ftpatch("scan", "--json", path).stdout)["files"][0]["sites"]
    assert ftpatch("rewrite", path).returncode == 0
    after = readelf_records(str(path))
    dis = llvm_objdump(path)
    assert len(before) == len(after) == len(scan)
    # readelf lists record relocations in the same order as scan reports sites.
    for (t0, off0, addend0), (t1, off1, addend1), site in zip(before, after, scan, strict=True):
        assert (t0, off0) == (t1, off1) == ("R_AARCH64_ABS64", site["record_index"] * 8)
        assert addend1 - addend0 == site["slot_offset"] - site["target_offset"], site
        assert site["slot_offset"] - site["mov_offset"] == 4
    for site in scan:
        text = dis[site["target_section"]]
        assert text[site["mov_offset"]] == "mov x9, x30", site
        assert text[site["slot_offset"]] == "nop", site
