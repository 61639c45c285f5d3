"""Immutable data shared by every layer: places, sites, records, edits, plans.

The types (Location, Record, Layout, Site, Edit, EditColumn, Plan) are
NamedTuples, not frozen dataclasses: a vmlinux.o has tens of thousands of records and a
frozen dataclass costs about four times as much to build (measured, see
benchmarks/bench_rewrite.py), which the rewrite budget of a few microseconds
per record cannot pay.

Offsets are named by what they count from: ``offset`` counts from the start of
a section, ``file_offset`` from the start of the file, ``address`` is virtual.
"""

from __future__ import annotations

import enum
from array import array
from typing import Literal, NamedTuple

# Where a linked image keeps its records (see elf/image.py).
RecordsMode = Literal["auto", "section", "mcount-loc"]


class Location(NamedTuple):
    """A place in a file, printed as ``file: func+0x4`` (or ``.text+0x10``)."""

    path: str
    section: str | None = None
    offset: int | None = None
    symbol: str | None = None
    symbol_offset: int | None = None

    @property
    def place(self) -> str:
        """The location without the file name: ``func+0x4`` (empty for a whole file).

        Built from the fields, never by splitting the text: a path may hold ": ".
        """
        if self.symbol is not None and self.symbol_offset is not None:
            delta = self.symbol_offset
            return f"{self.symbol}{'-' if delta < 0 else '+'}{abs(delta):#x}"
        if self.section is not None and self.offset is not None:
            return f"{self.section}+{self.offset:#x}"
        return self.section or ""

    def moved(self, offset: int) -> Location:
        """The same place moved to ``offset`` in the same section."""
        if self.offset is None:
            return self
        sym_off = None if self.symbol_offset is None else self.symbol_offset + offset - self.offset
        return Location(self.path, self.section, offset, self.symbol, sym_off)

    def __str__(self) -> str:
        place = self.place
        return f"{self.path}: {place}" if place else self.path


class State(enum.Enum):
    PRISTINE = "pristine"  # nop ; nop, record on the first nop
    REWRITTEN = "rewritten"  # mov x9, x30 ; nop, record on the nop (the BL slot)
    INVALID = "invalid"
    # Linked images only: a zero record.  The kernel's ftrace_process_locs()
    # skips zero entries (padding between objects' tables; the build-time
    # sort zeroes those of overridden weak functions), and so does every
    # ftpatch command: counted, reported, left alone.
    SKIPPED = "skipped"


class Problem(enum.Enum):
    """Why a site is invalid, as the classifier saw it (verify names its check by it)."""

    MISALIGNED = "misaligned"  # the record is off the 4-byte grid
    RECORD_ON_MOV = "record-on-mov"  # mov x9, x30 written, record not moved onto the slot
    RECORD_BEFORE_ENTRY = "record-before-entry"  # in the prefix, entry not nop ; nop
    NO_MOV = "no-mov"  # the record is on a slot with no mov x9, x30 before it
    NO_MOV_NOR_NOP = "no-mov-nor-nop"  # ... and the slot is no nop either
    SLOT_NOT_NOP = "slot-not-nop"  # mov x9, x30, then no nop where the record points
    # No function symbol at the record, and its words fit more than one
    # prefix length: the file's other sites decide (scan_elf), else invalid.
    PREFIX_UNKNOWN = "prefix-unknown"
    # The record names a word no caller runs: inside a function's body (dead
    # code, padding) or in the prefix before one.
    NOT_AT_ENTRY = "not-at-entry"
    OTHER = "other"  # anything else: the reason says what


class RecordKind(enum.Enum):
    """How the address of a record is stored, hence how it is moved."""

    RELA_ADDEND = "rela"  # relocatable object: R_AARCH64_ABS64 addend (AAELF64 5.7.4)
    ABSOLUTE = "absolute"  # linked image: the 64-bit word itself holds the address
    DYN_RELA = "dyn-rela"  # PIE: word is 0, address in an R_AARCH64_RELATIVE addend
    RELR = "relr"  # PIE with DT_RELR: the word holds the address, relr marks it


class Record(NamedTuple):
    """One entry of ``__patchable_function_entries`` (an mcount record).

    ``value_file_offset`` is where the 64-bit value that ``ftpatch`` edits lives
    (an ``r_addend`` field or the record word itself); ``target`` is the
    offset (ET_REL: in ``target_section``) or address (linked) it designates.
    """

    section: str  # records section name
    section_index: int  # its index in the section header table (Clang emits many)
    index: int  # type: ignore[assignment]  # entry number in the records section (shadows tuple.index)
    kind: RecordKind
    value_file_offset: int
    value: int  # the stored 64-bit value (addend or address)
    target_section: str  # text section the record points into
    target_offset: int  # offset of the record's target within target_section
    target_address: int | None = None  # virtual address (linked images only)
    mirror_file_offset: int | None = None  # a second copy of the value (PIE word)
    target_index: int | None = None  # section header index of target_section


class Layout(NamedTuple):
    """Shape of a function entry: ``[prefix nops] [bti c] nop ; nop``."""

    prefix_nops: int | None  # None: unknown (a rewritten site no longer says)
    bti: bool

    def __str__(self) -> str:
        parts = []
        if self.prefix_nops is None:
            parts.append("prefix?")
        elif self.prefix_nops:
            parts.append(f"{self.prefix_nops}-nop-prefix")
        if self.bti:
            parts.append("bti")
        return "+".join(parts) if parts else "plain"


class Site(NamedTuple):
    """A patch site: a record and the function entry it designates."""

    record: Record
    location: Location  # place of the record's target (function-relative)
    function: str | None
    layout: Layout | None
    state: State
    reason: str | None = None
    # Offsets within target_section of the two entry words (None if unknown).
    mov_offset: int | None = None  # first entry word: nop -> mov x9, x30
    slot_offset: int | None = None  # second entry word: the BL slot
    mov_file_offset: int | None = None
    slot_file_offset: int | None = None
    slot_address: int | None = None  # linked images: virtual address of the slot
    # Where callers enter the function (offset in target_section): its typed,
    # sized function symbol, or for a symbol-less site the first word after
    # its prefix (classify.Verdict.entry); None where nothing says.
    entry_offset: int | None = None
    problem: Problem | None = None  # why an invalid site is invalid
    # CALL_OPS: offset of the 8-byte ops literal the kernel stores at
    # ALIGN_DOWN(slot - 12, 8) (classify.literal_of); None otherwise.
    literal_offset: int | None = None


class EditKind(enum.Enum):
    """What an Edit changes."""

    MOV = "mov"  # the first entry word: nop -> mov x9, x30
    RECORD = "record"  # the value that moves to the BL slot (addend or word)
    RECORD_WORD = "record-word"  # a second copy of it (GNU ld's PIE word)


class Edit(NamedTuple):
    """One same-size byte change, carrying the bytes it expects to replace.

    ``kind`` is ``mov`` (the first entry word), ``record`` (the value that
    moves) or ``record-word`` (a second copy of it); messages are derived
    from the site only when something is printed.
    """

    file_offset: int
    old: bytes
    new: bytes
    site: Site
    kind: EditKind

    @property
    def location(self) -> Location:
        site = self.site
        if self.kind is EditKind.MOV and site.mov_offset is not None:
            return site.location.moved(site.mov_offset)
        r = site.record
        return Location(site.location.path, r.section, r.index * 8)

    @property
    def what(self) -> str:
        site = self.site
        if self.kind is EditKind.MOV:
            return "mov x9, x30"
        assert site.slot_offset is not None
        delta = site.slot_offset - site.record.target_offset
        slot = site.location.moved(site.slot_offset).place
        label = "record word" if self.kind is EditKind.RECORD_WORD else "record"
        return f"{label} +{delta:#x} -> {slot}"


class EditColumn(NamedTuple):
    """Same-size edits of one width, as columns: the plan contract of the writer.

    Edit ``i`` expects the ``width`` bytes ``old[i * width : (i + 1) * width]``
    at file offset ``file_offsets[i]`` and replaces them with the same slice
    of ``new``.  Offsets ascend and the edits do not overlap.  Columns, not
    objects: a vmlinux.o rewrite changes 60,000 places.
    """

    width: int
    file_offsets: array  # type: ignore[type-arg]  # "Q"
    old: bytes | array  # type: ignore[type-arg]  # bytes, or an array in file byte order
    new: bytes | array  # type: ignore[type-arg]


class Plan(NamedTuple):
    """Every site of one file and the same-size edits that rewrite them.

    (A NamedTuple like the rest: ``dataclasses`` stays off every command's
    start-up.)"""

    path: str
    sites: tuple[Site, ...]
    edits: tuple[Edit, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.edits)
