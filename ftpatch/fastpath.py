"""The rewrite of a compiler-made object in columns: no per-record objects.

A ``vmlinux.o`` has tens of thousands of records, and building a ``Site`` (a
Record, a Location, a Layout) and two ``Edit`` objects for each costs more
than the whole rewrite budget (benchmarks/bench_rewrite.py, issue 4).  This
module plans the same edits as ``scan`` + ``plan`` straight from the file's
tables, read as ``array`` columns (RELA entries, symbol words, instruction
words), and hands the writer whole patched sections.

It takes only what the compilers emit: relocatable objects whose records
sections each have one in-order RELA section of ``R_AARCH64_ABS64`` entries,
and sites in the three layouts of ``scan._Classifier._common_site`` (plain,
BTI, pristine or rewritten).  On anything else it returns None and the
general path (``scan`` + ``plan``) takes the file, with its precise
messages; ``tests/test_fastpath.py`` checks on every fixture, and on damaged
ones, that both paths write the same bytes.
"""

from __future__ import annotations

import sys
from array import array
from typing import NamedTuple

from ftpatch import arm64
from ftpatch.elf.reader import (
    ET_REL,
    R_AARCH64_ABS64,
    RELA_SIZE,
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_RELA,
    STT_FUNC,
    SYM_SIZE,
    ElfFile,
)
from ftpatch.elf.records import RECORD_SIZE, records_sections
from ftpatch.elf.writer import Buffer
from ftpatch.scan import MAX_PREFIX_WORDS

_NOP, _MOV = arm64.NOP, arm64.MOV_X9_X30
_BTI = arm64.BTI_LANDING_PADS
_U64 = 0xFFFFFFFFFFFFFFFF
_DOLLAR = 0x24  # "$x", "$d": mapping symbols (AAELF64 5.5.4), never a function


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


def _columns(data: object, file_offset: int, size: int, code: str, swap: bool) -> array:  # type: ignore[type-arg]
    col = array(code)
    with memoryview(data) as view:  # type: ignore[arg-type]  # no bytes copy in between
        col.frombytes(view[file_offset : file_offset + size])
    if swap:
        col.byteswap()
    return col


def _entry(text: array, bitmap: bytearray, k: int) -> bool | None:  # type: ignore[type-arg]
    """The site whose record is on word ``k`` (k >= 2): True pristine, False
    rewritten, None for anything but the three common layouts.

    The same judgement as ``scan._Classifier._common_site`` (bitmap[k]: a
    code symbol starts at word k).
    """
    w0, w1 = text[k], text[k + 1]
    if bitmap[k]:
        # func: nop ; nop  (not after a mov: that is a rewritten site whose
        # BL slot got a symbol, which the general path judges)
        if w0 == _NOP and w1 == _NOP and text[k - 1] != _MOV:
            return True
        return None
    if bitmap[k + 1]:
        return None
    if bitmap[k - 1]:
        wv = text[k - 1]
        if wv == _MOV and w0 == _NOP and w1 != _NOP:
            return False  # func: mov ; nop
        if wv in _BTI and w0 == _NOP and w1 == _NOP:
            return True  # func: bti c ; nop ; nop
        return None
    if bitmap[k - 2]:
        if text[k - 2] in _BTI and text[k - 1] == _MOV and w0 == _NOP and w1 != _NOP:
            return False  # func: bti c ; mov ; nop
        return None
    return _unnamed(text, bitmap, k)


def _unnamed(text: array, bitmap: bytearray, k: int) -> bool | None:  # type: ignore[type-arg]
    """A site with no code symbol on or just before its entry (46 of the
    9,427 in a Linux 6.1 vmlinux.o): judged by the words alone, as
    ``scan._Classifier._site`` and ``_by_words`` do, unless a symbol right
    after NOPs makes them the prefix of another function."""
    w0, w1 = text[k], text[k + 1]
    if text[k - 1] == _MOV and w0 == _NOP:
        return False  # mov ; nop: rewritten
    if w0 != _NOP or w1 != _NOP:
        return None
    for m in range(k + 1, k + 1 + MAX_PREFIX_WORDS):
        if m >= len(text) or m >= len(bitmap):
            return None
        if text[m - 1] != _NOP:
            return True  # nop ; nop and then code: pristine
        if bitmap[m]:
            return None  # NOPs up to a symbol: a prefix, for the general path
    return True


def _first_words(text: array, bitmap: bytearray, k: int) -> bool | None:  # type: ignore[type-arg]
    """Like ``_entry`` for a record on word 0 or 1 of its section, where
    ``_common_site`` leaves the judgement to ``scan._Classifier._site``:
    the same answers as that, for the layouts that occur there."""
    w0, w1 = text[k], text[k + 1]
    if k == 1 and text[0] == _MOV and w0 == _NOP:
        return False  # mov ; nop: rewritten, judged by the words (_by_words)
    if w0 != _NOP or w1 != _NOP:
        return None
    if bitmap[k]:
        return True  # func: nop ; nop
    if k == 1 and bitmap[0] and text[0] in _BTI:
        # func: bti c ; nop ; nop, unless _site would take the NOPs for the
        # prefix of a function that starts within MAX_PREFIX_WORDS after them.
        for m in range(1, min(len(text), len(bitmap), 2 + MAX_PREFIX_WORDS)):
            if bitmap[m]:
                return None
            if text[m] != _NOP:
                return True
    return None


def plan_object(elf: ElfFile) -> FastPlan | None:
    """The plan of a compiler-made relocatable object, or None (general path)."""
    if elf.e_type != ET_REL:
        return None
    data = elf.data
    sections = elf.sections
    nsec = min(len(sections), SHN_LORESERVE)
    host_big = sys.byteorder == "big"
    swap_elf = elf.big_endian != host_big  # ELF fields: the file's byte order
    swap_insn = host_big  # instructions: always little-endian (arm64.py)

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
        entries = _columns(data, rela.sh_offset, rela.sh_size, "Q", swap_elf)
        if entries[0::3] != array("Q", range(0, count * RECORD_SIZE, RECORD_SIZE)):
            return None
        work.append((rela, entries))
    if not work:
        return None

    # Symbols: word 0 packs st_name, st_info, st_other, st_shndx; word 1 is st_value.
    tab = elf.symtab
    if tab is None or tab.sh_entsize != SYM_SIZE or tab.sh_type == SHT_NOBITS:
        return None
    nsyms = tab.sh_size // SYM_SIZE
    symbols = _columns(data, tab.sh_offset, nsyms * SYM_SIZE, "Q", swap_elf)
    head, values, sizes = symbols[0::3], symbols[1::3], symbols[2::3]
    del symbols
    if elf.big_endian:
        name_shift, info_shift, shndx_shift = 32, 24, 0
    else:
        name_shift, info_shift, shndx_shift = 0, 32, 48
    if not 0 <= tab.sh_link < len(sections):
        return None
    strtab = sections[tab.sh_link]
    # A SHT_NULL or SHT_NOBITS header was never range-checked by the reader.
    if strtab.sh_type in (0, SHT_NOBITS) or strtab.sh_offset + strtab.sh_size > len(data):
        return None
    strings = bytes(data[strtab.sh_offset : strtab.sh_offset + strtab.sh_size])
    nstrings = len(strings)
    if not strings or strings[-1] != 0:
        # A name could run off the table's end: the general path names the
        # symbol in its error (the messages need the owners' names).
        return None

    # Per code section: its instruction words and a bitmap of the word
    # offsets where a function entry symbol starts (what scan's bisect looks up).
    code = [s.is_code and s.index < nsec for s in sections]
    words: dict[int, array] = {}  # type: ignore[type-arg]
    starts: dict[int, bytearray] = {}
    for s in sections:
        if code[s.index]:
            starts[s.index] = bytearray(s.sh_size // 4 + 1)
    for w, value, st_size in zip(head, values, sizes, strict=True):
        info = (w >> info_shift) & 0xFF
        if info & 0xF != STT_FUNC or st_size == 0:
            continue  # not a function entry (reader.ElfFile.code_symbols)
        st_name = (w >> name_shift) & 0xFFFFFFFF
        if st_name == 0 or st_name >= nstrings or strings[st_name] == _DOLLAR:
            continue
        shndx = (w >> shndx_shift) & 0xFFFF
        if shndx == SHN_XINDEX:
            return None
        bitmap = starts.get(shndx)
        if bitmap is None or value >= sections[shndx].sh_size:
            continue  # not code, or past its end: never next to a site
        if value & 3:
            return None  # an odd symbol: the general path judges its neighbours
        bitmap[value >> 2] = 1

    pristine = rewritten = 0
    moved_code: dict[int, list[int]] = {}  # section index -> word indexes to MOV
    regions: list[tuple[int, Buffer]] = []
    for rela, entries in work:
        infos, addends = entries[1::3], entries[2::3]
        moved = False
        for i, (r_info, addend) in enumerate(zip(infos, addends, strict=True)):
            if r_info & 0xFFFFFFFF != R_AARCH64_ABS64:
                return None
            r_sym = r_info >> 32
            if not 0 < r_sym < nsyms:
                return None
            shndx = (head[r_sym] >> shndx_shift) & 0xFFFF
            if not 0 < shndx < nsec or not code[shndx]:
                return None
            target = sections[shndx]
            size = target.sh_size
            # r_addend is signed (AAELF64 5.7.4: S + A).
            r = values[r_sym] + (addend - (1 << 64) if addend >> 63 else addend)
            if r & 3 or r < 0 or r + 8 > size:
                return None
            text = words.get(shndx)
            if text is None:
                text = words[shndx] = _columns(
                    data, target.sh_offset, size & ~3, "I", swap_insn
                )
            bitmap = starts[shndx]
            k = r >> 2
            if k < 2:
                state = _first_words(text, bitmap, k)
            else:
                state = _entry(text, bitmap, k)
            if state is None:
                return None
            if state:
                pristine += 1
                moved_code.setdefault(shndx, []).append(k)
                # The record moves to the BL slot, one word on: two's
                # complement, so the same for any addend.
                entries[3 * i + 2] = (addend + 4) & _U64
                moved = True
            else:
                rewritten += 1
        if moved:
            if swap_elf:
                entries.byteswap()
            regions.append((rela.sh_offset, entries))
    for shndx, ks in moved_code.items():
        text = words[shndx]
        for k in ks:
            text[k] = _MOV  # two records of one entry: one MOV, written twice
        if swap_insn:
            text.byteswap()
        regions.append((sections[shndx].sh_offset, text))
    regions.sort(key=_first)
    end = -1
    for file_offset, content in regions:
        if file_offset < end:
            return None  # sections overlap in the file: the general path refuses it
        end = file_offset + memoryview(content).nbytes
    return FastPlan(pristine + rewritten, pristine, rewritten, regions)
