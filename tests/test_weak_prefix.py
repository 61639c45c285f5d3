"""Overridden weak functions in CALL_OPS objects: no symbol, two prefix NOPs.

Regression (found while building kernel modules for 6.12): ``ld -r`` of an
object with a weak function and one with its strong override keeps the weak
function's code and its ``__patchable_function_entries`` record, but not its
symbol.  With ``-fpatchable-function-entry=4,2`` that record points at the
first of two prefix NOPs (the ops literal), followed by the two entry NOPs.
ftpatch took ``nop ; nop`` at a symbol-less record for an entry with no
prefix: it wrote the MOV into the literal and moved the record by 4, not 12.
In vmlinux.o (44 such sites in Linux 6.12) sorttable zeroes those records;
in a module the kernel's ``ftrace_rec_set_ops()`` would have stored the ops
pointer over the last two instructions of the function before.

The objects come from the real compilers and ``ld -r``; what the rewrite must
produce is the kernel's own rule, read with pyelftools (never ftpatch): for
every record R, the ops literal at ``ALIGN_DOWN(R - 12, 8)`` is two NOPs,
``R`` is 12 past it (16 past a BTI C), ``R - 4`` is the MOV and ``R`` a NOP.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import anonymous_site_object, ftpatch, require

pytestmark = pytest.mark.toolchain

NOP, MOV = 0xD503201F, 0xAA1E03E9
BTI = {0xD503245F, 0xD50324DF}

WEAK = """\
__attribute__((weak, noinline)) int hook(int x) { return x - 3; }
__attribute__((weak, noinline)) int kept(int x) { return x << 1; }
"""
STRONG = """\
int kept(int);
__attribute__((noinline)) int hook(int x) { return x + 3; }
int user(int x) { return hook(x) ^ kept(x); }
"""

COMPILERS = {
    "gcc": ["aarch64-linux-gnu-gcc"],
    "clang": ["clang", "--target=aarch64-linux-gnu"],
}


def build(tmp: Path, compiler: str, bti: bool, prefix: int = 2) -> Path:
    cc = COMPILERS[compiler]
    require(cc[0], "aarch64-linux-gnu-ld")
    flags = ["-O2", "-g0", "-ffreestanding", "-fno-pie", "-falign-functions=8"]
    flags.append(f"-fpatchable-function-entry={2 + prefix},{prefix}")
    if bti:
        flags.append("-mbranch-protection=bti")
    objs = []
    for name, text in (("strong", STRONG), ("weak", WEAK)):
        (tmp / f"{name}.c").write_text(text)
        objs.append(tmp / f"{name}.o")
        subprocess.run([*cc, *flags, "-c", "-o", objs[-1], tmp / f"{name}.c"], check=True)
    out = tmp / "module.ko"
    subprocess.run(["aarch64-linux-gnu-ld", "-r", "-o", out, *objs], check=True)
    return out


def records_and_text(path: Path) -> tuple[list[int], bytes, set[int]]:
    """(record targets as .text offsets, .text bytes, function symbol offsets)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    with open(path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        shndx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".text")
        symtab = elf.get_section_by_name(".symtab")
        functions = {
            s["st_value"]
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] == shndx
        }
        targets = []
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.name.endswith(
                "__patchable_function_entries"
            ):
                for rel in sec.iter_relocations():
                    sym = symtab.get_symbol(rel["r_info_sym"])
                    assert sym["st_shndx"] == shndx, "record outside .text"
                    targets.append(sym["st_value"] + rel["r_addend"])
        return sorted(targets), text.data(), functions


def word(text: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", text, offset)[0]
    return value


@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("compiler", sorted(COMPILERS))
def test_symbol_less_weak_site_rewritten_past_its_prefix(
    tmp_path: Path, compiler: str, bti: bool
) -> None:
    ko = build(tmp_path, compiler, bti)
    pristine, text0, functions = records_and_text(ko)
    # The case: a record whose function lost its symbol (the weak hook).
    anonymous = [r for r in pristine if r + 8 not in functions and r + 12 not in functions]
    assert len(anonymous) == 1, (pristine, sorted(functions))
    run = ftpatch("rewrite", ko)
    assert run.returncode == 0, run.stderr
    targets, text, _ = records_and_text(ko)
    assert len(targets) == len(pristine) == 4
    for before, r in zip(pristine, targets, strict=True):
        literal = (r - 12) & ~7
        moved = r - before
        assert word(text, literal) == word(text, literal + 4) == NOP, hex(r)
        if r - literal == 16:
            assert word(text, r - 8) in BTI, hex(r)
            assert moved == 16
        else:
            assert r - literal == 12 and moved == 12, (hex(before), hex(r))
        assert word(text, r - 4) == MOV and word(text, r) == NOP, hex(r)
    # Nothing else changed: exactly one MOV per site, where the NOP was.
    changed = [o for o in range(0, len(text), 4) if word(text, o) != word(text0, o)]
    assert changed == [r - 4 for r in targets]


def test_symbol_less_site_without_a_known_prefix_is_refused(tmp_path: Path) -> None:
    # Hand-written code (no compiler leaves a file whose only record has no
    # function symbol): four NOPs at a symbol-less record, and no other site
    # to say how many of them are a prefix, so ftpatch refuses to guess.
    obj = anonymous_site_object(tmp_path)
    before = obj.read_bytes()
    run = ftpatch("rewrite", obj)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "is not known" in run.stderr and ".text+0x0" in run.stderr, run.stderr
    assert obj.read_bytes() == before


def test_no_prefix_objects_keep_their_layout(tmp_path: Path) -> None:
    # -fpatchable-function-entry=2 (Linux 6.1): the symbol-less weak site
    # has no prefix; its MOV goes on its first NOP, its record moves by 4.
    ko = build(tmp_path, "gcc", bti=False, prefix=0)
    pristine, text0, _ = records_and_text(ko)
    run = ftpatch("rewrite", ko)
    assert run.returncode == 0, run.stderr
    targets, text, _ = records_and_text(ko)
    for before, r in zip(pristine, targets, strict=True):
        assert r - before == 4
        assert word(text0, before) == NOP and word(text, before) == MOV
