#!/usr/bin/env python3
"""Check every mcount record of a linked kernel image with pyelftools alone.

An independent reader for what ftpatch scans and rewrites: no ftpatch code
is imported.  For each record between __start_mcount_loc and
__stop_mcount_loc (the word, or its R_AARCH64_RELATIVE addend in a PIE), it
finds the function the record belongs to from the typed, sized function
symbols (STT_FUNC, st_size > 0) and checks the words there:

  pristine   record on the entry (plain) or --prefix NOPs before it (4,2),
             entry words [BTI C] NOP ; NOP
  rewritten  record on the BL slot: entry [BTI C] MOV X9,X30 ; NOP

A function the kernel kept without a symbol (an overridden weak function)
is judged by its words alone and counted under "no symbol" too.

    scripts/check-records.py vmlinux --expect rewritten [--prefix 2] [--json]

Prints counts per state (zero records are counted apart: the kernel skips
them); exits 1 if any non-zero record is not in the expected state.
"""

from __future__ import annotations

import argparse
import bisect
import json
import struct
import sys
from collections import Counter

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

NOP, MOV, BTI = 0xD503201F, 0xAA1E03E9, {0xD503245F, 0xD503249F, 0xD50324DF}
R_AARCH64_RELATIVE = 1027


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--expect", choices=("pristine", "rewritten"), required=True)
    ap.add_argument(
        "--prefix",
        type=int,
        default=0,
        help="NOPs before each function: 2 for -fpatchable-function-entry=4,2 (CALL_OPS), else 0",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with open(args.image, "rb") as f:
        elf = ELFFile(f)
        data = f.seek(0) or f.read()
        symtab = elf.get_section_by_name(".symtab")
        syms = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
        functions = sorted(
            (s["st_value"], s["st_size"], s.name)
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC"
            and s["st_size"] > 0
            and s["st_shndx"] != "SHN_ABS"
        )
        starts = [f[0] for f in functions]
        segments = [
            (seg["p_vaddr"], seg["p_offset"], seg["p_filesz"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        ]
        relative = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.is_RELA() and sec["sh_flags"] & 2:
                for r in sec.iter_relocations():
                    if r["r_info_type"] == R_AARCH64_RELATIVE:
                        relative[r["r_offset"]] = r["r_addend"] % (1 << 64)  # signed in pyelftools

    def file_offset(address: int) -> int | None:
        for vaddr, offset, size in segments:
            if vaddr <= address < vaddr + size:
                return offset + address - vaddr
        return None

    def word(address: int) -> int | None:
        o = file_offset(address)
        return None if o is None else struct.unpack_from("<I", data, o)[0]

    prefix = 4 * args.prefix
    start, stop = syms["__start_mcount_loc"], syms["__stop_mcount_loc"]
    table = file_offset(start)
    assert table is not None
    counts: Counter[str] = Counter()
    unnamed = 0  # judged by the words: no function symbol owns the record
    bad: list[str] = []
    for i in range((stop - start) // 8):
        value = relative.get(start + 8 * i)
        if value is None:
            value = struct.unpack_from("<Q" if elf.little_endian else ">Q", data, table + 8 * i)[0]
        if value == 0:
            counts["zero"] += 1
            continue
        # The function: the typed symbol containing the record, else (pristine
        # with a prefix) the one the prefix NOPs precede.  A function without
        # a symbol of its own (the kernel keeps overridden weak functions'
        # code, unnamed) is judged by its words, and counted apart.
        k = bisect.bisect_right(starts, value + prefix) - 1
        near = [functions[j] for j in (k, k - 1) if j >= 0]
        candidates = [f for f in near if f[0] <= value < f[0] + f[1]]
        if prefix:
            candidates += [f for f in near if f[0] - prefix <= value < f[0]]
        state, name = "unknown", "?"
        for entry, _size, name in candidates:  # noqa: B007 (name: the last one tried)
            first = entry + 4 if word(entry) in BTI else entry
            w0, w1 = word(first), word(first + 4)
            if value == (entry - prefix if prefix else first) and (w0, w1) == (NOP, NOP):
                state = "pristine"
            elif value == first + 4 and (w0, w1) == (MOV, NOP):
                state = "rewritten"
            else:
                state = "invalid"
                continue
            break
        if state == "unknown":  # no symbol owns it
            before, w0, w1 = word(value - 4), word(value), word(value + 4)
            if before == MOV and w0 == NOP:
                state, name = "rewritten", "(no symbol)"
            elif w0 == NOP and w1 == NOP:
                state, name = "pristine", "(no symbol)"
            if name == "(no symbol)":
                unnamed += 1
        counts[state] += 1
        if state != args.expect:
            bad.append(f"record {i} = {value:#x} ({name}): {state}")
    total = sum(counts.values())
    if args.json:
        doc = {"records": total, "counts": dict(sorted(counts.items())), "no_symbol": unnamed}
        print(json.dumps({**doc, "bad": bad}))
    else:
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{args.image}: {total} records: {summary} ({unnamed} without a function symbol)")
        for line in bad[:20]:
            print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
