"""The kernel e2e's records checker (scripts/kernel_e2e/records.py) on real images.

The checker is the e2e's reader independent of ftpatch: pyelftools and
binutils objdump.  Here it reads small arm64 images and ``ld -r`` modules
from the real compilers (GCC, Clang/LLD, with and without BTI), pristine
and rewritten by ftpatch, and images damaged the way a wrong rewrite
damages them, which it must refuse.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ftpatch, require
from kernel_e2e.__main__ import main
from kernel_e2e.records import MOV_X9_X30, NOP, Code, State, check
from test_linked_markers import LINKER_SCRIPT, SOURCE, TOOLCHAINS
from test_weak_prefix import build as build_module

pytestmark = pytest.mark.toolchain

OBJDUMP = "aarch64-linux-gnu-objdump"


def build_image(
    tmp: Path, toolchain: str, bti: bool, call_ops: bool, pie: bool = False
) -> Path:
    """An image linked as the kernel links vmlinux (markers, __mcount_loc);
    with ``pie``, relocatable as with KASLR: each record a RELATIVE addend."""
    cc, ld = TOOLCHAINS[toolchain]
    require(cc[0], ld[0], OBJDUMP)
    (tmp / "markers.c").write_text(SOURCE)
    (tmp / "kernel.lds").write_text(LINKER_SCRIPT)
    obj, image = tmp / "markers.o", tmp / "vmlinux"
    flags = ["-O2", "-g0", "-ffreestanding", "-fpie" if pie else "-fno-pie", "-fno-stack-protector"]
    flags += ["-fpatchable-function-entry=4,2" if call_ops else "-fpatchable-function-entry=2"]
    flags += ["-falign-functions=8"] + (["-mbranch-protection=bti"] if bti else [])
    subprocess.run([*cc, *flags, "-c", "-o", obj, tmp / "markers.c"], check=True)
    link = ["-pie"] if pie else ["-static"]
    subprocess.run([*ld, *link, "-T", tmp / "kernel.lds", "-o", image, obj], check=True)
    return image


def rewrite(path: Path) -> None:
    run = ftpatch("rewrite", path)
    assert run.returncode == 0, run.stderr


def put(path: Path, address: int, value: int, size: int = 4) -> None:
    """Write ``value`` at ``address`` of the linked image at ``path``."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            start = sec["sh_addr"]
            if sec["sh_flags"] & 2 and start <= address < start + sec["sh_size"]:
                offset = sec["sh_offset"] + address - start
                break
        else:
            raise AssertionError(f"{address:#x} in no section")
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value.to_bytes(size, "little"))


@pytest.mark.parametrize("call_ops", [False, True], ids=["plain", "call-ops"])
@pytest.mark.parametrize("bti", [False, True], ids=["nobti", "bti"])
@pytest.mark.parametrize("toolchain", sorted(TOOLCHAINS))
def test_pristine_and_rewritten_images_pass(
    tmp_path: Path, toolchain: str, bti: bool, call_ops: bool
) -> None:
    image = build_image(tmp_path, toolchain, bti, call_ops)
    before = check(image, State.PRISTINE, call_ops, objdump=OBJDUMP)
    assert before.ok, before.problems
    assert before.records == 6 and before.counts == {"pristine": 6}
    assert before.objdump_agrees == 6 and before.no_symbol == 0
    assert (before.bti > 0) == bti
    # A pristine image is no rewritten one.
    assert not check(image, State.REWRITTEN, call_ops).ok
    rewrite(image)
    after = check(image, State.REWRITTEN, call_ops, objdump=OBJDUMP)
    assert after.ok, after.problems
    assert after.counts == {"rewritten": 6} and after.objdump_agrees == 6
    assert after.bti == before.bti
    assert not check(image, State.PRISTINE, call_ops).ok


@pytest.mark.parametrize("toolchain", sorted(TOOLCHAINS))
def test_a_record_moved_by_4_puts_the_ops_literal_on_the_previous_function(
    tmp_path: Path, toolchain: str
) -> None:
    # The wrong rewrite of a CALL_OPS site taken for one without a prefix:
    # the MOV in the second prefix NOP, the record moved by 4 onto the
    # entry.  MOV ; NOP at the record reads as rewritten, but
    # ftrace_rec_set_ops() would write the ops pointer at
    # ALIGN_DOWN(record - 12, 8): the last two words of the function before.
    image = build_image(tmp_path, toolchain, bti=False, call_ops=True)
    rewrite(image)
    code = Code(image)
    (middle,) = [s["st_value"] for s in _symbols(image) if s.name == "middle"]
    index = code.records.index(middle + 4)
    start = next(s["st_value"] for s in _symbols(image) if s.name == "__start_mcount_loc")
    put(image, middle, NOP)
    put(image, middle - 4, MOV_X9_X30)
    put(image, start + 8 * index, middle, size=8)
    report = check(image, State.REWRITTEN, call_ops=True, objdump=OBJDUMP)
    assert not report.ok and report.counts["invalid"] == 1, report.counts
    (problem,) = [p for p in report.problems if f"record {index} " in p]
    assert "ops literal" in problem and "not two NOPs" in problem, problem
    # Read without the CALL_OPS rule, the same bytes pass as a rewritten
    # site of a function without a symbol: the literal rule is what sees it.
    plain = check(image, State.REWRITTEN, call_ops=False)
    assert plain.counts.get("invalid", 0) == 0 and plain.no_symbol == 1


def test_a_mov_turned_back_into_a_nop_is_refused(tmp_path: Path) -> None:
    image = build_image(tmp_path, "gcc", bti=False, call_ops=True)
    rewrite(image)
    code = Code(image)
    put(image, code.records[2] - 4, NOP)
    report = check(image, State.REWRITTEN, call_ops=True)
    assert not report.ok and report.counts == {"invalid": 1, "rewritten": 5}


@pytest.mark.parametrize("bti", [False, True], ids=["nobti", "bti"])
@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_modules_with_a_symbol_less_weak_function(tmp_path: Path, compiler: str, bti: bool) -> None:
    # ld -r keeps an overridden weak function's code and record, not its
    # symbol: judged by its words alone, and counted apart.
    ko = build_module(tmp_path, compiler, bti)
    before = check(ko, State.PRISTINE, call_ops=True)
    assert before.ok and before.records == 4 and before.no_symbol == 1, before.problems
    rewrite(ko)
    after = check(ko, State.REWRITTEN, call_ops=True)
    assert after.ok and after.records == 4 and after.no_symbol == 1, after.problems
    # The e2e's damaged copy (its first MOV X9, X30 turned into a NOP) fails.
    damaged = tmp_path / "damaged.ko"
    assert main(["damage", str(ko), str(damaged)]) == 0
    assert main(["records", str(damaged), "--expect", "rewritten", "--call-ops"]) == 1


def _symbols(path: Path) -> list:  # type: ignore[type-arg]
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return list(ELFFile(f).get_section_by_name(".symtab").iter_symbols())


def test_a_zero_record_is_counted_apart(tmp_path: Path) -> None:
    # scripts/sorttable zeroes the records of overridden weak functions; the
    # kernel skips them.
    image = build_image(tmp_path, "gcc", bti=False, call_ops=True)
    start = next(s["st_value"] for s in _symbols(image) if s.name == "__start_mcount_loc")
    put(image, start + 8, 0, size=8)
    report = check(image, State.PRISTINE, call_ops=True)
    assert report.ok and report.records == 5 and report.zero_words == 1


def test_a_pie_image_has_its_records_in_the_relative_addends(tmp_path: Path) -> None:
    # RELOCATABLE (KASLR) vmlinux: the words of __mcount_loc are zero in the
    # file and each record is the addend of its R_AARCH64_RELATIVE.
    image = build_image(tmp_path, "gcc", bti=False, call_ops=True, pie=True)
    start = next(s["st_value"] for s in _symbols(image) if s.name == "__start_mcount_loc")
    for i in range(6):
        put(image, start + 8 * i, 0, size=8)
    before = check(image, State.PRISTINE, call_ops=True, objdump=OBJDUMP)
    assert before.ok and before.records == 6 and before.zero_words == 0, before.problems
    rewrite(image)
    after = check(image, State.REWRITTEN, call_ops=True, objdump=OBJDUMP)
    assert after.ok and after.records == 6, after.problems
