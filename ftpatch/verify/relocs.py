"""The relocations of one file, indexed for the static checks in array columns.

Two questions are asked of them per site: does a relocation rewrite this code
word at link time (``overlapping``), and which relocations point at this code
offset (``pointing_at``); a third per branch found in the code: is this word
relocated (``is_applied``).  A kernel object has a hundred thousand
relocations; kept as one dict entry and a formatted name each they cost 30
MiB of a 30,000-site verify.  Here each one is two array slots (its key and
the file offset of its RELA entry); its name, type and whether it is a
record are read back from the RELA entry when a finding needs them.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from ftpatch.elf.reader import RELA_SIZE, SHN_XINDEX, SHT_RELA, ElfFile, Section
from ftpatch.elf.records import RECORDS_SECTION

LINKED = -1  # the one bucket of a linked image: its dynamic relocations, by address
_Q_LIMIT = 1 << 63


def reloc_size(r_type: int) -> int:
    """Bytes a relocation writes (AAELF64 5.7): 8 for the 64-bit data ones, else 4."""
    return 8 if r_type in (257, 260, 1024, 1025, 1026, 1027, 1028, 1030, 1031) else 4


@dataclass(frozen=True)
class Ref:
    """A relocation whose S + A lands in a code section."""

    where: str  # e.g. ".rela.text entry 3" or "__patchable_function_entries[2]"
    r_type: int
    value_file_offset: int  # of its r_addend, to tell a site's own record apart
    is_record: bool


class _Column:
    """Keys (sorted, stable) and the RELA entry file offset of each."""

    __slots__ = ("entries", "keys")

    def __init__(self, signed: bool) -> None:
        self.keys = array("q" if signed else "Q")
        self.entries = array("Q")

    def add(self, key: int, entry: int) -> None:
        self.keys.append(key)
        self.entries.append(entry)

    def sort(self) -> None:
        keys = self.keys
        if all(keys[i] <= keys[i + 1] for i in range(len(keys) - 1)):
            return
        order = sorted(range(len(keys)), key=keys.__getitem__)  # stable
        self.keys = array(keys.typecode, (keys[i] for i in order))
        self.entries = array("Q", (self.entries[i] for i in order))


def _is_records(section: Section | None) -> bool:
    return section is not None and (
        section.name == RECORDS_SECTION or section.name.startswith(RECORDS_SECTION + ".")
    )


class RelocationIndex:
    """Every RELA entry of ``elf`` that applies to code, or points into it."""

    def __init__(self, elf: ElfFile, linked: bool) -> None:
        self.elf = elf
        self.linked = linked
        self._rela = struct.Struct(elf.endian + "QQq")
        relas = [s for s in elf.sections if s.sh_type == SHT_RELA and s.sh_entsize == RELA_SIZE]
        self._relas = sorted(relas, key=lambda s: s.sh_offset)
        self._rela_starts = [s.sh_offset for s in self._relas]
        applied: dict[int, _Column] = {}
        targets: dict[int, _Column] = {}
        sections = elf.sections
        # Per symbol: its code section's index (0 when it is not defined in
        # code) and st_value, read once from the symbol table's columns, so
        # that each RELA entry costs a few list lookups, not a decoded
        # Symbol (a module has tens of thousands of entries; a distribution,
        # thousands of modules).
        code_shndx, values = self._code_symbols(elf) if relas and not linked else ([], [])
        count = len(code_shndx)
        swap = elf.big_endian != (sys.byteorder == "big")
        for rela in relas:
            words = elf.read_array("Q", rela.sh_offset, rela.sh_size // RELA_SIZE * RELA_SIZE)
            if swap:
                words.byteswap()
            r_offsets = words[0::3]
            entries = array("Q", range(rela.sh_offset, rela.sh_offset + len(r_offsets) * 24, 24))
            applies_to = sections[rela.sh_info] if 0 < rela.sh_info < len(sections) else None
            if linked:
                # Dynamic relocations: r_offset is an address.
                bucket: int | None = LINKED
            else:
                bucket = applies_to.index if applies_to is not None and applies_to.is_code else None
            if bucket is not None:
                column = applied.get(bucket)
                if column is None:
                    column = applied[bucket] = _Column(signed=False)
                column.keys.extend(r_offsets)
                column.entries.extend(entries)
            if linked:
                continue
            addends = array("q", words[2::3].tobytes())
            for r_info, r_addend, entry in zip(words[1::3], addends, entries, strict=True):
                r_sym = r_info >> 32
                if not 0 < r_sym < count:
                    continue
                shndx = code_shndx[r_sym]
                if shndx < 0:  # SHN_XINDEX: resolved when used, as a bad table is an error
                    shndx = elf.symbol_shndx(r_sym)
                    if not 0 < shndx < len(sections) or not sections[shndx].is_code:
                        continue
                elif not shndx:
                    continue
                target = values[r_sym] + r_addend
                if not -_Q_LIMIT <= target < _Q_LIMIT:
                    continue  # no code offset is that far: nothing can ask for it
                column = targets.get(shndx)
                if column is None:
                    column = targets[shndx] = _Column(signed=True)
                column.add(target, entry)
        for column in (*applied.values(), *targets.values()):
            column.sort()
        self._applied = applied
        self._targets = targets

    @staticmethod
    def _code_symbols(elf: ElfFile) -> tuple[list[int], list[int]]:
        """Per symbol index: the index of the code section defining it (0 if
        none: undefined, absolute, data; -1 for SHN_XINDEX, left to the
        caller) and its st_value."""
        words = elf.symbol_words
        _name_shift, _info_shift, shndx_shift = elf.symbol_shifts
        sections = elf.sections
        code = {s.index for s in sections if s.is_code}
        shndxs = []
        for w in words[0::3]:
            shndx = (w >> shndx_shift) & 0xFFFF
            shndxs.append(-1 if shndx == SHN_XINDEX else shndx if shndx in code else 0)
        return shndxs, list(words[1::3])

    # -- reading an entry back ------------------------------------------------------

    def _entry(self, file_offset: int) -> tuple[Section, int, int, int]:
        """The RELA section holding the entry at ``file_offset``, its number
        there, its r_offset and its r_type."""
        rela = self._relas[bisect_right(self._rela_starts, file_offset) - 1]
        r_offset, r_info, _addend = self._rela.unpack_from(self.elf.data, file_offset)
        return rela, (file_offset - rela.sh_offset) // RELA_SIZE, r_offset, r_info & 0xFFFFFFFF

    def _applies_to(self, rela: Section) -> Section | None:
        sections = self.elf.sections
        return sections[rela.sh_info] if 0 < rela.sh_info < len(sections) else None

    # -- the questions -----------------------------------------------------------------

    def overlapping(self, bucket: int, start: int) -> list[tuple[str, int]]:
        """(where, r_type) of each relocation of ``bucket`` (a code section's
        index, or ``LINKED``) that writes a byte of the word at ``start``; of
        several at one r_offset, the last in the file."""
        column = self._applied.get(bucket)
        if column is None:
            return []
        keys = column.keys
        i = bisect_left(keys, start - 7)
        end = len(keys)
        if i == end or keys[i] >= start + 4:
            return []  # the common case, one bisection and no list built
        hits = []
        while i < end and keys[i] < start + 4:
            k = keys[i]
            while i + 1 < end and keys[i + 1] == k:
                i += 1  # the last at this offset, as a dict keyed by r_offset kept
            rela, n, _r_offset, r_type = self._entry(column.entries[i])
            if k + reloc_size(r_type) > start:
                hits.append((f"{rela.name} entry {n}", r_type))
            i += 1
        return hits

    def is_applied(self, bucket: int, offset: int) -> bool:
        """Whether a relocation of ``bucket`` has its r_offset at ``offset``."""
        column = self._applied.get(bucket)
        if column is None:
            return False
        i = bisect_left(column.keys, offset)
        return i < len(column.keys) and column.keys[i] == offset

    def pointing_at(self, shndx: int, target: int, *, other_than: int | None = None) -> list[Ref]:
        """The relocations whose S + A is ``target`` in code section ``shndx``,
        in file order; but the one whose r_addend is at file offset
        ``other_than`` (a site's own record, the one expected there)."""
        column = self._targets.get(shndx)
        if column is None:
            return []
        keys = column.keys
        lo = bisect_left(keys, target)
        if lo == len(keys) or keys[lo] != target:
            return []
        refs = []
        for i in range(lo, bisect_right(keys, target, lo)):
            entry = column.entries[i]
            if entry + 16 == other_than:
                continue
            rela, n, r_offset, r_type = self._entry(entry)
            applies_to = self._applies_to(rela)
            is_record = _is_records(applies_to)
            where = (
                f"{applies_to.name}[{r_offset // 8}]"
                if is_record and applies_to
                else f"{rela.name} entry {n}"
            )
            refs.append(Ref(where, r_type, entry + 16, is_record))
        return refs
