"""The rewrite of a compiler-made object in columns: no per-record objects.

A ``vmlinux.o`` has tens of thousands of records, and building a ``Site`` (a
Record, a Location, a Layout) and two ``Edit`` objects for each costs more
than the whole rewrite budget (benchmarks/bench_rewrite.py, issue 4).  This
module plans the same edits as ``scan`` + ``plan`` straight from the file's
tables, read as ``array`` columns (RELA entries, symbol words, instruction
words), and hands the writer whole patched sections.

It takes only what the compilers emit: relocatable objects whose records
sections each have one in-order RELA section of ``R_AARCH64_ABS64`` entries.
Each site is judged by ``classify`` (the one classifier scan and verify ask
too); on an invalid site, or anything else, it returns None and the general
path (``scan`` + ``plan``) takes the file, with its precise messages;
``tests/test_fastpath.py`` checks on every fixture, and on damaged ones,
that both paths write the same bytes.
"""

from __future__ import annotations

import sys
from array import array
from typing import NamedTuple

from ftpatch import arm64
from ftpatch.classify import Code, classify, code_of
from ftpatch.elf.reader import (
    ET_REL,
    R_AARCH64_ABS64,
    RELA_SIZE,
    SHN_LORESERVE,
    SHT_NOBITS,
    SHT_RELA,
    SYM_SIZE,
    ElfFile,
)
from ftpatch.elf.records import RECORD_SIZE, records_sections
from ftpatch.elf.writer import Buffer
from ftpatch.model import State

_MOV = arm64.MOV_X9_X30
_PRISTINE, _REWRITTEN = State.PRISTINE, State.REWRITTEN
_U64 = 0xFFFFFFFFFFFFFFFF


class FastPlan(NamedTuple):
    """What the rewrite of one object changes, as whole patched sections."""

    sites: int
    pristine: int
    rewritten: int
    # (file offset, new content) of each section that changes: the code
    # sections with their MOVs, the RELA sections with their moved addends.
    # The arrays themselves (in file byte order): no copy as bytes.
    regions: list[tuple[int, Buffer]]


def _first(region: tuple[int, Buffer]) -> int:
    return region[0]


def plan_object(elf: ElfFile) -> FastPlan | None:
    """The plan of a compiler-made relocatable object, or None (general path)."""
    if elf.e_type != ET_REL:
        return None
    data = elf.data
    sections = elf.sections
    nsec = min(len(sections), SHN_LORESERVE)
    host_big = sys.byteorder == "big"
    swap_elf = elf.big_endian != host_big  # ELF fields: the file's byte order

    # The records sections and their one in-order RELA section each.
    work = []
    for sec in records_sections(elf):
        if sec.sh_type == SHT_NOBITS or sec.sh_size % RECORD_SIZE:
            return None
        if sec.sh_offset + sec.sh_size > len(data):
            return None  # even an empty one: the general path refuses it (SHT_NULL)
        count = sec.sh_size // RECORD_SIZE
        if count == 0:
            continue
        relocs = elf.relas_for(sec)
        if len(relocs) != 1:
            return None
        rela = relocs[0]
        if rela.sh_type != SHT_RELA or rela.sh_entsize != RELA_SIZE:
            return None
        if rela.sh_size != count * RELA_SIZE:
            return None
        entries = elf.read_array("Q", rela.sh_offset, rela.sh_size)
        if swap_elf:
            entries.byteswap()
        if entries[0::3] != array("Q", range(0, count * RECORD_SIZE, RECORD_SIZE)):
            return None
        work.append((rela, entries))
    if not work:
        return None

    # Symbols: word 0 packs st_name, st_info, st_other, st_shndx; word 1 is st_value.
    tab = elf.symtab
    if tab is None or tab.sh_entsize != SYM_SIZE or tab.sh_type == SHT_NOBITS:
        return None
    symbols = elf.symbol_words  # three words per symbol, host order
    nsyms = len(symbols) // 3
    shndx_shift = elf.symbol_shifts[2]
    if not 0 <= tab.sh_link < len(sections):
        return None
    strtab = sections[tab.sh_link]
    # A SHT_NULL or SHT_NOBITS header was never range-checked by the reader.
    if strtab.sh_type in (0, SHT_NOBITS) or strtab.sh_offset + strtab.sh_size > len(data):
        return None
    if strtab.sh_size == 0 or data[strtab.sh_offset + strtab.sh_size - 1] != 0:
        # A name could run off the table's end: the general path names the
        # symbol in its error.
        return None

    code = [s.is_code and s.index < nsec for s in sections]
    codes: dict[int, Code] = {}  # read for the classifier when first needed

    pristine = rewritten = 0
    moved_code: dict[int, array] = {}  # type: ignore[type-arg]  # section index -> word indexes to MOV
    regions: list[tuple[int, Buffer]] = []
    for rela, entries in work:
        moved = False
        last = -1  # records of one section mostly point into one code section
        size = 0
        c: Code | None = None
        movs = array("L")
        for i in range(len(entries) // 3):
            r_info = entries[3 * i + 1]
            if r_info & 0xFFFFFFFF != R_AARCH64_ABS64:
                return None
            r_sym = r_info >> 32
            if not 0 < r_sym < nsyms:
                return None
            addend = entries[3 * i + 2]
            shndx = (symbols[3 * r_sym] >> shndx_shift) & 0xFFFF
            if shndx != last:
                if not 0 < shndx < nsec or not code[shndx]:
                    return None
                c = codes.get(shndx)
                if c is None:
                    c = codes[shndx] = code_of(elf, sections[shndx])
                size = sections[shndx].sh_size
                movs = moved_code.setdefault(shndx, array("L"))
                last = shndx
            # r_addend is signed (AAELF64 5.7.4: S + A).
            r = symbols[3 * r_sym + 1] + (addend - (1 << 64) if addend >> 63 else addend)
            if r < 0 or r + 8 > size:
                return None  # the general path names the place
            state, _where, _owner, _layout, _why, mov, slot, _entry, _p = classify(c, r)  # type: ignore[arg-type]
            if state is _PRISTINE:
                pristine += 1
                movs.append(mov >> 2)  # type: ignore[operator]  # aligned: entries start on the grid
                # The record moves to the BL slot: two's complement, so the
                # same for any addend.
                entries[3 * i + 2] = (addend + slot - r) & _U64
                moved = True
            elif state is _REWRITTEN:
                rewritten += 1
            else:
                return None  # invalid: the general path (scan + plan) says why
        if moved:
            if swap_elf:
                entries.byteswap()
            regions.append((rela.sh_offset, entries))
    for shndx, ks in moved_code.items():
        if not ks:
            continue
        text = codes[shndx].words  # the classifier is done with them
        for k in ks:
            text[k] = _MOV  # two records of one entry: one MOV, written twice
        if host_big:
            text.byteswap()
        regions.append((sections[shndx].sh_offset, text))
    regions.sort(key=_first)
    end = -1
    for file_offset, content in regions:
        if file_offset < end:
            return None  # sections overlap in the file: the general path refuses it
        end = file_offset + memoryview(content).nbytes
    return FastPlan(pristine + rewritten, pristine, rewritten, regions)
