"""A64 instruction words ftpatch reads and writes, and the CMODX permitted set.

A64 instruction words are little-endian in memory whatever the data
endianness (ARM DDI 0487, A3.3 / B2.6.2): ``aarch64_be`` objects keep
big-endian ELF fields but little-endian code.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

NOP = 0xD503201F  # nop
MOV_X9_X30 = 0xAA1E03E9  # mov x9, x30 (orr x9, xzr, x30)
BTI_C = 0xD503245F  # bti c
BTI_J = 0xD503249F  # bti j
BTI_JC = 0xD50324DF  # bti jc
PACIASP = 0xD503233F  # paciasp
PACIBSP = 0xD503237F  # pacibsp
ISB = 0xD5033FDF  # isb
BL_OPCODE = 0x94000000  # bl #imm26*4
B_OPCODE = 0x14000000  # b #imm26*4
BRANCH_MASK = 0xFC000000
IMM26_MASK = 0x03FFFFFF
BL_RANGE = 128 * 1024 * 1024  # +-128 MiB (imm26 * 4)

# Landing pads a function entry may start with before its patchable NOPs.
BTI_LANDING_PADS = frozenset({BTI_C, BTI_JC})

_WORD = struct.Struct("<I")


def read_word(buf: bytes | bytearray | memoryview | mmap.mmap, offset: int) -> int:
    """The instruction word at ``offset`` (always little-endian)."""
    value: int = _WORD.unpack_from(buf, offset)[0]
    return value


def word_bytes(word: int) -> bytes:
    return _WORD.pack(word)


def is_bl(word: int) -> bool:
    return (word & BRANCH_MASK) == BL_OPCODE


def is_b(word: int) -> bool:
    return (word & BRANCH_MASK) == B_OPCODE


def encode_bl(source: int, target: int) -> int:
    """``bl target`` placed at ``source``; ValueError when out of range."""
    delta = target - source
    if delta % 4:
        raise ValueError(f"bl target {target:#x} not 4-byte aligned relative to {source:#x}")
    if not -BL_RANGE <= delta < BL_RANGE:
        raise ValueError(f"bl from {source:#x} to {target:#x} is out of range (+-128 MiB)")
    return BL_OPCODE | ((delta >> 2) & IMM26_MASK)


def bl_target(source: int, word: int) -> int:
    """Destination of the BL (or B) ``word`` placed at ``source``."""
    imm26 = word & IMM26_MASK
    if imm26 & (1 << 25):
        imm26 -= 1 << 26
    return source + imm26 * 4


_NAMES = {
    NOP: "nop",
    MOV_X9_X30: "mov x9, x30",
    BTI_C: "bti c",
    BTI_J: "bti j",
    BTI_JC: "bti jc",
    PACIASP: "paciasp",
    PACIBSP: "pacibsp",
}


def describe(word: int) -> str:
    """``nop (d503201f)``: a cheap name for the words ftpatch knows.

    Anything else is disassembled with capstone, imported only here so the
    rewrite path does not pay for it unless it has to report an odd word.
    """
    name = _NAMES.get(word)
    if name is None:
        name = disassemble(word)
    return f"{name} ({word:08x})"


def disassemble(word: int, address: int = 0) -> str:
    if is_bl(word):
        return f"bl {bl_target(address, word):#x}"
    try:
        import capstone
    except ImportError:  # pragma: no cover - capstone is a declared dependency
        return ".word"
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    for insn in md.disasm(word_bytes(word), address):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return ".inst (undefined)"


# ---------------------------------------------------------------------------
# Concurrent modification and execution of instructions (CMODX).
#
# Without synchronisation, a concurrently modified instruction is guaranteed
# to behave as either the old or the new one only when both are in the set
# the Arm ARM lists in its section "Concurrent modification and execution of
# instructions".  That list and its section number changed across issues of
# the manual, so each entry below names the text it rests on, as far as it
# could be found and quoted; where an issue could not be confirmed the
# citation says so instead of naming one.
#
# The default set is the earliest list: entries that rest only on a later
# text are named (and emitted by ``verify --json``) but not permitted.


@dataclass(frozen=True)
class CmodxSource:
    """One text of the CMODX list: the document, its section, where it was read."""

    key: str
    cite: str  # short form, for messages
    document: str  # the manual and its issue, or "issue not confirmed"
    section: str
    quoted_by: str  # where the list was read (the manual itself is not in this repo)
    listed: tuple[str, ...]  # the instructions that text lists, in its order


# ARMv8-A ARM (ARM DDI 0487) issue A.a, B2.6.5, as quoted by Linux
# arch/arm64/kernel/insn.c above aarch64_insn_hotpatch_safe() (Jiang Liu,
# 2013, in the tree until aarch64_insn_hotpatch_safe() was removed): "...
# except where the instruction before modification and the instruction after
# modification is a B, BL, NOP, BKPT, SVC, HVC, or SMC instruction."  BKPT is
# that text's name for the A64 breakpoint, BRK, the one Linux's
# __aarch64_insn_hotpatch_safe() accepts (aarch64_insn_is_brk).
CMODX_ARMV8_A_A = CmodxSource(
    key="ddi0487-A.a",
    cite="ARM DDI 0487 A.a, B2.6.5",
    document="ARM Architecture Reference Manual, ARMv8, for ARMv8-A (ARM DDI 0487), issue A.a",
    section='B2.6.5 "Concurrent modification and execution of instructions"',
    quoted_by="Linux arch/arm64/kernel/insn.c, comment above aarch64_insn_hotpatch_safe()",
    listed=("B", "BL", "NOP", "BKPT", "SVC", "HVC", "SMC"),
)

# A later issue adds ISB: "... except where each of the instruction before
# modification and the instruction after modification is one of a B, BL,
# BRK, HVC, ISB, NOP, SMC, or SVC instruction."  Quoted without its issue in
# an LKML mail of 2020-04-06 (Cheng Jian, "Re: Why is text_mutex used in
# jump_label_transform for x86_64").  Which issue first lists ISB could not be
# confirmed; the section is B2.2.5 in issue E.a (a linux-arm-kernel mail on
# the Neoverse-N1 stale-instruction erratum cites "B2.2.5 ... of DDI0487E.a",
# without quoting the list).
CMODX_LATER_ISB = CmodxSource(
    key="ddi0487-later-isb",
    cite="ARM DDI 0487 after A.a (issue not confirmed), B2.2.5",
    document="ARM DDI 0487, a later issue than A.a (which issue first lists ISB: not confirmed)",
    section='B2.2.5 "Concurrent modification and execution of instructions" (as of issue E.a)',
    quoted_by="LKML, 2020-04-06, Cheng Jian, "
    '"Re: Why is text_mutex used in jump_label_transform for x86_64"',
    listed=("B", "BL", "BRK", "HVC", "ISB", "NOP", "SMC", "SVC"),
)

# Later still the list takes conditional and compare-and-branch instructions:
# herdtools7 (herd/AArch64Arch_herd.ml, is_cmodx_restricted_instruction) takes
# "B, B.cond, BL, BRK, CBNZ, CBZ, HVC, ISB, NOP, SMC, SVC, TBNZ and TBZ" from
# "Arm ARM B2.2.5"; the newest text, quoted in herdtools7 pull request 1809
# (2026), adds CB<cc>, CBB<cc>, CBH<cc>, TRCIT and UDF and says only that "the
# behavior is more restricted" for them.  A herdtools7 litmus test notes that a
# modified conditional branch may be seen with any combination of the old and
# new condition and target.  Issue not confirmed; ftpatch never writes these
# and does not recognise them as permitted.
CMODX_LATER_BRANCHES = CmodxSource(
    key="ddi0487-later-branches",
    cite="ARM DDI 0487, a later issue (not confirmed), B2.2.5",
    document="ARM DDI 0487, a later issue (which one: not confirmed)",
    section='B2.2.5 "Concurrent modification and execution of instructions"',
    quoted_by="herdtools7 herd/AArch64Arch_herd.ml (is_cmodx_restricted_instruction); "
    "herdtools7 pull request 1809",
    listed=(
        "B",
        "B.cond",
        "BL",
        "BRK",
        "CBNZ",
        "CBZ",
        "HVC",
        "ISB",
        "NOP",
        "SMC",
        "SVC",
        "TBNZ",
        "TBZ",
    ),
)

CMODX_SOURCES = (CMODX_ARMV8_A_A, CMODX_LATER_ISB, CMODX_LATER_BRANCHES)


@dataclass(frozen=True)
class CmodxEntry:
    """One instruction class of the list, the earliest text it rests on, and
    whether ftpatch permits it (only entries of the earliest text are)."""

    name: str
    source: CmodxSource
    permitted: bool
    note: str = ""


CMODX_ENTRIES = (
    CmodxEntry("B", CMODX_ARMV8_A_A, True),
    CmodxEntry("BL", CMODX_ARMV8_A_A, True),
    CmodxEntry("BRK", CMODX_ARMV8_A_A, True, "listed as BKPT, the A64 BRK"),
    CmodxEntry("HVC", CMODX_ARMV8_A_A, True),
    CmodxEntry("NOP", CMODX_ARMV8_A_A, True),
    CmodxEntry("SMC", CMODX_ARMV8_A_A, True),
    CmodxEntry("SVC", CMODX_ARMV8_A_A, True),
    CmodxEntry("ISB", CMODX_LATER_ISB, False, "not in the issue A.a list"),
    *(
        CmodxEntry(name, CMODX_LATER_BRANCHES, False, "listed later, with conditions")
        for name in ("B.cond", "CBZ", "CBNZ", "TBZ", "TBNZ")
    ),
)

# The text the default set rests on, and the set itself.
CMODX_REVISION = CMODX_ARMV8_A_A.cite
CMODX_PERMITTED = tuple(e.name for e in CMODX_ENTRIES if e.permitted)


def cmodx_class(word: int) -> str | None:
    """The CMODX list class of ``word`` (``CMODX_ENTRIES``: B, BL, BRK, HVC,
    NOP, SMC, SVC, ISB), or None when it is none of them.  B.cond and the
    compare-and-branch instructions of later texts are not recognised."""
    if word == NOP:
        return "NOP"
    if is_bl(word):
        return "BL"
    if is_b(word):
        return "B"
    if word == ISB:
        return "ISB"
    if word & 0xFFE0001F == 0xD4200000:  # brk #imm16
        return "BRK"
    if word & 0xFFE0001F == 0xD4000002:  # hvc #imm16
        return "HVC"
    if word & 0xFFE0001F == 0xD4000003:  # smc #imm16
        return "SMC"
    if word & 0xFFE0001F == 0xD4000001:  # svc #imm16
        return "SVC"
    return None


def cmodx_entry(word: int) -> CmodxEntry | None:
    """The ``CMODX_ENTRIES`` entry ``word`` falls under, or None."""
    name = cmodx_class(word)
    return next((e for e in CMODX_ENTRIES if e.name == name), None)


def cmodx_permitted(old: int, new: int) -> bool:
    """True when ``old`` may be replaced by ``new`` while other CPUs execute it:
    both in the default (earliest) set, ``CMODX_PERMITTED``."""
    return cmodx_class(old) in CMODX_PERMITTED and cmodx_class(new) in CMODX_PERMITTED


# Top byte (little-endian: the word's last byte) of the immediate branches
# (ARM DDI 0487, C4.1.3 "Branches, Exception Generating and System
# instructions"): B/BL imm26, B.cond imm19, CBZ/CBNZ imm19, TBZ/TBNZ imm14.
BRANCH_TOP_BYTES = bytes(
    [*range(0x14, 0x18), *range(0x94, 0x98), 0x54, *range(0x34, 0x38), *range(0xB4, 0xB8)]
)


def branch_target(source: int, word: int) -> int | None:
    """Where the immediate branch ``word`` at ``source`` goes, or None if it is none."""
    top = word >> 24
    if top & 0x7C == 0x14:  # B, BL: x00101 imm26
        return bl_target(source, word)
    if top == 0x54 and not word & 0x10:  # B.cond: 01010100 imm19 0 cond
        imm = (word >> 5) & 0x7FFFF
    elif top & 0x7E == 0x34:  # CBZ, CBNZ: sf 011010 op imm19 Rt
        imm = (word >> 5) & 0x7FFFF
    elif top & 0x7E == 0x36:  # TBZ, TBNZ: b5 011011 op b40 imm14 Rt
        imm = (word >> 5) & 0x3FFF
        if imm & 0x2000:
            imm -= 0x4000
        return source + imm * 4
    else:
        return None
    if imm & 0x40000:
        imm -= 0x80000
    return source + imm * 4
