"""ftpatch's struct reader agrees with pyelftools and readelf on every fixture."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import OBJECTS, fixture_path, require
from elftools.elf.elffile import ELFFile

from ftpatch.elf.reader import mapped_elf, open_elf
from ftpatch.elf.records import object_records, records_sections


@pytest.mark.parametrize("name", OBJECTS)
def test_sections_symbols_relocations_match_pyelftools(name: str) -> None:
    path = str(fixture_path(name))
    elf = open_elf(path)
    with open(path, "rb") as f:
        ref = ELFFile(f)
        assert elf.big_endian == (not ref.little_endian)
        theirs_sections = list(ref.iter_sections())
        assert len(elf.sections) == len(theirs_sections)
        for mine, theirs in zip(elf.sections, theirs_sections, strict=True):
            h = theirs.header
            assert mine.name == theirs.name
            assert (mine.sh_offset, mine.sh_size, mine.sh_link, mine.sh_info, mine.sh_flags) == (
                h.sh_offset,
                h.sh_size,
                h.sh_link,
                h.sh_info,
                h.sh_flags,
            )
        symtab = ref.get_section_by_name(".symtab")
        assert elf.symbol_count == symtab.num_symbols()
        for i, sym in enumerate(symtab.iter_symbols()):
            mine_sym = elf.symbol(i)
            assert (mine_sym.st_value, mine_sym.st_size) == (sym["st_value"], sym["st_size"])
            if isinstance(sym["st_shndx"], int):
                assert mine_sym.st_shndx == sym["st_shndx"]
            if sym["st_info"]["type"] != "STT_SECTION":
                assert mine_sym.name == sym.name
        for sec in records_sections(elf):
            for rela_sec in elf.relas_for(sec):
                theirs_rel = theirs_sections[rela_sec.index]
                mine_rel = [
                    (r.r_offset, r.r_sym, r.r_type, r.r_addend) for r in elf.iter_rela(rela_sec)
                ]
                assert mine_rel == [
                    (r["r_offset"], r["r_info_sym"], r["r_info_type"], r["r_addend"])
                    for r in theirs_rel.iter_relocations()
                ]


READELF_RELA = re.compile(
    r"^([0-9a-f]{12,16})\s+[0-9a-f]{12,16}\s+(R_AARCH64_\w+)\s+[0-9a-f]+\s+\S+\s*\+\s*([0-9a-f]+)"
)


def readelf_records(path: str) -> list[tuple[str, int, int]]:
    """(type, r_offset, addend) of every record relocation, as readelf prints them."""
    out = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-rW", path], capture_output=True, text=True, check=True
    ).stdout
    found: list[tuple[str, int, int]] = []
    current = None
    for line in out.splitlines():
        if line.startswith("Relocation section"):
            current = line.split("'")[1]
            continue
        m = READELF_RELA.match(line)
        if m and current == ".rela__patchable_function_entries":
            found.append((m.group(2), int(m.group(1), 16), int(m.group(3), 16)))
    return found


@pytest.mark.toolchain
@pytest.mark.parametrize("name", OBJECTS)
def test_record_addends_match_readelf(name: str) -> None:
    require("aarch64-linux-gnu-readelf")
    path = str(fixture_path(name))
    theirs = readelf_records(path)
    assert all(t == "R_AARCH64_ABS64" for t, _, _ in theirs)
    elf = open_elf(path)
    mine = [(r.index * 8, r.value) for r in object_records(elf)]
    assert sorted(mine) == sorted((off, addend) for _, off, addend in theirs)


@pytest.mark.parametrize("name", OBJECTS)
def test_symbol_values_match_pyelftools(name: str) -> None:
    """symbol_values(): the first defined symbol of each name, as pyelftools reads it."""
    path = fixture_path(name)
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        expected: dict[str, int] = {}
        undefined = set()
        for sym in symtab.iter_symbols():
            if not sym.name:
                continue
            if sym["st_shndx"] == "SHN_UNDEF":
                undefined.add(sym.name)
            else:
                expected.setdefault(sym.name, sym["st_value"])
    with mapped_elf(str(path)) as elf:
        names = sorted(expected) + sorted(undefined - set(expected)) + ["no_such_symbol"]
        assert elf.symbol_values(*names) == expected
        for n in names[:20]:
            assert elf.symbol_values(n) == ({n: expected[n]} if n in expected else {})
