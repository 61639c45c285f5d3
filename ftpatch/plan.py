"""The one rewrite planner: every record's verdict -> same-size byte edits, in columns.

For each pristine site the first entry NOP becomes ``mov x9, x30`` and the
record moves to the second entry word, the BL slot, which is what
``ftrace_call_adjust()`` would otherwise compute at every boot.  Rewritten
sites and zero records need nothing; an invalid site stops the whole plan
(nothing is written rather than a partial rewrite).

A ``vmlinux.o`` has tens of thousands of records, and a ``Site`` (a Record,
a Location, a Layout) and two ``Edit`` objects for each cost more than the
whole rewrite budget (benchmarks/bench_rewrite.py).  So the plan is made in
columns: the records as arrays (``records.record_columns`` for the
compilers' RELA layout; record by record for anything else and for linked
images), classified as ``classify.classify_file`` does, and edit columns of
(file offset, old bytes, new bytes) that the one writer checks in bulk.
Sites and ``Edit`` objects are made only for output that shows them
(``--dry-run``, ``--json``: :func:`detail`) and for an error's message.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import compress
from operator import itemgetter
from typing import NamedTuple, NoReturn

from ftpatch import arm64
from ftpatch.classify import Code, PrefixVote, Verdict, classify, code_of, decide, depends_on_prefix
from ftpatch.elf.reader import ET_REL, SHT_NOBITS, ElfFile
from ftpatch.elf.records import (
    RECORD_SIZE,
    RawRecord,
    RecordColumns,
    record_columns,
    records_sections,
)
from ftpatch.errors import SiteError
from ftpatch.model import Edit, EditColumn, EditKind, Plan, RecordsMode, Site, State

_NOP_BYTES = arm64.word_bytes(arm64.NOP)
_MOV_BYTES = arm64.word_bytes(arm64.MOV_X9_X30)
_PRISTINE, _REWRITTEN, _INVALID = State.PRISTINE, State.REWRITTEN, State.INVALID
_U64 = 0xFFFFFFFFFFFFFFFF


class FilePlan(NamedTuple):
    """What the rewrite of one file changes: site counts and edit columns."""

    sites: int
    pristine: int
    rewritten: int
    skipped: int  # zero records of a linked image, left alone
    # One column per code section (its MOVs) and per group of record values
    # (a RELA section's r_addends, a linked image's words); empty when
    # nothing changes.
    edits: list[EditColumn]


class _Group(NamedTuple):
    """Records whose values are 8-byte fields at ascending file offsets (a
    records section's r_addends, or a linked image's records)."""

    value_offsets: Sequence[int]  # file offset of each record's value
    values: array  # type: ignore[type-arg]  # "Q", host order, as stored (two's complement)
    first: int  # index of the group's first record in the file's record order


class _Records(NamedTuple):
    """One file's records as the planner reads them, in record order."""

    codes: list[Code | None]  # the code section each points into; None: not mapped
    offsets: Sequence[int]  # where in it
    groups: list[_Group]
    # Record index -> file offset of a second copy of its value (GNU ld's PIE word).
    mirrors: dict[int, int]
    # Record index -> (the records section, entry number, why it is not mapped);
    # a zero record of a linked image has no reason.
    unmapped: dict[int, tuple[str, int, str | None]]


def plan_file(elf: ElfFile, records_mode: RecordsMode = "auto") -> FilePlan:
    """The plan of one file; raises ``SiteError`` at its first invalid site.

    The steps of ``classify.classify_file`` (classify each record, agree the
    file's prefix, decide the sites that depend on it), taken in columns:
    no verdict is kept beyond its record but those the prefix decides.
    """
    if elf.e_type == ET_REL:
        if not _names_readable(elf):
            from ftpatch.scan import scan_elf

            scan_elf(elf, records_mode)  # its error, if the names make one
        records = _object_records(elf)
    else:
        records = _image_records(elf, records_mode)
    codes, offsets = records.codes, records.offsets
    vote = PrefixVote()
    add = vote.add
    # Per record, how far its value moves (0: not at all; a move is never 0).
    deltas = array("q", bytes(8 * len(offsets)))
    pending: list[tuple[int, Verdict]] = []  # decided once the prefix is known
    pristine = rewritten = skipped = 0
    # Per code section (by identity): its file offset, and one byte per word,
    # 1 where a MOV goes: ascending, and one per entry (two records of one
    # entry mark it twice).
    marks: dict[int, tuple[int, bytearray]] = {}
    for i, (code, r) in enumerate(zip(codes, offsets, strict=True)):
        if code is None:
            if records.unmapped[i][2] is not None:
                _refuse(elf, records_mode)
            skipped += 1
            continue
        v = classify(code, r)
        add(code, v)
        if depends_on_prefix(code, v):
            pending.append((i, v))
            continue
        state = v.state
        if state is _PRISTINE:
            pristine += 1
            _move(marks, code, v, deltas, i, r)
        elif state is _REWRITTEN:
            rewritten += 1
        else:
            _refuse(elf, records_mode)
    if pending:
        prefix, exact = vote.result()
        for i, v in pending:
            code = codes[i]
            assert code is not None
            if prefix is not None:
                v = decide(code, v, offsets[i], prefix, exact)
            if v.state is _PRISTINE:
                pristine += 1
                _move(marks, code, v, deltas, i, offsets[i])
            elif v.state is _REWRITTEN:
                rewritten += 1
            else:
                _refuse(elf, records_mode)
    columns = _value_columns(elf, records, deltas)
    for base, words in sorted(marks.values()):
        movs = array("Q", compress(range(base, base + 4 * len(words), 4), words))
        if movs:
            n = len(movs)
            columns.append(EditColumn(4, movs, _NOP_BYTES * n, _MOV_BYTES * n))
    return FilePlan(pristine + rewritten + skipped, pristine, rewritten, skipped, columns)


def _move(
    marks: dict[int, tuple[int, bytearray]],
    code: Code,
    v: Verdict,
    deltas: array,  # type: ignore[type-arg]
    i: int,
    r: int,
) -> None:
    """A pristine site: its MOV marked, its record moved to the BL slot."""
    assert v.mov is not None and v.slot is not None
    m = marks.get(id(code))
    if m is None:
        m = marks[id(code)] = (code.file_offset, bytearray(len(code.words)))
    m[1][v.mov >> 2] = 1  # entries start on the grid
    deltas[i] = v.slot - r


def _refuse(elf: ElfFile, records_mode: RecordsMode) -> NoReturn:
    """Raise the error ``scan`` gives the file: the message of its first
    invalid site (or of what makes the file unreadable), word for word."""
    from ftpatch.scan import scan_elf

    for site in scan_elf(elf, records_mode):
        if site.state is _INVALID:
            raise SiteError(site.location, site.reason or "invalid site")
    raise AssertionError("the plan found an invalid site that scan does not")


def _names_readable(elf: ElfFile) -> bool:
    """The symbol string table is in the file and ends in a NUL, so every
    name read from it ends inside it.  (``scan`` names every site's function
    and refuses a file whose names run off the table; the plan names none
    of them, so it asks first.)"""
    tab = elf.symtab
    if tab is None or tab.sh_type == SHT_NOBITS or not 0 <= tab.sh_link < len(elf.sections):
        return False
    strtab = elf.sections[tab.sh_link]
    if strtab.sh_type in (0, SHT_NOBITS) or strtab.sh_offset + strtab.sh_size > elf.size:
        return False
    return strtab.sh_size > 0 and elf.data[strtab.sh_offset + strtab.sh_size - 1] == 0


def _value_columns(
    elf: ElfFile,
    records: _Records,
    deltas: array,  # type: ignore[type-arg]
) -> list[EditColumn]:
    """The moved records' values (and their mirrors), one column per group."""
    columns: list[EditColumn] = []
    swap = elf.big_endian != (sys.byteorder == "big")  # ELF fields: the file's order
    mirrors: list[tuple[int, int, int]] = []
    groups = records.groups
    for g, group in enumerate(groups):
        first = group.first
        stop = groups[g + 1].first if g + 1 < len(groups) else len(deltas)
        moves = deltas[first:stop]
        values = group.values
        if moves.count(0) == len(moves):
            continue
        # Two's complement: the same bytes for a signed r_addend or an address.
        new = array("Q", [(a + d) & _U64 for a, d in zip(values, moves, strict=True)])
        if 0 in moves:  # only some move (a file partly rewritten already)
            picked = [j for j, d in enumerate(moves) if d]
            pick = itemgetter(*picked) if len(picked) > 1 else _one(picked[0])
            old = array("Q", pick(values))
            new = array("Q", pick(new))
            offsets = array("Q", pick(group.value_offsets))
        else:
            old = array("Q", values)
            offsets = array("Q", group.value_offsets)
        # An object's r_addends ascend by construction (a range); a linked
        # image's RELA addends may come out of order.
        ascending = isinstance(group.value_offsets, range)
        for j in range(0 if ascending else len(offsets) - 1):
            if offsets[j] >= offsets[j + 1]:
                order = sorted(range(len(offsets)), key=offsets.__getitem__)
                offsets = array("Q", [offsets[k] for k in order])
                old = array("Q", [old[k] for k in order])
                new = array("Q", [new[k] for k in order])
                break
        if records.mirrors:
            for j, d in enumerate(moves):
                mirror = records.mirrors.get(first + j)
                if d and mirror is not None:
                    mirrors.append((mirror, values[j], (values[j] + d) & _U64))
        if swap:  # back to the file's byte order
            old.byteswap()
            new.byteswap()
        columns.append(EditColumn(8, offsets, old, new))
    if mirrors:
        mirrors.sort()
        old = array("Q", [o for _, o, _ in mirrors])
        new = array("Q", [n for _, _, n in mirrors])
        if swap:
            old.byteswap()
            new.byteswap()
        columns.append(EditColumn(8, array("Q", [m for m, _, _ in mirrors]), old, new))
    return columns


def _one(index: int) -> Callable[[Sequence[int]], tuple[int]]:
    """``itemgetter`` of one index, giving a tuple as it does of several."""

    def pick(column: Sequence[int]) -> tuple[int]:
        return (column[index],)

    return pick


def _object_records(elf: ElfFile) -> _Records:
    """A relocatable object's records: each records section in columns where
    it is relocated the compilers' way (``record_columns``), else record by
    record (``object_records``, which also says what is wrong)."""
    from ftpatch.elf.records import object_records

    sections = elf.sections
    codes: list[Code | None] = []
    offsets = array("q")
    groups: list[_Group] = []
    unmapped: dict[int, tuple[str, int, str | None]] = {}
    by_section: dict[int, Code] = {}
    columns: list[RecordColumns] = []
    for sec in records_sections(elf):
        count = sec.sh_size // RECORD_SIZE
        mapped = None
        if sec.sh_type != SHT_NOBITS and not sec.sh_size % RECORD_SIZE and count:
            if sec.sh_offset + sec.sh_size <= elf.size:
                mapped = record_columns(elf, sec, count)
        if mapped is None or 0 in mapped.targets:
            columns = []
            break  # something to say about a record: object_records says it
        columns.append(mapped)
    else:
        if columns:
            # The function entries are all the classifier needs of the symbol
            # table: read them now, and let the table's words go.
            elf.function_entries  # noqa: B018
            elf.drop_symbol_words()
            for mapped in columns:
                base = mapped.rela.sh_offset + 16
                n = len(mapped.targets)
                groups.append(
                    _Group(range(base, base + 24 * n, 24), mapped.entries[2::3], len(offsets))
                )
                last, code = -1, None
                for shndx in mapped.targets:
                    if shndx != last:
                        code = by_section.get(shndx)
                        if code is None:
                            code = by_section[shndx] = code_of(elf, sections[shndx])
                        last = shndx
                    codes.append(code)
                offsets.extend(mapped.offsets)
            return _Records(codes, offsets, groups, {}, unmapped)
    return _from_raw(elf, object_records(elf))


def _image_records(elf: ElfFile, records_mode: RecordsMode) -> _Records:
    from ftpatch.elf.image import image_records  # linked images only

    raw, _kind, _area = image_records(elf, records_mode)
    return _from_raw(elf, raw)


def _from_raw(elf: ElfFile, raw: list[RawRecord]) -> _Records:
    """Records mapped one by one: a group per records section."""
    codes: list[Code | None] = []
    offsets = array("q")
    groups: list[_Group] = []
    mirrors: dict[int, int] = {}
    unmapped: dict[int, tuple[str, int, str | None]] = {}
    by_section: dict[int, Code] = {}
    last_section = None
    value_offsets: list[int] = []
    values = array("Q")
    for i, r in enumerate(raw):
        if r.section is not last_section:
            value_offsets, values = [], array("Q")
            groups.append(_Group(value_offsets, values, i))
            last_section = r.section
        value_offsets.append(r.value_file_offset)
        values.append(r.value & _U64)
        # A record mapped nowhere is refused by its problem, never by its
        # offset, which may not fit a signed 64-bit slot (S + A past 2^63).
        offsets.append(r.target_offset if r.problem is None and r.target is not None else 0)
        if r.mirror_file_offset is not None:
            mirrors[i] = r.mirror_file_offset
        sec = r.target
        if r.problem is not None or sec is None:
            codes.append(None)
            unmapped[i] = (r.section.name, r.index, None if r.zero else (r.problem or "invalid"))
            continue
        code = by_section.get(sec.index)
        if code is None:
            code = by_section[sec.index] = code_of(elf, sec)
        codes.append(code)
    return _Records(codes, offsets, groups, mirrors, unmapped)


def detail(path: str, sites: tuple[Site, ...], columns: Sequence[EditColumn]) -> Plan:
    """The plan as output shows it (``--dry-run``, ``--json``): every Site,
    and each edit of ``columns`` as an ``Edit`` naming its site."""
    mov_of: dict[int, Site] = {}
    value_of: dict[int, tuple[Site, EditKind]] = {}
    for site in sites:
        if site.state is not _PRISTINE:
            continue
        if site.mov_file_offset is not None:
            mov_of.setdefault(site.mov_file_offset, site)
        value_of[site.record.value_file_offset] = (site, EditKind.RECORD)
        if site.record.mirror_file_offset is not None:
            value_of[site.record.mirror_file_offset] = (site, EditKind.RECORD_WORD)
    edits: list[Edit] = []
    for column in columns:
        w = column.width
        old, new = bytes(column.old), bytes(column.new)
        for n, offset in enumerate(column.file_offsets):
            if w == 4:
                site, kind = mov_of[offset], EditKind.MOV
            else:
                site, kind = value_of[offset]
            edits.append(
                Edit(offset, old[n * w : (n + 1) * w], new[n * w : (n + 1) * w], site, kind)
            )
    edits.sort(key=_by_offset)
    return Plan(path, sites, tuple(edits))


def _by_offset(edit: Edit) -> int:
    return edit.file_offset
