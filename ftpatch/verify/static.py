"""Static checks of patch sites, and the runtime transitions the emulation replays.

Per site: the layout ``[prefix NOPs] [BTI C] MOV X9,X30 ; NOP`` with the
record on the NOP (the BL slot); the slot 4-byte aligned and, under the 4,2
layout, the 8-byte ops literal before the symbol 8-byte aligned (Linux
CALL_OPS selects FUNCTION_ALIGNMENT_8B); no relocation rewriting the MOV or
the slot, and none but the site's own record pointing at the slot; every
runtime transition changing exactly one aligned word with both words in the
default CMODX set (``arm64.CMODX_PERMITTED``, the ARMv8-A ARM issue A.a list,
each entry's citation in ``arm64.CMODX_ENTRIES``); in a linked
image, the BL from the slot reaching the trampoline (+-128 MiB).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from ftpatch import arm64
from ftpatch.elf.reader import ElfFile, Section
from ftpatch.elf.records import reloc_name
from ftpatch.model import Location, Problem, Site, State
from ftpatch.scan import ScanResult
from ftpatch.verify.emulate import Case, Store
from ftpatch.verify.findings import (
    CHECK_BRANCH,
    CHECK_CMODX_PAIR,
    CHECK_CMODX_WORDS,
    CHECK_ENTRY_PATH,
    CHECK_MOV,
    CHECK_PREFIX_ALIGN,
    CHECK_RANGE,
    CHECK_RECORD,
    CHECK_RECORD_ON_MOV,
    CHECK_RELOCATION,
    CHECK_SCAN,
    CHECK_SLOT_ALIGN,
    CHECK_SLOT_WORD,
    Finding,
    Scheme,
    Trampoline,
)
from ftpatch.verify.relocs import LINKED, RelocationIndex

# The finding each of the classifier's reasons for an invalid site is.
_PROBLEM_CHECKS = {
    Problem.RECORD_ON_MOV: (CHECK_RECORD_ON_MOV,),
    Problem.RECORD_BEFORE_ENTRY: (CHECK_RECORD,),
    Problem.NO_MOV: (CHECK_MOV,),
    Problem.NO_MOV_NOR_NOP: (CHECK_MOV, CHECK_SLOT_WORD),
    Problem.SLOT_NOT_NOP: (CHECK_SLOT_WORD,),
    Problem.OTHER: (CHECK_SCAN,),
}

# Relocatable objects have no addresses: the emulation places every code
# section at this base (same page offsets, so alignment is what the file says).
SYNTHETIC_BASE = 0x4000_0000
MAX_PREFIX_SCAN = 4  # words looked at before a function symbol


def _describe(word: int, address: int, names: dict[int, str]) -> str:
    """Like ``arm64.describe``, naming a BL's target (``bl trampoline (94000123)``)."""
    if arm64.is_bl(word):
        target = arm64.bl_target(address, word)
        return f"bl {names.get(target, hex(target))} ({word:08x})"
    return arm64.describe(word)


def _outside(word: int) -> str:
    """``isb (d5033fdf)``, saying where a word listed only by a later text is listed."""
    entry = arm64.cmodx_entry(word)
    if entry is None:
        return arm64.describe(word)
    return f"{arm64.describe(word)}, listed only by {entry.source.cite}"


def _permitted() -> str:
    return f"{arm64.CMODX_REVISION}: {', '.join(arm64.CMODX_PERMITTED)}"


@dataclass(frozen=True)
class Transition:
    """One runtime transition: the words before and after, and the stores between."""

    name: str
    before: dict[int, int]  # offset in the section -> word
    stores: tuple[tuple[int, int, int], ...]  # (offset, old, new) in the patcher's order


@dataclass(frozen=True)
class SitePlan:
    """What the static pass hands the emulation for one site."""

    findings: tuple[Finding, ...]
    cases: tuple[Case, ...]
    entry_address: int | None
    slot_address: int | None
    stores: tuple[tuple[Store, ...], ...]  # per transition, even when not emulable
    names: tuple[str, ...]


class FileChecker:
    """Static checks over one scanned file."""

    def __init__(self, result: ScanResult, scheme: Scheme, trampoline: Trampoline | None) -> None:
        self.result = result
        self.elf: ElfFile = result.elf
        self.path = result.path
        self.scheme = scheme
        self.trampoline = trampoline
        self.linked = result.linked
        self._code = sorted((s for s in self.elf.sections if s.is_code), key=lambda s: s.sh_offset)
        self._code_starts = [s.sh_offset for s in self._code]
        self._relocs: RelocationIndex | None = None
        self._branches: dict[int, list[tuple[Section, int, int]]] | None = None
        self._tramp_names: dict[int, str] = {}
        self.prefix_words = self._infer_prefix()

    # -- reading -------------------------------------------------------------

    def section_of(self, file_offset: int) -> Section | None:
        i = bisect_right(self._code_starts, file_offset) - 1
        if i >= 0:
            s = self._code[i]
            if file_offset < s.sh_offset + s.sh_size:
                return s
        return None

    def word(self, sec: Section, offset: int) -> int | None:
        if 0 <= offset <= sec.sh_size - 4:
            return arm64.read_word(self.elf.data, sec.sh_offset + offset)
        return None

    def address(self, sec: Section, offset: int) -> int:
        """Emulation address: virtual in a linked image, synthetic in an object."""
        return (sec.sh_addr if self.linked else SYNTHETIC_BASE) + offset

    def site_section(self, site: Site) -> Section | None:
        rec = site.record
        if site.slot_file_offset is not None and site.slot_offset is not None:
            sec = self.section_of(site.slot_file_offset)
            if sec is not None:
                return sec
        named = [s for s in self.elf.sections if s.name == rec.target_section and s.is_code]
        for s in named:
            if 0 <= rec.target_offset < s.sh_size:
                return s
        return named[0] if named else None

    @staticmethod
    def function_offset(site: Site) -> int | None:
        loc = site.location
        if site.function is None or loc.offset is None or loc.symbol_offset is None:
            return None
        return loc.offset - loc.symbol_offset

    def _locate(self, site: Site, sec: Section, offset: int) -> Location:
        f = self.function_offset(site)
        if f is not None and site.function is not None:
            return Location(self.path, sec.name, offset, site.function, offset - f)
        return Location(self.path, sec.name, offset)

    def _infer_prefix(self) -> int:
        """NOP words before each function symbol: 2 under -fpatchable-function-entry=4,2.

        A rewritten record no longer says (it points at the slot), so the
        file's prefix is the least number of NOPs found before any of its
        entries; pristine sites say it outright.
        """
        least: int | None = None
        for site in self.result.sites:
            if site.layout is not None and site.layout.prefix_nops is not None:
                n = site.layout.prefix_nops
            else:
                f = site.entry_offset
                sec = self.site_section(site)
                if f is None or sec is None or site.state is State.INVALID:
                    continue
                n = 0
                while n < MAX_PREFIX_SCAN and self.word(sec, f - 4 * (n + 1)) == arm64.NOP:
                    n += 1
            least = n if least is None else min(least, n)
            if least == 0:
                break
        return least or 0

    # -- relocations -------------------------------------------------------------

    @property
    def relocs(self) -> RelocationIndex:
        if self._relocs is None:
            self._relocs = RelocationIndex(self.elf, self.linked)
        return self._relocs

    def _relocation_findings(
        self, site: Site, index: int, sec: Section, mov: int | None, slot: int
    ) -> Iterator[Finding]:
        relocs = self.relocs
        words = [("BL slot", slot)] + ([("mov x9, x30", mov)] if mov is not None else [])
        bucket = LINKED if self.linked else sec.index
        for what, off in words:
            start = self.address(sec, off) if self.linked else off
            for where, r_type in relocs.overlapping(bucket, start):
                yield Finding(
                    CHECK_RELOCATION,
                    self._locate(site, sec, off),
                    f"{reloc_name(r_type)} ({where}) rewrites the {what} at link time",
                    site=index,
                )
        if self.linked:
            return
        own = site.record.value_file_offset
        for ref in relocs.pointing_at(sec.index, slot, other_than=own):
            what = "a second record" if ref.is_record else "code"
            yield Finding(
                CHECK_RELOCATION,
                self._locate(site, sec, slot),
                f"{what} ({ref.where}, {reloc_name(ref.r_type)}) points at the BL "
                "slot: it would enter the function past the mov x9, x30",
                site=index,
            )
        if mov is not None:
            for ref in relocs.pointing_at(sec.index, mov, other_than=own):
                if ref.is_record:
                    yield Finding(
                        CHECK_RELOCATION,
                        self._locate(site, sec, mov),
                        f"a second record ({ref.where}) points at the mov x9, x30: the "
                        "runtime would patch it",
                        site=index,
                    )

    # -- branches the assembler or linker resolved ------------------------------------

    def _entry(self, site: Site, sec: Section, mov: int) -> int:
        """Where callers enter the site whose MOV word is at ``mov``: its
        function's symbol, or where there is none (a local function stripped
        of its symbol), the words: the BTI C before the MOV, or the MOV."""
        if site.entry_offset is not None:
            return site.entry_offset
        return mov - 4 if self.word(sec, mov - 4) in arm64.BTI_LANDING_PADS else mov

    def _inner_words(self) -> dict[tuple[int, int], int]:
        """(section index, offset) of every entry word past where callers enter
        (the MOV after a BTI C, the BL slot), -> the index of its site."""
        inner: dict[tuple[int, int], int] = {}
        for i, site in enumerate(self.result.sites):
            if site.slot_offset is None or site.slot_file_offset is None:
                continue
            sec = self.site_section(site)
            if sec is None:
                continue
            entry = self._entry(site, sec, site.slot_offset - 4)
            for o in range(entry + 4, site.slot_offset + 4, 4):
                inner[(sec.index, o)] = i
        return inner

    def _index_branches(self) -> dict[int, list[tuple[Section, int, int]]]:
        """Site index -> the immediate branches (section, offset, word) into
        one of its inner words, found in the code itself: B, BL, B.cond,
        CBZ/CBNZ, TBZ/TBNZ that no relocation rewrites (the assembler
        resolved it, or the linker did in an image).  A branch to the entry
        itself is an ordinary call."""
        import re

        relocs = self.relocs
        inner = self._inner_words()
        hits: dict[int, list[tuple[Section, int, int]]] = {}
        if not inner:
            return hits
        wanted = {o for _s, o in inner} if not self.linked else None
        by_address = {self.address(self.elf.sections[s], o): i for (s, o), i in inner.items()}
        pattern = re.compile(b"[" + re.escape(arm64.BRANCH_TOP_BYTES) + b"]")
        data = self.elf.data
        for sec in self._code:
            bucket = LINKED if self.linked else sec.index
            base = self.address(sec, 0) if self.linked else 0
            start, end = sec.sh_offset, sec.sh_offset + sec.sh_size
            for m in pattern.finditer(data, start + 3, end):
                top = m.start()
                if (top - start) & 3 != 3:
                    continue  # not a word's top byte
                offset = top - 3 - start
                word = arm64.read_word(data, top - 3)
                target = arm64.branch_target(offset, word)
                if target is None:
                    continue
                if self.linked:
                    site = by_address.get(base + target)
                    if site is None or relocs.is_applied(bucket, base + offset):
                        continue
                else:
                    if wanted is not None and target not in wanted:
                        continue
                    site = inner.get((sec.index, target))
                    if site is None or relocs.is_applied(bucket, offset):
                        continue
                hits.setdefault(site, []).append((sec, offset, word))
        return hits

    def _branch_findings(self, site: Site, index: int, sec: Section) -> Iterator[Finding]:
        if self._branches is None:
            self._branches = self._index_branches()
        for src, offset, word in self._branches.get(index, ()):
            target = arm64.branch_target(self.address(src, offset), word)
            assert target is not None
            into = target - self.address(sec, 0)
            what = "the BL slot" if into == site.slot_offset else "the mov x9, x30"
            yield Finding(
                CHECK_BRANCH,
                self._locate(site, sec, into),
                f"{arm64.describe(word)} at {src.name}+{offset:#x} branches to {what} of "
                f"{site.function or 'this entry'}, past the entry callers must take: that "
                "path runs without the mov x9, x30",
                site=index,
            )

    # -- one site ------------------------------------------------------------------

    def check_site(self, site: Site, index: int) -> SitePlan:
        if site.state is State.SKIPPED:  # a zero record: the kernel skips it too
            return SitePlan((), (), None, None, (), ())  # one note per file (core.py)
        sec = self.site_section(site)
        if sec is None:
            finding = Finding(
                CHECK_SCAN, site.location, site.reason or "no code section", site=index
            )
            return SitePlan((finding,), (), None, None, (), ())
        findings: list[Finding] = []
        r = site.record.target_offset
        f = site.entry_offset  # where callers enter, from the function's symbol
        findings.extend(self._layout_findings(site, index, sec, r))
        if r % 4:
            return SitePlan(tuple(findings), (), None, None, (), ())
        if self.scheme is Scheme.SINGLE_SLOT:
            patched = r  # the kernel patches the word its record names, unchanged
            slot = site.slot_offset if site.slot_offset is not None else r
            mov: int | None = slot - 4
        else:
            if site.mov_offset is None or site.slot_offset is None:
                return SitePlan(tuple(findings), (), None, None, (), ())
            patched, slot, mov = site.slot_offset, site.slot_offset, site.mov_offset
        findings.extend(self._alignment_findings(site, index, sec, f, patched))
        findings.extend(self._relocation_findings(site, index, sec, mov, slot))
        findings.extend(self._branch_findings(site, index, sec))

        slot_address = self.address(sec, patched)
        known = self.trampoline
        if self.linked and known is not None and known.address is not None:
            distance = known.address - slot_address
            if not -arm64.BL_RANGE <= distance < arm64.BL_RANGE or distance % 4:
                findings.append(
                    Finding(
                        CHECK_RANGE,
                        self._locate(site, sec, patched),
                        f"bl from the slot at {slot_address:#x} cannot reach {known} "
                        f"(distance {distance:+#x}, range +-128 MiB): needs a PLT or veneer",
                        site=index,
                    )
                )
        # The words the transitions store over must be code of this section
        # (a hostile record may name the last bytes of its section).
        for o in (patched,) if self.scheme is Scheme.SINGLE_SLOT else (patched, mov):
            if o is None or self.word(sec, o) is None:
                findings.append(
                    Finding(
                        CHECK_RECORD,
                        self._locate(site, sec, r),
                        f"the word to patch at {sec.name}+{o or 0:#x} is not inside "
                        f"{sec.name} ({sec.sh_size:#x} bytes)",
                        site=index,
                    )
                )
                return SitePlan(tuple(findings), (), None, None, (), ())
        t1, t2 = self._trampolines(slot_address)
        first = (
            known.name if known is not None and known.name and known.address == t1 else "trampoline"
        )
        self._tramp_names = {t1: first, t2: "trampoline2"}
        transitions = self._transitions(sec, patched, mov, t1, t2)
        for t in transitions:
            findings.extend(self._cmodx_findings(site, index, sec, t))

        entry = self._entry(site, sec, mov) if mov is not None else None
        stores = tuple(
            tuple(
                Store(slot_address if o == patched else self.address(sec, o), old, new)
                for o, old, new in t.stores
            )
            for t in transitions
        )
        names = tuple(t.name for t in transitions)
        if entry is None or entry < 0 or self.address(sec, entry) % 4:
            # No instruction starts off the 4-byte grid (the slot alignment
            # check reports a section placed there).
            return SitePlan(tuple(findings), (), None, slot_address, stores, names)
        path_slot = entry + (8 if self.word(sec, entry) in arm64.BTI_LANDING_PADS else 4)
        findings.extend(self._entry_path_findings(site, index, sec, entry, path_slot, patched))
        start = min(entry, patched, slot)
        body = max(slot, patched, path_slot) + 4
        if self.word(sec, body - 4) is None or start < 0:
            return SitePlan(tuple(findings), (), None, slot_address, stores, names)
        file_words = [self.word(sec, o) for o in range(start, body, 4)]
        cases = []
        for t, t_stores in zip(transitions, stores, strict=True):
            words = tuple(t.before.get(start + 4 * i, w or 0) for i, w in enumerate(file_words))
            cases.append(
                Case(
                    self.address(sec, start),
                    words,
                    self.address(sec, entry),
                    t_stores,
                    (t1, t2),
                    t.name,
                    ordered=True,  # the kernel patches word by word, maintained
                )
            )
        return SitePlan(
            tuple(findings), tuple(cases), self.address(sec, entry), slot_address, stores, names
        )

    def _entry_path_findings(
        self, site: Site, index: int, sec: Section, entry: int, path_slot: int, patched: int
    ) -> Iterator[Finding]:
        """The words callers run, ``[BTI C] MOV X9,X30 ; slot``, must hold the
        patched word (and, with the single-slot scheme, be the slot after a
        MOV): a record naming any other word would have the runtime patch
        code no caller executes (issue 12: a MOV in the CALL_OPS prefix)."""
        if entry <= patched <= path_slot and (
            self.scheme is Scheme.TWO_SLOT
            or site.state is not State.REWRITTEN
            or (patched == path_slot and self.word(sec, path_slot - 4) == arm64.MOV_X9_X30)
        ):
            return
        where = self._locate(site, sec, patched)
        path = "; ".join(
            self._word(sec, o, self.word(sec, o) or 0) for o in range(entry, path_slot + 4, 4)
        )
        who = site.function or f"{sec.name}+{entry:#x}"
        yield Finding(
            CHECK_ENTRY_PATH,
            where,
            f"callers enter {who} at {sec.name}+{entry:#x} and run {path}; the word "
            f"the runtime would patch, {sec.name}+{patched:#x}, is not the BL slot on that path",
            site=index,
        )

    def _layout_findings(self, site: Site, index: int, sec: Section, r: int) -> Iterator[Finding]:
        """The layout ``[prefix] [BTI C] MOV X9,X30 ; NOP`` with the record on the NOP.

        The classifier has judged the site (``site.state``, ``site.problem``);
        this only names the finding each judgement is.
        """
        if site.state is State.REWRITTEN:
            return
        if site.state is State.PRISTINE:
            if self.scheme is Scheme.TWO_SLOT:
                return  # the runtime of this scheme writes the MOV itself
            at = site.mov_offset if site.mov_offset is not None else r
            yield Finding(
                CHECK_MOV,
                self._locate(site, sec, at),
                "site is not rewritten: no mov x9, x30 before the BL slot, so the "
                "runtime would have to write it (nop -> mov x9, x30 is outside the "
                f"permitted set, {arm64.CMODX_REVISION})",
                site=index,
            )
            return
        problem = site.problem or Problem.OTHER
        if problem is Problem.MISALIGNED:
            yield Finding(
                CHECK_SLOT_ALIGN,
                self._locate(site, sec, r),
                f"record points at {sec.name}+{r:#x}, which is not 4-byte aligned: "
                "the BL slot must be one aligned 32-bit word",
                site=index,
            )
            return
        for check in _PROBLEM_CHECKS[problem]:
            message = site.reason or "invalid site"
            if check == CHECK_RECORD_ON_MOV:
                message = (
                    f"record points at the mov x9, x30, not at the BL slot "
                    f"{sec.name}+{r + 4:#x}: the runtime would overwrite the mov"
                )
            elif check == CHECK_RECORD:
                message = f"record points before the entry ({message})"
            elif check == CHECK_SLOT_WORD and problem is Problem.NO_MOV_NOR_NOP:
                slot = site.slot_offset if site.slot_offset is not None else r
                word = self.word(sec, slot)
                message = f"BL slot holds {arm64.describe(word or 0)}, expected nop (d503201f)"
            yield Finding(check, site.location, message, site=index)

    def _alignment_findings(
        self, site: Site, index: int, sec: Section, f: int | None, patched: int
    ) -> Iterator[Finding]:
        if not self.linked and sec.sh_addralign < 4:
            yield Finding(
                CHECK_SLOT_ALIGN,
                self._locate(site, sec, patched),
                f"{sec.name} has sh_addralign {sec.sh_addralign}: the linker may "
                "place the BL slot off a 4-byte boundary",
                site=index,
            )
        if self.linked and self.address(sec, patched) % 4:
            yield Finding(
                CHECK_SLOT_ALIGN,
                self._locate(site, sec, patched),
                f"BL slot at {self.address(sec, patched):#x} is not 4-byte aligned",
                site=index,
            )
        prefix = self.prefix_words
        if site.layout is not None and site.layout.prefix_nops is not None:
            prefix = site.layout.prefix_nops
        if prefix >= 2 and f is not None:
            literal = f - 8
            where = self.address(sec, literal) if self.linked else literal
            if where % 8:
                yield Finding(
                    CHECK_PREFIX_ALIGN,
                    self._locate(site, sec, literal),
                    f"the 8-byte ops literal before {site.function} is at "
                    f"{where:#x}, not 8-byte aligned (the kernel's CALL_OPS needs it; "
                    "compile with -falign-functions=8)",
                    site=index,
                )
            elif not self.linked and sec.sh_addralign < 8:
                yield Finding(
                    CHECK_PREFIX_ALIGN,
                    self._locate(site, sec, literal),
                    f"{sec.name} has sh_addralign {sec.sh_addralign} < 8: the ops "
                    f"literal before {site.function} may end up misaligned",
                    site=index,
                )

    def _trampolines(self, slot_address: int) -> tuple[int, int]:
        """Trampoline addresses for the emulation: the real one when reachable."""
        t = self.trampoline
        if self.linked and t is not None and t.address is not None and t.address % 4 == 0:
            real = t.address
            if -arm64.BL_RANGE <= real - slot_address < arm64.BL_RANGE:
                for second in (real + 0x1000, real - 0x1000):
                    if -arm64.BL_RANGE <= second - slot_address < arm64.BL_RANGE and (
                        abs(second - slot_address) > 0x2000
                    ):
                        return real, second
        block = slot_address & ~0xFFFFF
        t1 = block - 0x100000 if block >= 0x200000 else block + 0x200000
        return t1, t1 + 0x1000

    def _transitions(
        self, sec: Section, patched: int, mov: int | None, t1: int, t2: int
    ) -> tuple[Transition, ...]:
        bl1 = arm64.encode_bl(self.address(sec, patched), t1)
        bl2 = arm64.encode_bl(self.address(sec, patched), t2)
        w_slot = self.word(sec, patched)
        assert w_slot is not None
        if w_slot == arm64.NOP:
            w_slot = arm64.NOP  # one int for every site's NOP (the report keeps them)
        if self.scheme is Scheme.SINGLE_SLOT:
            return (
                Transition("enable", {}, ((patched, w_slot, bl1),)),
                Transition("disable", {patched: bl1}, ((patched, bl1, w_slot),)),
                Transition("retarget", {patched: bl1}, ((patched, bl1, bl2),)),
            )
        assert mov is not None
        w_mov = self.word(sec, mov)
        assert w_mov is not None

        def changed(*stores: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
            return tuple(s for s in stores if s[1] != s[2])

        enabled = {mov: arm64.MOV_X9_X30, patched: bl1}
        return (
            Transition(
                "enable", {}, changed((mov, w_mov, arm64.MOV_X9_X30), (patched, w_slot, bl1))
            ),
            Transition(
                "disable", enabled, changed((patched, bl1, w_slot), (mov, arm64.MOV_X9_X30, w_mov))
            ),
            Transition("retarget", enabled, changed((patched, bl1, bl2))),
        )

    def _word(self, sec: Section, offset: int, word: int) -> str:
        return _describe(word, self.address(sec, offset), self._tramp_names)

    def _cmodx_findings(
        self, site: Site, index: int, sec: Section, t: Transition
    ) -> Iterator[Finding]:
        if len(t.stores) > 1:
            words = "; ".join(
                f"{sec.name}+{o:#x} {self._word(sec, o, old)} -> {self._word(sec, o, new)}"
                for o, old, new in t.stores
            )
            yield Finding(
                CHECK_CMODX_WORDS,
                self._locate(site, sec, t.stores[0][0]),
                f"{t.name} changes {len(t.stores)} words ({words}): nothing orders "
                "another CPU's fetches of different words",
                site=index,
            )
        for o, old, new in t.stores:
            if not arm64.cmodx_permitted(old, new):
                outside = [_outside(w) for w in (old, new) if not arm64.cmodx_permitted(w, w)]
                yield Finding(
                    CHECK_CMODX_PAIR,
                    self._locate(site, sec, o),
                    f"{t.name}: {self._word(sec, o, old)} -> {self._word(sec, o, new)} "
                    "is not "
                    f"a permitted concurrent modification ({', '.join(outside)} "
                    f"outside the set of {_permitted()})",
                    site=index,
                )
