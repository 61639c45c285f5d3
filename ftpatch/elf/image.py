"""Records of linked images (ET_EXEC, ET_DYN): where they are, how they are stored.

The records live either in an output section named
``__patchable_function_entries`` or, kernel style, between the symbols
``__start_mcount_loc`` and ``__stop_mcount_loc`` inside another output
section (include/asm-generic/vmlinux.lds.h, ``MCOUNT_REC()``).  Each record
is a 64-bit address stored one of three ways:

- absolute: the word holds the address (static executables);
- ``R_AARCH64_RELATIVE`` in a dynamic RELA table: the addend holds the
  address and the word is zero (the arm64 kernel links with
  ``--no-apply-dynamic-relocs``) or, as GNU ld does for PIEs, a copy of it;
- RELR (``DT_RELR``): the word holds the address and the packed relocation
  table marks it.

Anything else (a symbolic dynamic relocation on a record) is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ftpatch.elf.reader import (
    PT_LOAD,
    R_AARCH64_RELATIVE,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_RELA,
    SHT_RELR,
    ElfFile,
    Section,
)
from ftpatch.elf.records import RECORD_SIZE, RECORDS_SECTION, RawRecord, reloc_name
from ftpatch.errors import MalformedElfError, NotElfError
from ftpatch.model import Location, RecordKind, RecordsMode

START_SYMBOL, STOP_SYMBOL = "__start_mcount_loc", "__stop_mcount_loc"


@dataclass(frozen=True)
class RecordsArea:
    """Where the records are: ``count`` 8-byte records from ``address``."""

    name: str  # what to call it in messages
    address: int
    file_offset: int
    count: int


def find_records_area(elf: ElfFile, mode: RecordsMode = "auto") -> RecordsArea | None:
    where = Location(elf.path)
    if mode in ("auto", "mcount-loc"):
        values = elf.symbol_values(START_SYMBOL, STOP_SYMBOL)
        start, stop = values.get(START_SYMBOL), values.get(STOP_SYMBOL)
        if start is not None and stop is not None:
            if stop < start or (stop - start) % RECORD_SIZE:
                raise MalformedElfError(
                    where,
                    f"{START_SYMBOL}..{STOP_SYMBOL} ({start:#x}..{stop:#x}) is not a "
                    "whole number of 8-byte records",
                )
            file_offset = elf.address_to_file_offset(start, stop - start)
            if file_offset is None:
                raise MalformedElfError(
                    where, f"{START_SYMBOL} {start:#x} is not in a loaded segment of the file"
                )
            return RecordsArea(START_SYMBOL, start, file_offset, (stop - start) // RECORD_SIZE)
        if mode == "mcount-loc":
            raise NotElfError(where, f"no {START_SYMBOL}/{STOP_SYMBOL} symbols")
    sections = [s for s in elf.sections if s.name == RECORDS_SECTION]
    if not sections:
        if mode == "section":
            raise NotElfError(where, f"no {RECORDS_SECTION} section")
        return None
    if len(sections) > 1:
        raise MalformedElfError(where, f"{len(sections)} {RECORDS_SECTION} output sections")
    sec = sections[0]
    if sec.sh_type == SHT_NOBITS or sec.sh_size % RECORD_SIZE:
        raise MalformedElfError(
            where, f"{RECORDS_SECTION}: size {sec.sh_size:#x} is not a multiple of 8"
        )
    return RecordsArea(RECORDS_SECTION, sec.sh_addr, sec.sh_offset, sec.sh_size // RECORD_SIZE)


def _dynamic_relocs(
    elf: ElfFile, lo: int, hi: int
) -> tuple[dict[int, tuple[int, int, int]], set[int]]:
    """Dynamic relocations whose r_offset falls in [lo, hi).

    Returns ({r_offset: (r_type, r_addend, addend file offset)}, RELR-marked addresses).
    Read from the allocated SHT_RELA / SHT_RELR sections (.rela.dyn, .relr.dyn).
    """
    rela: dict[int, tuple[int, int, int]] = {}
    relr: set[int] = set()
    for sec in elf.sections:
        if not sec.sh_flags & SHF_ALLOC:
            continue
        if sec.sh_type == SHT_RELA:
            for r in elf.iter_rela(sec):
                if lo <= r.r_offset < hi:
                    rela[r.r_offset] = (r.r_type, r.r_addend, r.file_offset + 16)
        elif sec.sh_type == SHT_RELR:
            relr |= _decode_relr(elf, sec, lo, hi)
    return rela, relr


def _decode_relr(elf: ElfFile, sec: Section, lo: int, hi: int) -> set[int]:
    """Addresses in [lo, hi) marked by a RELR table (gABI: DT_RELR encoding)."""
    marked: set[int] = set()
    entries = struct.iter_unpack(elf.endian + "Q", elf.section_bytes(sec)[: sec.sh_size // 8 * 8])
    where = 0
    for (entry,) in entries:
        if entry & 1 == 0:
            if lo <= entry < hi:
                marked.add(entry)
            where = entry + 8
            continue
        bits = entry >> 1
        for i in range(63):
            if bits >> i & 1:
                address = where + 8 * i
                if lo <= address < hi:
                    marked.add(address)
        where += 63 * 8
    return marked


def _code_section_at(elf: ElfFile, address: int, cache: list[Section]) -> Section | None:
    for sec in cache:
        if sec.sh_addr <= address < sec.sh_addr + sec.sh_size:
            return sec
    return None


def image_records(
    elf: ElfFile, mode: RecordsMode = "auto"
) -> tuple[list[RawRecord], RecordKind, RecordsArea | None]:
    area = find_records_area(elf, mode)
    if area is None:
        return [], RecordKind.ABSOLUTE, None
    lo, hi = area.address, area.address + area.count * RECORD_SIZE
    elf.check_range(area.file_offset, area.count * RECORD_SIZE, area.name)
    rela, relr = _dynamic_relocs(elf, lo, hi)
    kind = RecordKind.DYN_RELA if rela else RecordKind.RELR if relr else RecordKind.ABSOLUTE
    if rela and relr:
        raise NotElfError(
            Location(elf.path), "records relocated by both RELA and RELR: not supported"
        )
    code = [
        s
        for s in elf.sections
        if s.sh_type == SHT_PROGBITS and s.sh_flags & SHF_EXECINSTR and s.sh_flags & SHF_ALLOC
    ]
    if not code:  # no section headers: fall back to executable PT_LOAD segments
        code = [
            Section(
                -1 - i,
                f"LOAD[{i}]",
                SHT_PROGBITS,
                SHF_ALLOC | SHF_EXECINSTR,
                seg.p_vaddr,
                seg.p_offset,
                seg.p_filesz,
                0,
                0,
                4,
                0,
            )
            for i, seg in enumerate(elf.segments)
            if seg.p_type == PT_LOAD and seg.p_flags & 1
        ]
    home = elf.section_at_address(area.address)
    pseudo = Section(
        home.index if home else -1,
        area.name,
        SHT_PROGBITS,
        SHF_ALLOC,
        area.address,
        area.file_offset,
        area.count * RECORD_SIZE,
        0,
        0,
        8,
        8,
    )
    records: list[RawRecord] = []
    for index in range(area.count):
        address = area.address + index * RECORD_SIZE
        word_file_offset = area.file_offset + index * RECORD_SIZE
        word = elf.u64(word_file_offset)
        problem = None
        value_file_offset = word_file_offset
        value = word
        mirror: int | None = None
        dyn = rela.get(address)
        if dyn is not None:
            r_type, r_addend, addend_file_offset = dyn
            if r_type != R_AARCH64_RELATIVE:
                problem = f"record relocated by {reloc_name(r_type)}, expected R_AARCH64_RELATIVE"
            elif word not in (0, r_addend & 0xFFFFFFFFFFFFFFFF):
                problem = (
                    f"record word {word:#x} disagrees with its R_AARCH64_RELATIVE addend "
                    f"{r_addend:#x}"
                )
            else:
                value, value_file_offset = r_addend & 0xFFFFFFFFFFFFFFFF, addend_file_offset
                mirror = word_file_offset if word else None
        elif rela and word and address not in relr:
            problem = "record has no dynamic relocation in a relocated image"
        zero = problem is None and value == 0
        target = _code_section_at(elf, value, code) if problem is None and not zero else None
        offset = value - target.sh_addr if target is not None else 0
        if problem is None and target is None and not zero:
            # The kernel would patch it (ftrace_init_nop) and, finding no
            # code there, disable ftrace: an error, not a record to skip.
            problem = f"record points at {value:#x}, outside any code section"
        elif target is not None and offset > target.sh_size - 4:
            problem = f"record points at {value:#x}, too close to the end of {target.name}"
        records.append(
            RawRecord(
                pseudo, index, value_file_offset, value, target, offset, problem, mirror, zero
            )
        )
    return records, kind, area
