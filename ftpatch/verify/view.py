"""One scanned file as the static checks read it: its code sections and
words, the address of each word (virtual in a linked image, synthetic in a
relocatable object), the section and entry of each site, the relocations
(``relocs.py``) and the branches the assembler or linker resolved into a site.

The checks themselves are in ``checks.py``, the emulation cases in
``cases.py``; ``static.py`` puts them together per site.
"""

from __future__ import annotations

from bisect import bisect_right

from ftpatch import arm64
from ftpatch.elf.reader import ElfFile, Section
from ftpatch.model import Location, Site, State
from ftpatch.scan import ScanResult
from ftpatch.verify.findings import Scheme, Trampoline
from ftpatch.verify.relocs import LINKED, RelocationIndex

# Relocatable objects have no addresses: the emulation places every code
# section at this base (same page offsets, so alignment is what the file says).
SYNTHETIC_BASE = 0x4000_0000


def describe_word(word: int, address: int, names: dict[int, str]) -> str:
    """Like ``arm64.describe``, naming a BL's target (``bl trampoline (94000123)``)."""
    if arm64.is_bl(word):
        target = arm64.bl_target(address, word)
        return f"bl {names.get(target, hex(target))} ({word:08x})"
    return arm64.describe(word)


class FileView:
    """Reading one scanned file for the static checks."""

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
        # NOP words before each function symbol, as the classifier agreed
        # them for the whole file (2 under CALL_OPS).
        self.prefix_words = result.prefix or 0

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
        if rec.target_index is not None and 0 <= rec.target_index < len(self.elf.sections):
            return self.elf.sections[rec.target_index]
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

    def locate(self, site: Site, sec: Section, offset: int) -> Location:
        f = self.function_offset(site)
        if f is not None and site.function is not None:
            return Location(self.path, sec.name, offset, site.function, offset - f)
        return Location(self.path, sec.name, offset)

    @property
    def relocs(self) -> RelocationIndex:
        if self._relocs is None:
            self._relocs = RelocationIndex(self.elf, self.linked)
        return self._relocs

    def _inner_words(self) -> dict[tuple[int, int], int]:
        """(section index, offset) of every entry word past where callers enter
        (the MOV after a BTI C, the BL slot), -> the index of its site."""
        inner: dict[tuple[int, int], int] = {}
        for i, site in enumerate(self.result.sites):
            entry = site.entry_offset
            if site.slot_offset is None or entry is None or site.state is State.INVALID:
                continue
            sec = self.site_section(site)
            if sec is None:
                continue
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

    def branches_into(self, index: int) -> list[tuple[Section, int, int]]:
        """The resolved branches (section, offset, word) into site ``index``
        past its entry (``_index_branches``), indexed on first use."""
        if self._branches is None:
            self._branches = self._index_branches()
        return self._branches.get(index, [])

    def function_at(self, sec: Section, offset: int) -> str | None:
        """The function whose code (symbol to ``st_value + st_size``) holds
        ``offset`` of ``sec``, by name."""
        entries = self.elf.function_entries.get(sec.index)
        if entries is None:
            return None
        starts, symbols, ends = entries
        at = offset + (sec.sh_addr if self.linked else 0)
        i = bisect_right(starts, at) - 1
        if i >= 0 and at < ends[i]:
            return self.elf.symbol_name(symbols[i])
        return None

    def describe(self, sec: Section, offset: int, word: int, names: dict[int, str]) -> str:
        return describe_word(word, self.address(sec, offset), names)
