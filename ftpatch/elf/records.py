"""Finding the records of ``__patchable_function_entries`` and what they point at.

Relocatable objects (``.o``, ``ld -r`` output): each record is 8 bytes whose
value is the addend of an ``R_AARCH64_ABS64`` RELA entry against a symbol
(AAELF64 5.7.4: S + A).  A record is always mapped through its relocation,
never through the records section's ``sh_link``: GCC 11/12 with
``-ffunction-sections`` emits one records section whose ``sh_link`` names
only the first text section (GCC PR 110729).

The compilers' layout (one RELA entry per record, in record order) is
mapped in columns by ``record_columns``, for the rewrite's columnar plan and
for Sites alike; anything else record by record.
"""

from __future__ import annotations

import sys
from array import array
from typing import NamedTuple

from ftpatch.elf.reader import (
    R_AARCH64_ABS64,
    RELA_SIZE,
    SHN_ABS,
    SHN_COMMON,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    ElfFile,
    Section,
)
from ftpatch.errors import MalformedElfError

RECORDS_SECTION = "__patchable_function_entries"
RECORD_SIZE = 8

# Names for messages (AAELF64 5.7); any other type is printed by number.
_RELOC_NAMES = {
    257: "R_AARCH64_ABS64",
    258: "R_AARCH64_ABS32",
    260: "R_AARCH64_PREL64",
    261: "R_AARCH64_PREL32",
    275: "R_AARCH64_ADR_PREL_PG_HI21",
    277: "R_AARCH64_ADD_ABS_LO12_NC",
    282: "R_AARCH64_JUMP26",
    283: "R_AARCH64_CALL26",
    1027: "R_AARCH64_RELATIVE",
}


def reloc_name(r_type: int) -> str:
    return _RELOC_NAMES.get(r_type, f"relocation type {r_type}")


class RawRecord(NamedTuple):
    """A record before its site is classified.

    ``problem`` is set when the record cannot be mapped to code at all (wrong
    relocation, undefined symbol, target outside its section); the site is
    then reported invalid with that reason.
    """

    section: Section  # the records section
    index: int  # type: ignore[assignment]  # shadows tuple.index, never used
    value_file_offset: int  # where the value ftpatch edits lives (here: r_addend)
    value: int
    target: Section | None
    target_offset: int
    problem: str | None = None
    # Linked PIEs from GNU ld: the record word mirrors its RELATIVE addend,
    # so both move together.
    mirror_file_offset: int | None = None
    zero: bool = False  # linked images: a zero record, which the kernel skips


def records_sections(elf: ElfFile) -> list[Section]:
    return [
        s
        for s in elf.sections
        if s.name == RECORDS_SECTION or s.name.startswith(RECORDS_SECTION + ".")
    ]


def object_records(elf: ElfFile) -> list[RawRecord]:
    """The records of a relocatable object, in section then entry order."""
    records: list[RawRecord] = []
    for sec in records_sections(elf):
        # sh_size counts the records: it must be bytes of the file, never a
        # number a SHT_NOBITS (or SHT_NULL) header was free to make up.
        if sec.sh_type == SHT_NOBITS:
            raise MalformedElfError(elf.where(sec.name), "records section is SHT_NOBITS")
        elf.check_range(sec.sh_offset, sec.sh_size, sec.name)
        count = sec.sh_size // RECORD_SIZE
        if sec.sh_size % RECORD_SIZE:
            raise MalformedElfError(
                elf.where(sec.name), f"size {sec.sh_size:#x} is not a multiple of 8"
            )
        if count == 0:
            continue
        relocs = elf.relas_for(sec)
        if any(r.sh_type == SHT_REL for r in relocs):
            raise MalformedElfError(
                elf.where(sec.name), "records relocated by SHT_REL, expected SHT_RELA"
            )
        columns = record_columns(elf, sec, count)
        if columns is not None:
            _from_columns(elf, columns, records)
            continue
        by_offset: dict[int, tuple[int, int, int, int]] = {}
        for rela_sec in relocs:
            if rela_sec.sh_type != SHT_RELA:
                continue
            for rela in elf.iter_rela(rela_sec):
                if rela.r_offset in by_offset:
                    raise MalformedElfError(
                        elf.where(sec.name, rela.r_offset), "record relocated twice"
                    )
                by_offset[rela.r_offset] = (
                    rela.file_offset + 16,
                    rela.r_sym,
                    rela.r_type,
                    rela.r_addend,
                )
        stray = [off for off in by_offset if off % RECORD_SIZE or off // RECORD_SIZE >= count]
        if stray:
            raise MalformedElfError(
                elf.where(sec.name, min(stray)), "relocation does not fall on a record"
            )
        for index in range(count):
            entry = by_offset.get(index * RECORD_SIZE)
            if entry is None:
                records.append(
                    RawRecord(
                        sec,
                        index,
                        sec.sh_offset + index * RECORD_SIZE,
                        0,
                        None,
                        0,
                        "record has no relocation",
                    )
                )
                continue
            value_file_offset, r_sym, r_type, r_addend = entry
            records.append(_map_record(elf, sec, index, value_file_offset, r_sym, r_type, r_addend))
    return records


class RecordColumns(NamedTuple):
    """The records of one records section relocated the compilers' way: one
    SHT_RELA entry per record, in record order.  The one mapping of such
    records, for the rewrite's planner (plan.py) and for Sites
    (``object_records``) alike.

    ``targets[i]`` is the index of the code section record ``i`` points into
    and ``offsets[i]`` the offset there (S + A), or ``targets[i]`` is 0 where
    this mapping does not take the record (another relocation type, no such
    symbol, not code, or not a whole entry inside the section):
    ``object_records`` then says why, and the columnar plan leaves the file
    to the general path.
    """

    section: Section  # the records section
    rela: Section
    entries: array  # type: ignore[type-arg]  # "Q", host order: r_offset, r_info, r_addend
    targets: array  # type: ignore[type-arg]  # "I"
    offsets: array  # type: ignore[type-arg]  # "q"


def record_columns(elf: ElfFile, sec: Section, count: int) -> RecordColumns | None:
    """``count`` records of ``sec`` mapped in columns, or None when they are
    not relocated the compilers' way (then each record is mapped alone)."""
    relocs = elf.relas_for(sec)
    if len(relocs) != 1:
        return None
    rela = relocs[0]
    if rela.sh_type != SHT_RELA or rela.sh_entsize != RELA_SIZE:
        return None
    if rela.sh_size != count * RELA_SIZE:
        return None
    entries = elf.read_array("Q", rela.sh_offset, rela.sh_size)
    if elf.big_endian != (sys.byteorder == "big"):
        entries.byteswap()
    if entries[0::3] != array("Q", range(0, count * RECORD_SIZE, RECORD_SIZE)):
        return None
    symbols = elf.symbol_words  # three words per symbol, host order
    nsyms = len(symbols) // 3
    shndx_shift = elf.symbol_shifts[2]
    sections = elf.sections
    nsec = min(len(sections), SHN_LORESERVE)
    # Whole entries only (8 bytes: a pristine record's two words); a site
    # ending its section is mapped alone, which allows a rewritten record
    # on its last word.
    last = [s.sh_size - 8 if s.is_code else -1 for s in sections[:nsec]]
    targets, offsets = array("I", bytes(4 * count)), array("q", bytes(8 * count))
    for i in range(count):
        r_info = entries[3 * i + 1]
        r_sym = r_info >> 32
        if r_info & 0xFFFFFFFF != R_AARCH64_ABS64 or not 0 < r_sym < nsyms:
            continue
        shndx = (symbols[3 * r_sym] >> shndx_shift) & 0xFFFF
        if not 0 < shndx < nsec:
            continue
        addend = entries[3 * i + 2]
        # r_addend is signed (AAELF64 5.7.4: S + A).
        offset = symbols[3 * r_sym + 1] + (addend - (1 << 64) if addend >> 63 else addend)
        if 0 <= offset <= last[shndx]:
            targets[i] = shndx
            offsets[i] = offset
    return RecordColumns(sec, rela, entries, targets, offsets)


def _from_columns(elf: ElfFile, columns: RecordColumns, out: list[RawRecord]) -> None:
    """Sites' records from the columns; those the columns do not map, alone."""
    sec, entries = columns.section, columns.entries
    sections = elf.sections
    base = columns.rela.sh_offset + 16
    for i, (shndx, offset) in enumerate(zip(columns.targets, columns.offsets, strict=True)):
        addend = entries[3 * i + 2]
        r_addend = addend - (1 << 64) if addend >> 63 else addend
        if shndx:
            out.append(RawRecord(sec, i, base + 24 * i, r_addend, sections[shndx], offset))
        else:
            r_info = entries[3 * i + 1]
            out.append(
                _map_record(elf, sec, i, base + 24 * i, r_info >> 32, r_info & 0xFFFFFFFF, r_addend)
            )


def _map_record(
    elf: ElfFile,
    sec: Section,
    index: int,
    value_file_offset: int,
    r_sym: int,
    r_type: int,
    r_addend: int,
) -> RawRecord:
    def bad(problem: str, target: Section | None = None, offset: int = 0) -> RawRecord:
        return RawRecord(sec, index, value_file_offset, r_addend, target, offset, problem)

    if r_type != R_AARCH64_ABS64:
        return bad(f"record relocated by {reloc_name(r_type)}, expected R_AARCH64_ABS64")
    if not 0 < r_sym < elf.symbol_count:
        return bad(f"relocation names symbol {r_sym}, which does not exist")
    shndx = elf.symbol_shndx(r_sym)
    if shndx in (SHN_UNDEF, SHN_ABS, SHN_COMMON) or shndx >= len(elf.sections):
        name = elf.symbol(r_sym).name
        return bad(f"record relocated against {name or 'symbol'} which is not in a section")
    target = elf.sections[shndx]
    offset = elf.symbol_value(r_sym) + r_addend
    if not target.is_code:
        return bad(f"record points into {target.name}, which is not code", target, offset)
    # A whole word inside the section: a rewritten record points at the BL
    # slot, 4 bytes further than the pristine one, so asking for 8 bytes here
    # made a site that ends its section valid before the rewrite and not after.
    # The classifier reads each word through a bounds check.
    if not 0 <= offset <= target.sh_size - 4:
        return bad(
            f"record points at {target.name}+{offset:#x}, outside the section "
            f"({target.sh_size:#x} bytes)",
            target,
            offset,
        )
    return RawRecord(sec, index, value_file_offset, r_addend, target, offset)
