"""Bad input: one line naming the place, exit 2, no traceback, file untouched.

Broken objects are made from real compiler output by changing bytes at
offsets computed with pyelftools, never by writing an ELF file by hand.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ftpatch, require, sha256
from elftools.elf.elffile import ELFFile


def assert_refused(path: Path, *needles: str, command: str = "rewrite") -> str:
    digest = sha256(path)
    siblings = set(path.parent.iterdir())
    r = ftpatch(command, path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert lines[0].startswith(f"{path}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert sha256(path) == digest, "input changed"
    assert set(path.parent.iterdir()) == siblings, "temporary file left behind"
    return lines[0]


def first_record(path: Path) -> tuple[int, int, int]:
    """(file offset of r_addend, addend, endianness prefix) of record 0."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if sec["sh_type"] == "SHT_RELA" and (
                elf.get_section(sec["sh_info"]).name == "__patchable_function_entries"
            ):
                rel = next(iter(sec.iter_relocations()))
                return sec["sh_offset"] + 16, rel["r_addend"], 0 if elf.little_endian else 1
    raise AssertionError("no records")


def text_offset(path: Path, section: str = ".text") -> int:
    with open(path, "rb") as f:
        return int(ELFFile(f).get_section_by_name(section)["sh_offset"])


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_not_an_elf_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.o"
    p.write_text("this is not an object file\n")
    assert_refused(p, "not an ELF file")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.o"
    p.write_bytes(b"")
    assert_refused(p, "not an ELF file")


@pytest.mark.parametrize("size", [20, 63, 200])
def test_truncated(copy_fixture, size: int) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    p.write_bytes(p.read_bytes()[:size])
    assert_refused(p)


def test_section_table_past_end_of_file(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    patch(p, 0x28, struct.pack("<Q", p.stat().st_size - 8))  # e_shoff
    assert_refused(p, "section header table", "outside the file")


def test_not_aarch64_host_object(tmp_path: Path) -> None:
    require("gcc")
    src = tmp_path / "host.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    obj = tmp_path / "host.o"
    subprocess.run(
        ["gcc", "-c", "-fpatchable-function-entry=2", str(src), "-o", str(obj)], check=True
    )
    assert_refused(obj, "not AArch64")


def test_not_elf64(tmp_path: Path) -> None:
    require("clang")
    src = tmp_path / "arm32.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    obj = tmp_path / "arm32.o"
    subprocess.run(
        ["clang", "--target=armv7a-linux-gnueabihf", "-c", str(src), "-o", str(obj)], check=True
    )
    assert_refused(obj, "not ELF64")


def test_record_not_abs64(tmp_path: Path) -> None:
    require("aarch64-linux-gnu-as")
    src = tmp_path / "abs32.S"
    src.write_text(
        ".text\n.globl f\n.type f,%function\nf:\n nop\n nop\n ret\n"
        '.section __patchable_function_entries,"aw"\n.p2align 3\n.word f\n.word 0\n'
    )
    obj = tmp_path / "abs32.o"
    subprocess.run(["aarch64-linux-gnu-as", str(src), "-o", str(obj)], check=True)
    line = assert_refused(obj, "R_AARCH64_ABS32", "expected R_AARCH64_ABS64")
    assert "__patchable_function_entries" in line


def test_record_outside_its_section(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    off, _, big = first_record(p)
    patch(p, off, struct.pack(">q" if big else "<q", 0x100000))
    assert_refused(p, "outside the section")


@pytest.mark.parametrize("name", ["obj/gcc-plain-O2.o", "obj/clang-be-plain.o"])
def test_site_neither_pristine_nor_rewritten(copy_fixture, name: str) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture(name)
    _off, addend, _ = first_record(p)
    patch(p, text_offset(p) + addend, bytes.fromhex("200080d2"))  # mov x0, #1
    line = assert_refused(p, "expected nop (d503201f), found mov x0, #1 (d2800020)")
    assert "+0x0:" in line  # objtool style: func+0x0


def test_bad_site_from_assembler(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/bad-site.o")
    assert_refused(p, "bad_func+0x0", "expected nop (d503201f), found mov x0, #1 (d2800020)")


def test_half_rewritten_mov_without_moved_record(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    _, addend, _ = first_record(p)
    patch(p, text_offset(p) + addend, bytes.fromhex("e9031eaa"))
    assert_refused(p, "half rewritten", "record not moved")


@pytest.mark.parametrize("name", ["obj/gcc-plain-O2.o", "obj/clang-be-bti.o"])
def test_half_rewritten_record_moved_without_mov(copy_fixture, name: str) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture(name)
    off, addend, big = first_record(p)
    patch(p, off, struct.pack(">q" if big else "<q", addend + 4))
    assert_refused(p, "half rewritten", "no mov x9, x30")


def test_scan_reports_instead_of_refusing(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/bad-site.o")
    r = ftpatch("scan", p)
    assert r.returncode == 0
    assert "invalid: expected nop (d503201f), found mov x0, #1" in r.stdout


def test_object_without_records_is_fine(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-norecords.o")
    digest = sha256(p)
    r = ftpatch("rewrite", p)
    assert r.returncode == 0
    assert "no patchable function entries" in r.stdout
    assert sha256(p) == digest


def test_missing_file(tmp_path: Path) -> None:
    r = ftpatch("rewrite", tmp_path / "nope.o")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"{tmp_path / 'nope.o'}: cannot open: No such file or directory"
    ]


def test_one_bad_file_leaves_the_others_alone(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    good = copy_fixture("obj/gcc-plain-O2.o")
    bad = copy_fixture("obj/bad-site.o")
    digest = sha256(bad)
    r = ftpatch("rewrite", bad, good)
    assert r.returncode == 2
    assert sha256(bad) == digest
    assert "rewrote 8 of 8 sites" in r.stdout
