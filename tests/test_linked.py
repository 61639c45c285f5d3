"""Post-link: ld -r objects and linked images (static, PIE, RELR, kernel-style script).

Every image comes from the real linkers (GNU ld, lld); every rewritten program
runs under qemu-aarch64.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, MANIFEST, ftpatch, require, sha256
from test_e2e_qemu import disassembly

pytestmark = pytest.mark.toolchain

EXPECTED = (FIXTURES / MANIFEST["e2e"]["expected_stdout"]).read_text()
MCOUNT_LD = """\
SECTIONS
{
  .rodata.mcount : ALIGN(8) {
    __start_mcount_loc = .;
    KEEP(*(__patchable_function_entries))
    __stop_mcount_loc = .;
  }
}
INSERT AFTER .rodata;
"""


def objects(tmp: Path, variant: str) -> list[Path]:
    out = []
    d = tmp / variant
    d.mkdir(parents=True, exist_ok=True)
    for obj in sorted((FIXTURES / "obj" / "e2e" / variant).glob("*.o")):
        shutil.copyfile(obj, d / obj.name)
        out.append(d / obj.name)
    return out


def sh(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def run(exe: Path) -> str:
    r = subprocess.run(
        ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(exe)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def scan(path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    r = ftpatch("scan", "--json", *extra, path)
    assert r.returncode == 0, r.stderr
    doc: dict = json.loads(r.stdout)["files"][0]  # type: ignore[type-arg]
    return doc


def differing_bytes_outside_build_id(a: Path, b: Path) -> list[int]:
    """Offsets where a and b differ, outside .note.gnu.build-id.

    The linker hashes the output into the build ID, so an image rewritten
    after linking keeps the ID of its pristine bytes: the one difference from
    linking rewritten objects, and a documented one.
    """
    from elftools.elf.elffile import ELFFile

    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db)
    skip = range(0)
    with open(a, "rb") as f:
        note = ELFFile(f).get_section_by_name(".note.gnu.build-id")
        if note is not None:
            skip = range(note["sh_offset"], note["sh_offset"] + note["sh_size"])
    return [i for i, (x, y) in enumerate(zip(da, db, strict=True)) if x != y and i not in skip]


def assert_entries_rewritten(exe: Path, doc: dict) -> None:  # type: ignore[type-arg]
    dis = disassembly(exe)
    assert doc["sites"]
    for site in doc["sites"]:
        assert site["state"] == "rewritten", site
        slot = site["target_address"]
        assert dis[slot] == "nop" and dis[slot - 4] == "mov x9, x30", hex(slot)


def assert_records_match_lief(
    exe: Path,
    doc: dict,  # type: ignore[type-arg]
    kind: str,
    moved: int,
) -> None:
    """Every record as LIEF reads the image, independently of ftpatch's reader:
    the dynamic relocation (RELA addend, or RELR mark and word) or the word at
    the record's place holds the address ftpatch reports, and that address is
    the entry of a typed function symbol (after its BTI C, if any), plus
    ``moved`` once rewritten."""
    import lief

    elf = lief.ELF.parse(str(exe))
    assert elf is not None
    start = elf.get_symbol("__start___patchable_function_entries")
    table = elf.get_section("__patchable_function_entries")
    base = start.value if start is not None else table.virtual_address
    relocs = {r.address: r for r in elf.dynamic_relocations}
    functions = {s.value: s.name for s in elf.symtab_symbols if s.type == lief.ELF.Symbol.TYPE.FUNC}
    for site in doc["sites"]:
        where = base + 8 * site["record_index"]
        word = int.from_bytes(bytes(elf.get_content_from_virtual_address(where, 8)), "little")
        reloc = relocs.get(where)
        if kind == "absolute":
            assert reloc is None and word == site["record_value"], site
        else:
            assert reloc is not None and reloc.type == lief.ELF.Relocation.TYPE.AARCH64_RELATIVE
            if kind == "relr":
                assert reloc.encoding == lief.ELF.Relocation.ENCODING.RELR
                assert word == site["record_value"], site
            else:
                assert reloc.encoding == lief.ELF.Relocation.ENCODING.RELA
                assert reloc.addend == site["record_value"] and word in (0, reloc.addend)
        address = site["record_value"] - moved
        entry = address - 4 if address - 4 in functions else address
        assert entry in functions, f"{address:#x}: no function symbol at the record"
        assert site["function"] == functions[entry], site


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "qemu-aarch64", "llvm-objdump")


@pytest.mark.parametrize("variant", ["gcc-plain", "gcc-bti", "clang-plain", "gcc-prefix42"])
def test_ld_r_rewritten_once_equals_objects_rewritten_before(tmp_path: Path, variant: str) -> None:
    before = objects(tmp_path / "objs-a", variant)
    assert ftpatch("rewrite", *before).returncode == 0
    sh("aarch64-linux-gnu-ld", "-r", "-o", tmp_path / "a.o", *before)
    sh("aarch64-linux-gnu-gcc", "-static", "-o", tmp_path / "a", tmp_path / "a.o")

    after = objects(tmp_path / "objs-b", variant)
    sh("aarch64-linux-gnu-ld", "-r", "-o", tmp_path / "b.o", *after)
    r = ftpatch("rewrite", tmp_path / "b.o")
    assert r.returncode == 0 and "rewrote" in r.stdout, r.stderr
    sh("aarch64-linux-gnu-gcc", "-static", "-o", tmp_path / "b", tmp_path / "b.o")

    assert sha256(tmp_path / "a.o") == sha256(tmp_path / "b.o")
    assert sha256(tmp_path / "a") == sha256(tmp_path / "b")
    assert run(tmp_path / "b") == EXPECTED


@pytest.mark.parametrize(
    ("name", "link"),
    [
        ("static", ["aarch64-linux-gnu-gcc", "-static"]),
        ("pie", ["aarch64-linux-gnu-gcc", "-pie"]),
        ("static-pie", ["aarch64-linux-gnu-gcc", "-static-pie"]),
        (
            "lld-static-pie-relr",
            [
                "clang",
                "--target=aarch64-linux-gnu",
                "-fuse-ld=lld",
                "-static-pie",
                "-Wl,--pack-dyn-relocs=relr",
            ],
        ),
    ],
)
def test_post_link_rewrite_matches_pre_link_rewrite(
    tmp_path: Path, name: str, link: list[str]
) -> None:
    if link[0] == "clang":
        require("clang", "ld.lld")
    kinds = {
        "static": "absolute",
        "pie": "dyn-rela",
        "static-pie": "dyn-rela",
        "lld-static-pie-relr": "relr",
    }
    pristine = objects(tmp_path, "gcc-bti")
    post = tmp_path / "post"
    sh(*link, "-o", post, *pristine)
    assert run(post) == EXPECTED
    doc = scan(post)
    assert {s["record_kind"] for s in doc["sites"]} == {kinds[name]}
    assert doc["counts"]["pristine"] == len(doc["sites"]) > 0
    assert_records_match_lief(post, doc, kinds[name], moved=0)
    r = ftpatch("rewrite", post)
    assert r.returncode == 0, r.stderr
    assert run(post) == EXPECTED
    after = scan(post)
    assert_entries_rewritten(post, after)
    assert_records_match_lief(post, after, kinds[name], moved=4)

    pre_objs = objects(tmp_path / "pre", "gcc-bti")
    assert ftpatch("rewrite", *pre_objs).returncode == 0
    pre = tmp_path / "pre.exe"
    sh(*link, "-o", pre, *pre_objs)
    assert differing_bytes_outside_build_id(pre, post) == [], (
        "rewriting before and after linking must agree"
    )
    again = ftpatch("rewrite", post)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_kernel_style_mcount_loc_inside_another_section(tmp_path: Path) -> None:
    script = tmp_path / "mcount.ld"
    script.write_text(MCOUNT_LD)
    objs = objects(tmp_path, "gcc-prefix42")
    exe = tmp_path / "image"
    sh("aarch64-linux-gnu-gcc", "-static", f"-Wl,-T,{script}", "-o", exe, *objs)
    doc = scan(exe, "--records", "mcount-loc")
    assert {s["record_section"] for s in doc["sites"]} == {"__start_mcount_loc"}
    assert all(s["prefix_nops"] == 2 for s in doc["sites"])
    section = ftpatch("scan", "--records", "section", exe)
    assert section.returncode == 2 and "no __patchable_function_entries section" in section.stderr
    r = ftpatch("rewrite", exe)
    assert r.returncode == 0, r.stderr
    assert run(exe) == EXPECTED
    assert_entries_rewritten(exe, scan(exe))


def test_zero_record_is_skipped_and_left_alone(tmp_path: Path) -> None:
    objs = objects(tmp_path, "gcc-plain")
    exe = tmp_path / "static"
    sh("aarch64-linux-gnu-gcc", "-static", "-o", exe, *objs)
    doc = scan(exe)
    # What a discarded function leaves behind: its record word zeroed.
    from elftools.elf.elffile import ELFFile

    with open(exe, "rb") as f:
        sec = ELFFile(f).get_section_by_name("__patchable_function_entries")
        word_offset = sec["sh_offset"] + 8 * 3
    data = bytearray(exe.read_bytes())
    data[word_offset : word_offset + 8] = bytes(8)
    exe.write_bytes(bytes(data))
    doc = scan(exe)
    assert doc["counts"]["skipped"] == 1
    assert doc["sites"][3]["reason"] == (
        "zero record, skipped as the kernel's ftrace_process_locs() does"
    )
    r = ftpatch("rewrite", exe)
    assert r.returncode == 0, r.stderr
    assert r.stderr == (
        f"{exe}: note: 1 zero record left alone, as the kernel's ftrace_process_locs() skips them\n"
    )
    after = exe.read_bytes()
    assert after[word_offset : word_offset + 8] == bytes(8)
    assert scan(exe)["counts"] == {
        "pristine": 0,
        "rewritten": len(doc["sites"]) - 1,
        "invalid": 0,
        "skipped": 1,
    }
    assert run(exe) == EXPECTED


def test_many_files_in_parallel_and_directories(tmp_path: Path) -> None:
    variants = MANIFEST["e2e"]["variants"]
    for v in variants:
        objects(tmp_path / "tree", v)
    bad = tmp_path / "tree" / "zz-bad" / "bad.o"
    bad.parent.mkdir()
    shutil.copyfile(FIXTURES / "obj" / "bad-site.o", bad)
    bad_digest = sha256(bad)
    r = ftpatch("rewrite", "-r", "-j", "2", tmp_path / "tree")
    assert r.returncode == 2
    lines = r.stdout.splitlines()
    assert lines == sorted(lines), "output must follow the sorted file order"
    assert len(lines) == 4 * len(variants)
    assert sha256(bad) == bad_digest
    assert len(r.stderr.strip().splitlines()) == 1 and "bad_func+0x0" in r.stderr
    again = ftpatch("rewrite", "--check", "-q", "-r", "-j", "1", tmp_path / "tree" / "gcc-bti")
    assert again.returncode == 0 and again.stdout == ""


def test_verify_site_whose_function_has_no_symbol(tmp_path: Path) -> None:
    """Regression (kernel e2e, 40 of 9,427 sites): a function without a symbol of
    its own was emulated from the enclosing symbol's start instead of its entry."""
    objs = objects(tmp_path, "gcc-plain")
    exe = tmp_path / "static"
    sh("aarch64-linux-gnu-gcc", "-static", "-o", exe, *objs)
    assert ftpatch("rewrite", exe).returncode == 0
    sh("aarch64-linux-gnu-strip", "--strip-symbol=mulmod", exe)
    doc = scan(exe)
    assert not any(s["location"].startswith("mulmod") for s in doc["sites"])
    r = ftpatch("verify", "--trampoline", "0x400000", exe)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 violating" in r.stdout
