"""Classify each record's function entry: pristine, rewritten or invalid.

A site is pristine when its record points at ``nop ; nop`` (after optional
prefix NOPs and BTI C), rewritten when the record points at the ``nop`` (the
BL slot) right after ``mov x9, x30``, and invalid otherwise.  The function
symbol decides where the entry is, so that a half-rewritten object (MOV
written but record not moved, or record moved but no MOV) is told apart from
both states instead of being taken for one of them.
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ftpatch import arm64
from ftpatch.elf.reader import ET_REL, ElfFile, Section, open_elf
from ftpatch.elf.records import RawRecord, object_records
from ftpatch.model import Layout, Location, Record, RecordKind, RecordsMode, Site, State

_WORD = struct.Struct("<I")  # instruction words are little-endian (arm64.py)
_NOP, _MOV = arm64.NOP, arm64.MOV_X9_X30
_BTI = arm64.BTI_LANDING_PADS
_PRISTINE, _REWRITTEN = State.PRISTINE, State.REWRITTEN
_LAYOUTS = {False: Layout(0, False), True: Layout(0, True)}
_REWRITTEN_LAYOUTS = {False: Layout(None, False), True: Layout(None, True)}

# -fpatchable-function-entry=N,M puts M NOPs before the symbol; Linux uses 2.
# A record this far before its function is still taken for a prefix.
MAX_PREFIX_WORDS = 16

# What every command says of a zero record in a linked image (State.SKIPPED).
ZERO_RECORD = "zero record, skipped as the kernel's ftrace_process_locs() does"


def zero_records_note(count: int) -> str:
    """One line for a file's zero records, said alike by rewrite and verify."""
    return f"{count} zero record{'s' if count != 1 else ''} left alone, as the kernel's " + (
        "ftrace_process_locs() skips them"
    )


@dataclass
class ScanResult:
    """The sites of one file, and the open file they came from."""

    path: str
    elf: ElfFile
    sites: tuple[Site, ...]

    @property
    def kind(self) -> str:
        return {1: "relocatable", 2: "executable", 3: "shared"}.get(self.elf.e_type, "other")

    def read(self, file_offset: int, size: int) -> bytes:
        self.elf.check_range(file_offset, size, "read")
        return bytes(self.elf.data[file_offset : file_offset + size])

    def symbol_address(self, name: str) -> int | None:
        return self.elf.symbol_values(name).get(name)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for site in self.sites:
            out[site.state.value] += 1
        return out

    def close(self) -> None:
        self.elf.close()

    def __enter__(self) -> ScanResult:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def scan_file(path: str, records_mode: RecordsMode = "auto") -> ScanResult:
    elf = open_elf(path)
    try:
        return ScanResult(path, elf, scan_elf(elf, records_mode))
    except BaseException:
        elf.close()
        raise


def scan_elf(
    elf: ElfFile, records_mode: RecordsMode = "auto", *, fast: bool = True
) -> tuple[Site, ...]:
    if elf.e_type == ET_REL:
        raw = object_records(elf)
        kind = RecordKind.RELA_ADDEND
    else:
        from ftpatch.elf.image import image_records  # linked images only

        raw, kind, _area = image_records(elf, records_mode)
    classifier = _Classifier(elf, fast)
    return tuple(classifier.site(r, kind) for r in raw)


class _Classifier:
    def __init__(self, elf: ElfFile, fast: bool = True) -> None:
        self.elf = elf
        self.fast = fast
        self.linked = elf.e_type != ET_REL
        self._symbols: dict[int, tuple[list[int], list[int]]] = {}

    def _code_symbols(self, sec: Section) -> tuple[list[int], list[int]]:
        """(offsets, symbol indexes) of the code symbols of ``sec``, sorted."""
        cached = self._symbols.get(sec.index)
        if cached is None:
            entries = self.elf.code_symbols.get(sec.index, [])
            base = sec.sh_addr if self.linked else 0
            offsets: list[int] = []
            indexes: list[int] = []
            for value, _rank, index in entries:
                offset = value - base
                if offsets and offsets[-1] == offset:
                    continue  # keep the best-ranked alias at this offset
                offsets.append(offset)
                indexes.append(index)
            cached = (offsets, indexes)
            self._symbols[sec.index] = cached
        return cached

    def site(self, raw: RawRecord, kind: RecordKind) -> Site:
        elf = self.elf
        sec = raw.target
        target_name = sec.name if sec is not None else "?"
        address = raw.target_offset + sec.sh_addr if (sec is not None and self.linked) else None
        record = Record(
            raw.section.name,
            raw.section.index,
            raw.index,
            kind,
            raw.value_file_offset,
            raw.value,
            target_name,
            raw.target_offset,
            address,
            raw.mirror_file_offset,
        )
        if raw.problem is not None or sec is None:
            where = Location(elf.path, raw.section.name, raw.index * 8)
            if raw.zero:
                return Site(record, where, None, None, State.SKIPPED, ZERO_RECORD)
            return Site(record, where, None, None, State.INVALID, raw.problem)

        if self.fast:
            site = self._common_site(record, sec, raw.target_offset)
            if site is not None:
                return site
        return self._site(record, sec, raw)

    def _common_site(self, record: Record, sec: Section, r: int) -> Site | None:
        """The three layouts of nearly every record, judged in a few word reads.

        Returns None for anything else, which ``_site`` then judges in full;
        tests check that both give the same answer on every fixture.
        """
        offsets, indexes = self._code_symbols(sec)
        size = sec.sh_size
        if r % 4 or r < 8 or r + 8 > size:
            return None
        data = self.elf.data
        base = sec.sh_offset
        unpack = _WORD.unpack_from
        i = bisect_left(offsets, r)
        n = len(offsets)
        if i < n and offsets[i] == r:
            # plain pristine: func: nop ; nop
            if (
                unpack(data, base + r)[0] == _NOP
                and unpack(data, base + r + 4)[0] == _NOP
                and unpack(data, base + r - 4)[0] != _MOV  # else rewritten (see _site)
            ):
                v, name, state, mov = r, self.elf.symbol_name(indexes[i]), _PRISTINE, r
                bti = False
            else:
                return None
        elif i and offsets[i - 1] in (r - 4, r - 8) and (i == n or offsets[i] > r + 4):
            v = offsets[i - 1]
            wv = unpack(data, base + v)[0]
            w0 = unpack(data, base + r)[0]
            w1 = unpack(data, base + r + 4)[0]
            if v == r - 4 and wv == _MOV and w0 == _NOP and w1 != _NOP:
                state, mov, bti = _REWRITTEN, r - 4, False  # func: mov ; nop
            elif v == r - 4 and wv in _BTI and w0 == _NOP and w1 == _NOP:
                state, mov, bti = _PRISTINE, r, True  # func: bti c ; nop ; nop
            elif (
                v == r - 8
                and wv in _BTI
                and unpack(data, base + r - 4)[0] == _MOV
                and w0 == _NOP
                and w1 != _NOP
            ):
                state, mov, bti = _REWRITTEN, r - 4, True  # func: bti c ; mov ; nop
            else:
                return None
            name = self.elf.symbol_name(indexes[i - 1])
        else:
            return None
        slot = mov + 4
        if state is _PRISTINE or (v >= 4 and unpack(data, base + v - 4)[0] == _NOP):
            layout = _LAYOUTS[bti] if state is _PRISTINE else _REWRITTEN_LAYOUTS[bti]
        else:
            layout = _LAYOUTS[bti]  # no NOP before the entry: no prefix, proven
        return Site(
            record,
            Location(self.elf.path, sec.name, r, name, r - v),
            name,
            layout,
            state,
            None,
            mov,
            slot,
            base + mov,
            base + slot,
            (sec.sh_addr + slot) if self.linked else None,
            v,
        )

    def _site(self, record: Record, sec: Section, raw: RawRecord) -> Site:
        elf = self.elf
        data = elf.data
        base = sec.sh_offset
        size = sec.sh_size

        def word(offset: int) -> int | None:
            if 0 <= offset <= size - 4:
                return arm64.read_word(data, base + offset)
            return None

        r = raw.target_offset
        offsets, indexes = self._code_symbols(sec)
        owner: int | None = None  # index (in offsets) of the function symbol
        # Pristine with prefix (or plain): the first symbol at or after r with
        # only NOPs between r and it.
        i = bisect_left(offsets, r)
        if i < len(offsets) and offsets[i] - r <= 4 * MAX_PREFIX_WORDS:
            if all(word(o) == arm64.NOP for o in range(r, offsets[i], 4)):
                owner = i
        if owner is None:
            j = bisect_right(offsets, r) - 1
            if j >= 0:
                owner = j
        name: str | None = None
        loc_of: Callable[[int], Location]
        v: int | None = None
        if owner is not None:
            v = offsets[owner]
            name = elf.symbol_name(indexes[owner])

            def loc_of(o: int) -> Location:
                return Location(elf.path, sec.name, o, name, o - v)
        else:

            def loc_of(o: int) -> Location:
                return Location(elf.path, sec.name, o)

        if r % 4:
            return Site(
                record,
                loc_of(r),
                name,
                None,
                State.INVALID,
                f"record is not 4-byte aligned ({sec.name}+{r:#x})",
            )

        def fo(o: int) -> int:
            return base + o

        def found(o: int, expected: str) -> str:
            w = word(o)
            got = arm64.describe(w) if w is not None else "end of section"
            return f"expected {expected}, found {got}"

        if word(r - 4) == arm64.MOV_X9_X30 and word(r) == arm64.NOP:
            # The record on the nop after mov x9, x30 is what a rewrite leaves,
            # whatever symbol a hostile or odd symtab puts at the BL slot;
            # judging it by that symbol made ftpatch refuse its own output.
            # Unless a function starts after it with only NOPs between: then
            # the mov is in that function's prefix (the CALL_OPS ops literal)
            # and callers enter past it, at NOPs never rewritten (issue 12).
            k = bisect_right(offsets, r)
            if (
                not (v is not None and (v == r - 4 or (v == r - 8 and word(v) in _BTI)))
                and k < len(offsets)
                and offsets[k] - r <= 4 * MAX_PREFIX_WORDS
                and all(word(o) == arm64.NOP for o in range(r, offsets[k], 4))
            ):
                f = offsets[k]
                fname = elf.symbol_name(indexes[k])
                e = f + 4 if word(f) in _BTI else f
                w0, w1 = word(e), word(e + 4)
                entry_words = " ; ".join(
                    arm64.describe(w) if w is not None else "end of section" for w in (w0, w1)
                )
                return Site(
                    record,
                    Location(elf.path, sec.name, r - 4, fname, r - 4 - f),
                    fname,
                    None,
                    State.INVALID,
                    f"mov x9, x30 in the prefix before {fname}, whose entry is {entry_words}: "
                    "callers never run it, and the record is not on the BL slot",
                    entry_offset=f,
                )
            return self._by_words(record, r, word, loc_of, fo, name, v)
        if v is None or v < r - 8:
            # No symbol for this entry (hand-written code, stripped local):
            # judge by the words alone.
            return self._by_words(record, r, word, loc_of, fo, name, None)

        bti = word(v) in arm64.BTI_LANDING_PADS
        e = v + 4 if bti else v  # the first entry word
        slot = e + 4
        w0, w1 = word(e), word(slot)
        sites = dict(
            mov_offset=e,
            slot_offset=slot,
            mov_file_offset=fo(e),
            slot_file_offset=fo(slot),
            slot_address=(sec.sh_addr + slot) if self.linked else None,
            entry_offset=v,
        )
        if r < v or r == e:
            # record at the pristine position: the entry itself, or prefix NOPs
            prefix = (v - r) // 4 if r < v else 0
            layout = Layout(prefix, bti)
            if w0 == arm64.NOP and w1 == arm64.NOP:
                return Site(record, loc_of(r), name, layout, State.PRISTINE, None, **sites)
            if w0 == arm64.MOV_X9_X30 and w1 == arm64.NOP:
                return Site(
                    record,
                    loc_of(e),
                    name,
                    layout,
                    State.INVALID,
                    "half rewritten: mov x9, x30 present but record not moved to the BL slot",
                    **sites,
                )
            bad = e if w0 != arm64.NOP else slot
            return Site(
                record,
                loc_of(bad),
                name,
                layout,
                State.INVALID,
                found(bad, "nop (d503201f)"),
                **sites,
            )
        layout = _rewritten_layout(word, v, bti)
        if r == slot:
            if w0 == arm64.MOV_X9_X30 and w1 == arm64.NOP:
                return Site(record, loc_of(r), name, layout, State.REWRITTEN, None, **sites)
            if w0 == arm64.NOP and w1 == arm64.NOP:
                return Site(
                    record,
                    loc_of(e),
                    name,
                    layout,
                    State.INVALID,
                    "half rewritten: record moved to the BL slot but no mov x9, x30 before it",
                    **sites,
                )
            bad = e if w0 != arm64.MOV_X9_X30 else slot
            expected = "mov x9, x30 (aa1e03e9)" if bad == e else "nop (d503201f)"
            return Site(
                record, loc_of(bad), name, layout, State.INVALID, found(bad, expected), **sites
            )
        if r == v and bti:
            return Site(
                record,
                loc_of(r),
                name,
                layout,
                State.INVALID,
                f"record points at the landing pad, {found(r, 'nop (d503201f)')}",
            )
        return Site(
            record,
            loc_of(r),
            name,
            None,
            State.INVALID,
            f"record is not at the entry of {name}: {found(r, 'nop (d503201f)')}",
        )

    def _by_words(
        self,
        record: Record,
        r: int,
        word: Callable[[int], int | None],
        loc_of: Callable[[int], Location],
        fo: Callable[[int], int],
        name: str | None,
        v: int | None,
    ) -> Site:
        """Judged by the words; ``v``: the function symbol, if it is this entry's."""
        w_prev, w0, w1 = word(r - 4), word(r), word(r + 4)
        linked = self.linked and record.target_address is not None
        sec_addr = (record.target_address - r) if linked and record.target_address else 0
        # mov x9, x30 ; nop ; nop is read as rewritten: judged by the words
        # alone, it is what a rewrite of nop ; nop ; nop leaves, and taking it
        # for pristine would move the record again on every run.
        if w_prev == arm64.MOV_X9_X30 and w0 == arm64.NOP:
            bti = word(r - 8) in _BTI
            e = r - 8 if bti else r - 4  # where callers enter, by the words
            if v not in (r - 4, r - 8):
                v = None  # a symbol elsewhere (at the slot, say) is no entry
            return Site(
                record,
                loc_of(r),
                name,
                _rewritten_layout(word, e, bti),
                State.REWRITTEN,
                None,
                r - 4,
                r,
                fo(r - 4),
                fo(r),
                (sec_addr + r) if linked else None,
                v,
            )
        if w0 == arm64.NOP and w1 == arm64.NOP:
            return Site(
                record,
                loc_of(r),
                name,
                Layout(0, w_prev in arm64.BTI_LANDING_PADS),
                State.PRISTINE,
                None,
                r,
                r + 4,
                fo(r),
                fo(r + 4),
                (sec_addr + r + 4) if linked else None,
            )
        bad = r if w0 != arm64.NOP else r + 4
        got = word(bad)
        text = arm64.describe(got) if got is not None else "end of section"
        return Site(
            record, loc_of(bad), name, None, State.INVALID, f"expected nop (d503201f), found {text}"
        )


def _rewritten_layout(word: Callable[[int], int | None], entry: int, bti: bool) -> Layout:
    """A rewritten site's layout: its record no longer says how many prefix
    NOPs there were, so only a proof counts.  No NOP right before the entry
    (or the section's start) proves there is no prefix; NOPs there may be a
    prefix or alignment padding, and the layout says ``prefix?``."""
    return Layout(None if word(entry - 4) == arm64.NOP else 0, bti)
