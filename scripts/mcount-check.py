#!/usr/bin/env python3
"""Check ftpatch's reading of a linked kernel against independent readers.

Usage: mcount-check.py VMLINUX OBJDUMP_TXT SCAN_JSON KIND LAYOUT

Used by scripts/kernel-e2e.sh.  The records are the words between
__start_mcount_loc and __stop_mcount_loc (in a PIE, the addends of their
R_AARCH64_RELATIVE relocations), read with pyelftools (not ftpatch's
reader); the instructions come from binutils objdump -d
(OBJDUMP_TXT, made with --no-show-raw-insn) and the function entries from
pyelftools' STT_FUNC symbols.  For each record the expected layout is:

  LAYOUT call-ops (-fpatchable-function-entry=4,2, the literal L 8-aligned)
    KIND stock:   record = L;       L, L+4 nop; [bti c]; then nop; nop, entry = L+8
    KIND ftpatch: record = BL slot; L = ALIGN_DOWN(record - 12, 8): L, L+4 nop;
                  entry = L+8; [bti c]; mov x9, x30 at record-4; nop at record
  LAYOUT plain (-fpatchable-function-entry=2)
    KIND stock:   record = entry (or entry+4 after bti c); nop; nop
    KIND ftpatch: record = BL slot; mov x9, x30 at record-4; nop at record

It prints one JSON object: the record count, whether ftpatch scan --json
lists exactly those records, how many records have the expected layout, how
many a function symbol at their entry and how many an entry outside every
sized function symbol (an overridden weak function's code keeps its record
but loses its symbol), and the first mismatches.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from typing import Literal

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

R_AARCH64_RELATIVE = 1027  # AAELF64 table 5.9


def mcount_words(elf: ELFFile) -> tuple[list[int], dict[int, int]]:
    """The records, and each STT_FUNC symbol's address -> its largest size."""
    symtab = elf.get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    value: dict[str, int] = {}
    funcs: dict[int, int] = {}
    for sym in symtab.iter_symbols():
        value.setdefault(sym.name, sym["st_value"])
        if sym["st_info"]["type"] == "STT_FUNC":
            funcs[sym["st_value"]] = max(funcs.get(sym["st_value"], 0), sym["st_size"])
    start, stop = value["__start_mcount_loc"], value["__stop_mcount_loc"]
    for section in elf.iter_sections():
        lo = section["sh_addr"]
        if section["sh_type"] != "SHT_NOBITS" and lo <= start and stop <= lo + section["sh_size"]:
            data = section.data()[start - lo : stop - lo]
            break
    else:
        raise SystemExit(f"no section holds the mcount_loc records {start:#x}..{stop:#x}")
    order: Literal["little", "big"] = "little" if elf.little_endian else "big"
    words = [int.from_bytes(data[i : i + 8], order) for i in range(0, len(data), 8)]
    # A relocatable kernel (RELOCATABLE, KASLR) is a PIE: a record's address
    # is the addend of its R_AARCH64_RELATIVE (the word may be 0).
    for section in elf.iter_sections():
        if isinstance(section, RelocationSection) and section.is_RELA():
            for rel in section.iter_relocations():
                offset = rel["r_offset"]
                if rel["r_info_type"] == R_AARCH64_RELATIVE and start <= offset < stop:
                    # r_addend is an Sxword: as an address, modulo 2^64.
                    words[(offset - start) // 8] = rel["r_addend"] & 0xFFFF_FFFF_FFFF_FFFF
    return words, funcs


def main() -> None:
    vmlinux, objdump_txt, scan_json, kind, layout = sys.argv[1:6]
    with open(vmlinux, "rb") as f:
        words, funcs = mcount_words(ELFFile(f))
    insn: dict[int, str] = {}
    for m in re.finditer(r"^ *([0-9a-f]+):\t(\S+)(?:\t(.*\S))?", open(objdump_txt).read(), re.M):
        insn[int(m.group(1), 16)] = " ".join(filter(None, (m.group(2), m.group(3))))
    (entry,) = json.load(open(scan_json))["files"]
    # ftpatch lists a zero word as a skipped site with no target address.
    scanned = sorted(site["target_address"] for site in entry["sites"] if site["target_address"])
    records = sorted(w for w in words if w)

    # A record whose entry has no function symbol must not lie inside
    # another function: it is then the code of a weak function that another
    # definition overrode, which keeps its code but loses its symbol (6.1;
    # 6.12's scripts/sorttable zeroes those records).
    spans = sorted((a, a + size) for a, size in funcs.items() if size)
    starts = [a for a, _ in spans]

    def inside_a_function(address: int) -> bool:
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and spans[i][0] <= address < spans[i][1]

    bad: list[str] = []
    layout_ok = entry_ok = bti = 0
    anonymous: list[int] = []
    for w in records:
        if layout == "call-ops":
            literal = w if kind == "stock" else (w - 12) & ~7
            body = literal + 8
            want = [(literal, "nop"), (literal + 4, "nop")]
            if insn.get(body) == "bti c":
                bti += 1
                body += 4
            if kind == "stock":
                want += [(body, "nop"), (body + 4, "nop")]
                ok_record = w % 8 == 0
            else:
                want += [(body, "mov x9, x30"), (body + 4, "nop")]
                ok_record = w == body + 4
            func_entry = literal + 8
        else:
            func_entry = w if kind == "stock" else w - 4
            if insn.get(func_entry - 4) == "bti c":
                func_entry -= 4
                bti += 1
            first = w if kind == "stock" else w - 4
            want = [(first, "nop" if kind == "stock" else "mov x9, x30"), (first + 4, "nop")]
            ok_record = True
        if ok_record and all(insn.get(a) == i for a, i in want):
            layout_ok += 1
        elif len(bad) < 5:
            bad.append(f"record {w:#x}: " + "; ".join(f"{a:#x}: {insn.get(a)!r}" for a, _ in want))
        if func_entry in funcs:
            entry_ok += 1
        elif not inside_a_function(func_entry):
            anonymous.append(func_entry)
        elif len(bad) < 5:
            bad.append(f"record {w:#x}: entry {func_entry:#x} inside another function")
    print(
        json.dumps(
            {
                "records": len(records),
                "zero_words": len(words) - len(records),
                "scan_lists_the_same_records": scanned == records,
                "scan_only": len(set(scanned) - set(records)),
                "mcount_loc_only": len(set(records) - set(scanned)),
                "layout_ok": layout_ok,
                "entry_symbol_ok": entry_ok,
                "entry_without_symbol": len(anonymous),
                "entry_without_symbol_first": [f"{a:#x}" for a in anonymous[:5]],
                "bti": bti,
                "mismatches": bad,
            }
        )
    )


if __name__ == "__main__":
    main()
