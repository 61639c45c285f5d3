"""Each site's geometry, as scan reports it, against an independent reader.

The classifier decides a site's geometry once (classify.Verdict): where
callers enter, the MOV, the BL slot and, under CALL_OPS, the 8-byte ops
literal; scan, rewrite and verify read those fields.  Here they are checked
from outside: the records, words and function symbols are read with
pyelftools (never ftpatch), and the expected geometry is the kernel's:
``ftrace_call_adjust()`` skips the prefix, a BTI C and the MOV slot, and
``ftrace_rec_set_ops()`` finds the literal at ``ALIGN_DOWN(slot - 12, 8)``.
The inputs are the compilers' fixtures, pristine and rewritten, and
``ld -r`` objects with overridden weak functions (no symbol at a site).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import FIXTURES, GOOD_OBJECTS, fixture_path, ftpatch

from ftpatch.model import State
from ftpatch.scan import scan_file

NOP, MOV = 0xD503201F, 0xAA1E03E9
BTI = {0xD503245F, 0xD50324DF}
MANIFEST = {e["path"]: e for e in json.loads((FIXTURES / "MANIFEST.json").read_text())["objects"]}
WITH_RECORDS = [o for o in GOOD_OBJECTS if "norecords" not in o]


class Independent:
    """One relocatable object as pyelftools reads it."""

    def __init__(self, path: Path) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.relocation import RelocationSection

        with open(path, "rb") as f:
            elf = ELFFile(f)
            sections = list(elf.iter_sections())
            self.data = {
                i: s.data() for i, s in enumerate(sections) if s["sh_type"] == "SHT_PROGBITS"
            }
            symtab = elf.get_section_by_name(".symtab")
            symbols = list(symtab.iter_symbols())
            self.functions = {
                (s["st_shndx"], s["st_value"])
                for s in symbols
                if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 0
            }
            # (records section index, entry) -> (code section index, offset)
            self.records: dict[tuple[int, int], tuple[int, int]] = {}
            for rel in sections:
                if not isinstance(rel, RelocationSection):
                    continue
                target = sections[rel["sh_info"]]
                if not target.name.startswith("__patchable_function_entries"):
                    continue
                for r in rel.iter_relocations():
                    sym = symbols[r["r_info_sym"]]
                    self.records[rel["sh_info"], r["r_offset"] // 8] = (
                        sym["st_shndx"],
                        sym["st_value"] + r["r_addend"],
                    )

    def word(self, shndx: int, offset: int) -> int | None:
        data = self.data[shndx]
        if not 0 <= offset <= len(data) - 4:
            return None
        value: int = struct.unpack_from("<I", data, offset)[0]
        return value


def expected(ind: Independent, shndx: int, r: int, prefix: int) -> tuple[int, int, int]:
    """(entry, mov, slot) of the record at ``r`` by the kernel's rules."""
    if ind.word(shndx, r - 4) == MOV and ind.word(shndx, r) == NOP:  # rewritten
        entry = r - 8 if ind.word(shndx, r - 8) in BTI else r - 4
        return entry, r - 4, r
    if not prefix and ind.word(shndx, r - 4) in BTI:
        return r - 4, r, r + 4  # pristine, the record after the BTI C it is entered at
    entry = r + 4 * prefix  # pristine: past the prefix NOPs
    mov = entry + 4 if ind.word(shndx, entry) in BTI else entry
    return entry, mov, mov + 4


def align_down(value: int, to: int) -> int:
    return value - value % to


def check(path: Path, prefix: int) -> int:
    """Assert scan's geometry of every site of ``path``; return how many."""
    ind = Independent(path)
    with scan_file(str(path)) as result:
        sites = result.sites
        assert result.prefix == prefix or (prefix == 0 and result.prefix in (0, None))
    assert len(sites) == len(ind.records)
    for site in sites:
        assert site.state in (State.PRISTINE, State.REWRITTEN), site
        rec = site.record
        shndx, r = ind.records[rec.section_index, rec.index]
        assert (rec.target_index, rec.target_offset) == (shndx, r)
        entry, mov, slot = expected(ind, shndx, r, prefix)
        assert (site.entry_offset, site.mov_offset, site.slot_offset) == (entry, mov, slot), site
        if (shndx, entry) in ind.functions:
            assert site.function is not None
        if prefix == 2:
            literal = align_down(slot - 12, 8)  # objects: the sections are 8-byte aligned
            assert site.literal_offset == literal, site
            if (entry - 8) % 8 == 0:  # the prefix is where the kernel looks
                assert literal == entry - 8
                assert [ind.word(shndx, literal), ind.word(shndx, literal + 4)] == [NOP, NOP]
            else:  # (without -falign-functions=8: verify's prefix-misaligned)
                assert literal != entry - 8
        else:
            assert site.literal_offset is None, site
    return len(sites)


def prefix_of(name: str) -> int:
    return 2 if "-fpatchable-function-entry=4,2" in MANIFEST[name]["command"] else 0


@pytest.mark.parametrize("name", WITH_RECORDS)
def test_fixture_geometry(name: str, tmp_path: Path) -> None:
    src = fixture_path(name)
    assert check(src, prefix_of(name)) > 0
    out = tmp_path / "out.o"
    shutil.copyfile(src, out)
    out.chmod(0o644)
    assert ftpatch("rewrite", out).returncode == 0
    assert check(out, prefix_of(name)) > 0


@pytest.mark.toolchain
@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("compiler", ["clang", "gcc"])
def test_symbol_less_sites_geometry(compiler: str, bti: bool, tmp_path: Path) -> None:
    from test_weak_prefix import build

    ko = build(tmp_path, compiler, bti)
    assert check(ko, 2) > 0
    assert ftpatch("rewrite", ko).returncode == 0
    assert check(ko, 2) > 0
