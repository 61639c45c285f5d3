"""The independent records checker: every ftrace record of a linked kernel
image or a module, read with pyelftools and binutils, never with ftpatch.

A record is an address the kernel's ftrace keeps per function.  In a linked
image (vmlinux) the records are the 8-byte words between __start_mcount_loc
and __stop_mcount_loc, or in a PIE (RELOCATABLE, KASLR) the addends of
their R_AARCH64_RELATIVE relocations; a zero word is a record that
scripts/sorttable dropped (an overridden weak function), which the kernel
skips.  In a module (ET_REL) they are the R_AARCH64_ABS64 relocations of
__patchable_function_entries, a section symbol plus an addend.

Each non-zero record is judged by its function (the typed, sized function
symbol whose entry the layout implies: habit 14 of the style guide) and by
the words there:

  plain (-fpatchable-function-entry=2)
    pristine   record = entry [+4 past BTI C]: NOP ; NOP
    rewritten  record = the BL slot: MOV X9,X30 at record-4 (the entry
               [+4 past BTI C]), NOP at record
  CALL_OPS (-fpatchable-function-entry=4,2: two prefix NOPs hold the ops literal)
    pristine   record = the literal, 8-aligned: NOP ; NOP, then entry
               [BTI C] NOP ; NOP
    rewritten  record = the BL slot; the literal is the 8 bytes at
               ALIGN_DOWN(record - 12, 8), as ftrace_rec_set_ops() computes
               it, and must be this function's own two prefix NOPs: the
               entry 8 bytes after it, at most a BTI C between it and the
               MOV X9,X30 at record-4, NOP at record

A record whose entry has no function symbol (the kernel keeps an overridden
weak function's code without its symbol) is judged by its words alone and
counted under ``no_symbol``, provided its entry lies inside no other
function.  With ``objdump``, binutils' disassembly must read every word the
checker judged as the same instruction.
"""

from __future__ import annotations

import bisect
import json
import re
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

NOP = 0xD503201F  # nop
MOV_X9_X30 = 0xAA1E03E9  # mov x9, x30 (orr x9, xzr, x30)
BTI_C = 0xD503245F  # bti c
BTI = {BTI_C, 0xD503249F, 0xD50324DF}  # bti c, bti j, bti jc
R_AARCH64_ABS64 = 257  # AAELF64 5.7.9
R_AARCH64_RELATIVE = 1027  # AAELF64 5.7.13
SHF_ALLOC = 0x2
# In a module, an "address" is the section index above this bit and the
# offset in the section below it: 8-byte alignment is kept, sections never meet.
SECTION_SHIFT = 40
# What binutils objdump prints for each word the checker judges.
MNEMONIC = {
    NOP: "nop",
    MOV_X9_X30: "mov x9, x30",
    BTI_C: "bti c",
    0xD503249F: "bti j",
    0xD50324DF: "bti jc",
}


class State(Enum):
    PRISTINE = "pristine"
    REWRITTEN = "rewritten"
    INVALID = "invalid"


@dataclass(frozen=True)
class Function:
    entry: int
    size: int
    name: str


@dataclass(frozen=True)
class Judged:
    """One non-zero record: its state, its function and the words that decided."""

    index: int
    address: int
    state: State
    function: str | None  # None: no function symbol at its entry
    bti: bool
    words: tuple[tuple[int, int], ...]  # (address, word) read to decide
    problem: str = ""


class Code:
    """An ELF file as the checker reads it: records, functions, words."""

    def __init__(self, path: str | Path) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.relocation import RelocationSection
        from elftools.elf.sections import SymbolTableSection

        self.path = str(path)
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.relocatable = elf["e_type"] == "ET_REL"
            symtab = elf.get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise ValueError(f"{path}: no .symtab")
            symbols = list(symtab.iter_symbols())
            # Code by address: (start, bytes) for every allocated section with contents.
            self._chunks: list[tuple[int, bytes]] = []
            for i, sec in enumerate(elf.iter_sections()):
                if sec["sh_flags"] & SHF_ALLOC and sec["sh_type"] != "SHT_NOBITS":
                    base = i << SECTION_SHIFT if self.relocatable else sec["sh_addr"]
                    self._chunks.append((base, sec.data()))
            self._chunks.sort(key=lambda c: c[0])
            self._starts = [c[0] for c in self._chunks]
            # One function per entry: of aliases, the largest (its code holds the others').
            by_entry: dict[int, Function] = {}
            for s in symbols:
                if (
                    s["st_info"]["type"] == "STT_FUNC"
                    and s["st_size"] > 0
                    and isinstance(s["st_shndx"], int)
                ):
                    fn = Function(self._address(s["st_shndx"], s["st_value"]), s["st_size"], s.name)
                    if fn.entry not in by_entry or fn.size > by_entry[fn.entry].size:
                        by_entry[fn.entry] = fn
            self._by_entry = by_entry
            self._entries = sorted(by_entry)
            relas = [
                s for s in elf.iter_sections() if isinstance(s, RelocationSection) and s.is_RELA()
            ]
            if self.relocatable:
                self.records = self._module_records(elf, symbols, relas)
            else:
                self.records = self._image_records(elf, symbols, relas)

    def _address(self, shndx: int, value: int) -> int:
        return (shndx << SECTION_SHIFT) + value if self.relocatable else value

    def _image_records(self, elf: Any, symbols: list[Any], relas: list[Any]) -> list[int]:
        value = {s.name: s["st_value"] for s in symbols if s.name}
        start, stop = value["__start_mcount_loc"], value["__stop_mcount_loc"]
        data = self.bytes_at(start, stop - start)
        order: Literal["little", "big"] = "little" if elf.little_endian else "big"
        words = [int.from_bytes(data[i : i + 8], order) for i in range(0, len(data), 8)]
        # A PIE's record is the addend of its R_AARCH64_RELATIVE (the word may be 0).
        for sec in relas:
            for rel in sec.iter_relocations():
                offset = rel["r_offset"]
                if rel["r_info_type"] == R_AARCH64_RELATIVE and start <= offset < stop:
                    # r_addend is an Sxword: as an address, modulo 2^64.
                    words[(offset - start) // 8] = rel["r_addend"] % (1 << 64)
        return words

    def _module_records(self, elf: Any, symbols: list[Any], relas: list[Any]) -> list[int]:
        records: list[tuple[int, int]] = []  # (place in the records sections, address)
        for sec in relas:
            if elf.get_section(sec["sh_info"]).name != "__patchable_function_entries":
                continue
            for rel in sec.iter_relocations():
                if rel["r_info_type"] != R_AARCH64_ABS64:
                    raise ValueError(f"{self.path}: record relocation type {rel['r_info_type']}")
                sym = symbols[rel["r_info_sym"]]
                address = self._address(sym["st_shndx"], sym["st_value"] + rel["r_addend"])
                records.append(((sec["sh_info"] << SECTION_SHIFT) + rel["r_offset"], address))
        return [address for _, address in sorted(records)]

    def bytes_at(self, address: int, size: int) -> bytes:
        k = bisect.bisect_right(self._starts, address) - 1
        if k >= 0:
            base, data = self._chunks[k]
            if address + size <= base + len(data):
                return data[address - base : address - base + size]
        raise ValueError(f"{self.path}: {address:#x} (+{size}) is in no allocated section")

    def word(self, address: int) -> int | None:
        """The instruction word at ``address`` (always little-endian), None outside the code."""
        try:
            return int.from_bytes(self.bytes_at(address, 4), "little")
        except ValueError:
            return None

    def function_at(self, address: int) -> Function | None:
        """The sized function symbol whose code holds ``address``."""
        k = bisect.bisect_right(self._entries, address) - 1
        if k < 0:
            return None
        fn = self._by_entry[self._entries[k]]
        return fn if address < fn.entry + fn.size else None

    def function_entered_at(self, entry: int) -> Function | None:
        return self._by_entry.get(entry)

    def place(self, address: int) -> str:
        """``name+0xoff`` for an address in a function, else the address."""
        fn = self.function_at(address)
        where = f"{fn.name}+{address - fn.entry:#x}" if fn else "no function"
        if self.relocatable:
            offset = address & ((1 << SECTION_SHIFT) - 1)
            return f"section {address >> SECTION_SHIFT}+{offset:#x} ({where})"
        return f"{address:#x} ({where})"


def _words(code: Code, *addresses: int) -> tuple[tuple[int, int], ...]:
    return tuple((a, w) for a in addresses if (w := code.word(a)) is not None)


def _fmt(words: tuple[tuple[int, int], ...]) -> str:
    return " ".join(f"{w:08x}" for _, w in words)


def judge_record(code: Code, index: int, record: int, call_ops: bool) -> Judged:
    """The one decision of what a non-zero record is (the module's docstring)."""
    w = code.word
    if w(record - 4) == MOV_X9_X30 and w(record) == NOP:
        mov = record - 4
        if call_ops:
            # ftrace_rec_set_ops(): the literal at ALIGN_DOWN(rec->ip - 12, 8).
            literal = (record - 12) & ~7
            entry = literal + 8
            words = _words(code, literal, literal + 4, *range(entry, record + 4, 4))
            if (w(literal), w(literal + 4)) != (NOP, NOP):
                problem = f"ops literal at {code.place(literal)} is {_fmt(words[:2])}, not two NOPs"
                return Judged(index, record, State.INVALID, None, False, words, problem)
            between = list(range(entry, mov, 4))
            bti = between == [entry] and w(entry) == BTI_C
            if between and not bti:
                problem = f"between the literal and the MOV: {_fmt(words[2:-2])}, at most a BTI C"
                return Judged(index, record, State.INVALID, None, False, words, problem)
        else:
            bti = w(mov - 4) in BTI and code.function_entered_at(mov) is None
            entry = mov - 4 if bti else mov
            words = _words(code, *range(entry, record + 4, 4))
        return _owned(code, index, record, State.REWRITTEN, entry, bti, words)
    if call_ops:
        entry = record + 8
        bti = w(entry) in BTI
        body = entry + 4 if bti else entry
        words = _words(code, record, record + 4, *range(entry, body + 8, 4))
        if record % 8 == 0 and all(w(a) == NOP for a in (record, record + 4, body, body + 4)):
            return _owned(code, index, record, State.PRISTINE, entry, bti, words)
    elif w(record) == NOP and w(record + 4) == NOP:
        bti = w(record - 4) in BTI and code.function_entered_at(record) is None
        entry = record - 4 if bti else record
        words = _words(code, *range(entry, record + 8, 4))
        return _owned(code, index, record, State.PRISTINE, entry, bti, words)
    else:
        words = _words(code, record - 4, record, record + 4)
    problem = f"neither pristine nor rewritten: {_fmt(words)}"
    return Judged(index, record, State.INVALID, None, False, words, problem)


def _owned(
    code: Code, index: int, record: int, state: State, entry: int, bti: bool, words: Any
) -> Judged:
    """The layout holds: now the function whose entry it implies."""
    fn = code.function_entered_at(entry)
    if fn is not None:
        return Judged(index, record, state, fn.name, bti, words)
    other = code.function_at(entry)
    if other is not None:
        problem = f"entry {code.place(entry)} is inside another function"
        return Judged(index, record, State.INVALID, None, bti, words, problem)
    return Judged(index, record, state, None, bti, words)


@dataclass
class Report:
    image: str
    expect: str
    call_ops: bool
    records: int = 0  # non-zero records
    zero_words: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    no_symbol: int = 0
    bti: int = 0
    objdump_agrees: int | None = None
    scan_lists_the_same_records: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.counts.get(self.expect, 0) == self.records
            and self.objdump_agrees in (None, self.records)
            and self.scan_lists_the_same_records in (None, True)
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return (
            f"{self.image}: {self.records} records ({counts}; {self.no_symbol} without a "
            f"function symbol, {self.bti} past a BTI), {self.zero_words} zero words"
        )


MAX_PROBLEMS = 20


def check(
    path: str | Path,
    expect: State,
    call_ops: bool,
    objdump: str | None = None,
    scan_json: str | Path | None = None,
) -> Report:
    """Every record of the image or module at ``path`` against ``expect``."""
    code = Code(path)
    report = Report(str(path), expect.value, call_ops)
    judged: list[Judged] = []
    for i, record in enumerate(code.records):
        if record == 0:
            report.zero_words += 1
            continue
        j = judge_record(code, i, record, call_ops)
        judged.append(j)
        if j.state is not expect and len(report.problems) < MAX_PROBLEMS:
            where = code.place(record) + (f", of {j.function}" if j.function else "")
            problem = f"record {i} at {where}: {j.state.value}"
            report.problems.append(f"{problem}: {j.problem}" if j.problem else problem)
    report.records = len(judged)
    report.counts = dict(sorted(Counter(j.state.value for j in judged).items()))
    report.no_symbol = sum(j.function is None and j.state is not State.INVALID for j in judged)
    report.bti = sum(j.bti for j in judged)
    if objdump and not code.relocatable:
        insns = disassemble(objdump, path)
        agree = 0
        for j in judged:
            if all(insns.get(a) == MNEMONIC.get(w) for a, w in j.words):
                agree += 1
            elif len(report.problems) < MAX_PROBLEMS:
                seen = "; ".join(f"{a:#x}: {insns.get(a)!r}" for a, _ in j.words)
                report.problems.append(f"record {j.index}: objdump reads {seen}")
        report.objdump_agrees = agree
    if scan_json is not None:
        (entry,) = json.loads(Path(scan_json).read_text())["files"]
        # ftpatch scan lists a zero word as a skipped site with no target address.
        scanned = sorted(s["target_address"] for s in entry["sites"] if s["target_address"])
        report.scan_lists_the_same_records = scanned == sorted(j.address for j in judged)
        if not report.scan_lists_the_same_records:
            report.problems.append("ftpatch scan lists other records than __mcount_loc holds")
    return report


_INSN = re.compile(r"^ *([0-9a-f]+):\t(\S+)(?:\t(.*\S))?", re.M)


def disassemble(objdump: str, path: str | Path) -> dict[int, str]:
    """Address -> instruction text, from ``objdump -d --no-show-raw-insn``."""
    text = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        int(m.group(1), 16): " ".join(filter(None, (m.group(2), m.group(3))))
        for m in _INSN.finditer(text)
    }


def symbol_addresses(path: str | Path, names: set[str]) -> dict[str, int]:
    """The addresses of the named symbols of a linked image."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            return {}
        return {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name in names}
