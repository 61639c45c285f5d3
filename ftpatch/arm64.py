"""A64 instruction words ftpatch reads and writes, and the CMODX permitted set.

A64 instruction words are little-endian in memory whatever the data
endianness (ARM DDI 0487, A3.3 / B2.6.2): ``aarch64_be`` objects keep
big-endian ELF fields but little-endian code.
"""

from __future__ import annotations

import mmap
import struct

NOP = 0xD503201F  # nop
MOV_X9_X30 = 0xAA1E03E9  # mov x9, x30 (orr x9, xzr, x30)
BTI_C = 0xD503245F  # bti c
BTI_J = 0xD503249F  # bti j
BTI_JC = 0xD50324DF  # bti jc
PACIASP = 0xD503233F  # paciasp
PACIBSP = 0xD503237F  # pacibsp
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
# ARM DDI 0487 D.a, B2.2.5: without synchronisation, a concurrently modified
# instruction is guaranteed to execute as either the old or the new one only
# when both are in this set.  Later revisions (F.a onward) added B.cond,
# CBZ/CBNZ and TBZ/TBNZ; ftpatch checks against the set of the oldest
# revision it cites, which is the conservative choice.
CMODX_REVISION = "ARM DDI 0487 D.a, B2.2.5"
CMODX_PERMITTED = ("B", "BL", "BRK", "HVC", "ISB", "NOP", "SMC", "SVC")


def cmodx_class(word: int) -> str | None:
    """The permitted-set class of ``word``, or None when it is outside the set."""
    if word == NOP:
        return "NOP"
    if is_bl(word):
        return "BL"
    if is_b(word):
        return "B"
    if word == 0xD5033FDF:  # isb
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


def cmodx_permitted(old: int, new: int) -> bool:
    """True when ``old`` may be replaced by ``new`` while other CPUs execute it."""
    return cmodx_class(old) is not None and cmodx_class(new) is not None


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
