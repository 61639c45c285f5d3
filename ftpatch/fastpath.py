"""The rewrite of a compiler-made object in columns: no per-record objects.

A ``vmlinux.o`` has tens of thousands of records, and building a ``Site`` (a
Record, a Location, a Layout) and two ``Edit`` objects for each costs more
than the whole rewrite budget (benchmarks/bench_rewrite.py, issue 4).  This
module plans the same edits as ``scan`` + ``plan`` straight from the file's
tables, read as ``array`` columns: the records mapped by
``records.record_columns`` (the mapping Sites are made from too), the
function entries and the instruction words; it hands the writer the same
contract plan.py does: edit columns of (file offset, old bytes, new
bytes), which the writer checks in bulk.

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
from collections.abc import Callable, Sequence
from itertools import compress, pairwise
from operator import itemgetter
from typing import NamedTuple

from ftpatch import arm64
from ftpatch.classify import Code, classify, code_of
from ftpatch.elf.reader import (
    ET_REL,
    SHT_NOBITS,
    SYM_SIZE,
    ElfFile,
)
from ftpatch.elf.records import RECORD_SIZE, RecordColumns, record_columns, records_sections
from ftpatch.model import EditColumn, Problem, State

_NOP_BYTES = arm64.word_bytes(arm64.NOP)
_MOV_BYTES = arm64.word_bytes(arm64.MOV_X9_X30)
_PRISTINE, _REWRITTEN = State.PRISTINE, State.REWRITTEN
_U64 = 0xFFFFFFFFFFFFFFFF


class FastPlan(NamedTuple):
    """What the rewrite of one object changes: site counts and edit columns."""

    sites: int
    pristine: int
    rewritten: int
    # One column per code section (its MOVs) and per RELA section (its moved
    # r_addends); empty when nothing changes.
    edits: list[EditColumn]


def _one(index: int) -> Callable[[Sequence[int]], tuple[int]]:
    """``itemgetter`` of one index, giving a tuple as it does of several."""

    def pick(column: Sequence[int]) -> tuple[int]:
        return (column[index],)

    return pick


def _file_prefix(work: list[RecordColumns], codes: dict[int, Code]) -> int | None:
    """The prefix length every pristine site with a function symbol shows,
    if they agree: what decides a symbol-less record's layout (scan_elf's
    rule, asked of the same classifier), else None."""
    prefixes: set[int | None] = set()
    for mapped in work:
        for shndx, r in zip(mapped.targets, mapped.offsets, strict=True):
            v = classify(codes[shndx], r)
            if v.state is _PRISTINE and v.entry is not None and v.layout is not None:
                prefixes.add(v.layout.prefix_nops)
    return prefixes.pop() if len(prefixes) == 1 and None not in prefixes else None


def _span(column: EditColumn) -> tuple[int, int]:
    return column.file_offsets[0], column.file_offsets[-1] + column.width


def plan_object(elf: ElfFile) -> FastPlan | None:
    """The plan of a compiler-made relocatable object, or None (general path)."""
    if elf.e_type != ET_REL:
        return None
    data = elf.data
    sections = elf.sections
    swap_elf = elf.big_endian != (sys.byteorder == "big")  # ELF fields: the file's order

    # The symbol and string tables the general path would name symbols from.
    tab = elf.symtab
    if tab is None or tab.sh_entsize != SYM_SIZE or tab.sh_type == SHT_NOBITS:
        return None
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

    # The records sections, each mapped in columns by its one in-order RELA
    # section (elf/records.py, the mapping Sites are made from too).
    work = []
    for sec in records_sections(elf):
        if sec.sh_type == SHT_NOBITS or sec.sh_size % RECORD_SIZE:
            return None
        if sec.sh_offset + sec.sh_size > len(data):
            return None  # even an empty one: the general path refuses it (SHT_NULL)
        count = sec.sh_size // RECORD_SIZE
        if count == 0:
            continue
        columns_of = record_columns(elf, sec, count)
        if columns_of is None:
            return None
        work.append(columns_of)
    if not work:
        return None
    # The function entries are all the classifier needs of the symbol table:
    # read them now, and let the table's words go before the code is read.
    elf.function_entries  # noqa: B018
    elf.drop_symbol_words()

    codes: dict[int, Code] = {}  # read for the classifier when first needed

    pristine = rewritten = 0
    # Section index -> one byte per word, 1 where a MOV goes: ascending and
    # one per entry (two records of one entry mark it twice) without a sort.
    moved_code: dict[int, bytearray] = {}
    columns: list[EditColumn] = []
    # Records with no function symbol whose words fit more than one prefix
    # length (classify.py, rule 2): (work index, record index, code section,
    # offset), resolved below as scan_elf resolves them.
    unknown: list[tuple[int, int, int, int]] = []
    moved_by: list[array] = []  # type: ignore[type-arg]  # per records section: indexes moved
    olds = [mapped.entries[2::3] for mapped in work]  # the r_addends before any moves
    for w, mapped in enumerate(work):
        entries = mapped.entries
        moved = array("I")
        moved_by.append(moved)
        last = -1  # records of one section mostly point into one code section
        c: Code | None = None
        movs = bytearray()
        for i, (shndx, r) in enumerate(zip(mapped.targets, mapped.offsets, strict=True)):
            if shndx != last:
                if not shndx:
                    return None  # not mapped in columns: the general path says why
                c = codes.get(shndx)
                if c is None:
                    c = codes[shndx] = code_of(elf, sections[shndx])
                marks = moved_code.get(shndx)
                if marks is None:
                    marks = moved_code[shndx] = bytearray(len(c.words))
                movs = marks
                last = shndx
            state, _where, _owner, _layout, _why, mov, slot, _entry, problem = classify(c, r)  # type: ignore[arg-type]
            if state is _PRISTINE:
                pristine += 1
                movs[mov >> 2] = 1  # type: ignore[operator]  # entries start on the grid
                # The record moves to the BL slot: two's complement, so the
                # same for any addend.
                entries[3 * i + 2] = (entries[3 * i + 2] + slot - r) & _U64
                moved.append(i)
            elif state is _REWRITTEN:
                rewritten += 1
            elif problem is Problem.PREFIX_UNKNOWN:
                unknown.append((w, i, shndx, r))
            else:
                return None  # invalid: the general path (scan + plan) says why
    if unknown:
        prefix = _file_prefix(work, codes)
        if prefix is None:
            return None  # the general path says why
        for w, i, shndx, r in unknown:
            v = classify(codes[shndx]._replace(prefix=prefix), r)
            if v.state is not _PRISTINE:
                return None
            assert v.mov is not None and v.slot is not None
            pristine += 1
            moved_code[shndx][v.mov >> 2] = 1
            entries = work[w].entries
            entries[3 * i + 2] = (entries[3 * i + 2] + v.slot - r) & _U64
            moved_by[w].append(i)
        moved_by = [array("I", sorted(moved)) for moved in moved_by]
    for mapped, moved, old_addends in zip(work, moved_by, olds, strict=True):
        if not moved:
            continue
        # The r_addend of entry i is at file offset addend_base + 24 * i;
        # moved ones were updated in ``entries``.
        addend_base = mapped.rela.sh_offset + 16
        entries = mapped.entries
        new_addends = entries[2::3]
        if len(moved) == len(old_addends):  # every record moves (a first rewrite)
            offsets = array("Q", range(addend_base, addend_base + 24 * len(moved), 24))
        else:
            pick = itemgetter(*moved) if len(moved) > 1 else _one(moved[0])
            old_addends = array("Q", pick(old_addends))
            new_addends = array("Q", pick(new_addends))
            offsets = array("Q", [addend_base + 24 * i for i in moved])
        if swap_elf:  # back to the file's byte order
            old_addends.byteswap()
            new_addends.byteswap()
        columns.append(EditColumn(8, offsets, old_addends, new_addends))
    for shndx, marks in moved_code.items():
        base = sections[shndx].sh_offset
        offsets = array("Q", compress(range(base, base + 4 * len(marks), 4), marks))
        if offsets:
            n = len(offsets)
            columns.append(EditColumn(4, offsets, _NOP_BYTES * n, _MOV_BYTES * n))
    spans = sorted(map(_span, columns))
    for (_, end), (start, _) in pairwise(spans):
        if start < end:
            return None  # sections overlap in the file: the general path judges the edits
    return FastPlan(pristine + rewritten, pristine, rewritten, columns)
