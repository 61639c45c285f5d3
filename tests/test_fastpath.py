"""The columnar fast path of rewrite writes what the general path plans.

``ftpatch/fastpath.py`` plans compiler-made objects from array columns and
hands back None for anything else.  For every fixture (pristine, rewritten,
damaged) and for mutated ones, a rewrite that may take it must give the same
result and the same bytes as the general path (scan + plan), and the fast
path must really be taken where it is meant to be (else these tests would
compare the general path with itself).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import GOOD_OBJECTS, OBJECTS, anonymous_site_object, fixture_path, ftpatch, require

from ftpatch import arm64
from ftpatch.elf.reader import mapped_elf
from ftpatch.errors import FtpatchError
from ftpatch.fastpath import FastPlan, plan_object
from ftpatch.rewrite import rewrite_file
from ftpatch.scan import scan_file

# Fixtures the fast path takes: every well-formed one with records (the
# sites are judged by the one classifier either way, the 4,2 prefix layouts
# included); the damaged ones go to the general path for its message.
FAST = [o for o in GOOD_OBJECTS if "norecords" not in o]


def fast_plan(path: Path) -> FastPlan | None:
    with mapped_elf(str(path)) as elf:
        return plan_object(elf)


def same_both_ways(src: Path, tmp: Path) -> bool:
    """Rewrite ``src`` both ways; assert the same outcome; return fast taken."""
    outcomes = []
    for detail in (True, False):
        work = tmp / f"{'general' if detail else 'default'}.o"
        shutil.copyfile(src, work)
        try:
            r = rewrite_file(str(work), detail=detail)
            outcomes.append(
                (
                    "ok",
                    (r.sites, r.pristine, r.rewritten, r.changes, r.written),
                    work.read_bytes(),
                )
            )
        except FtpatchError as exc:
            outcomes.append(("error", str(exc).replace(str(work), "F"), work.read_bytes()))
    general, default = outcomes
    assert default[0] == general[0]
    assert default[1] == general[1]
    assert default[2] == general[2]
    return fast_plan(src) is not None


@pytest.mark.parametrize("name", OBJECTS)
def test_fixture(name: str, tmp_path: Path) -> None:
    taken = same_both_ways(fixture_path(name), tmp_path)
    assert taken == (name in FAST)


@pytest.mark.parametrize("name", FAST)
def test_rewritten_fixture(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    assert ftpatch("rewrite", fixture_path(name), "-o", out).returncode == 0
    assert same_both_ways(out, tmp_path)
    # A second rewrite finds every site rewritten and changes nothing.
    plan = fast_plan(out)
    assert plan is not None and plan.pristine == 0 and plan.edits == []


def _words_near_sites(path: Path) -> list[int]:
    """File offsets of the instruction words around every site."""
    with scan_file(str(path)) as result:
        code = {s.sh_offset: s.sh_size for s in result.elf.sections if s.is_code}
        out = []
        for site in result.sites:
            if site.mov_file_offset is None or site.mov_offset is None:
                continue
            base = site.mov_file_offset - site.mov_offset  # the code section's sh_offset
            for d in (-8, -4, 0, 4, 8):
                o = site.mov_file_offset + d
                if base <= o <= base + code[base] - 4:
                    out.append(o)
        return out


_ODD_WORDS = (
    arm64.NOP,
    arm64.MOV_X9_X30,
    0xD503245F,  # bti c
    0xD65F03C0,  # ret
    0x94000000,  # bl .
)


@pytest.mark.parametrize("name", FAST)
def test_damaged_words(name: str, tmp_path: Path) -> None:
    """Half-rewritten, shifted and odd entries: both paths still agree."""
    src = fixture_path(name)
    data = src.read_bytes()
    offsets = _words_near_sites(src)
    rng = random.Random(name)
    taken = 0
    for n in range(40):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            struct.pack_into("<I", buf, rng.choice(offsets), rng.choice(_ODD_WORDS))
        case = tmp_path / f"case{n}.o"
        case.write_bytes(buf)
        taken += same_both_ways(case, tmp_path)
    # Some damage leaves the common layouts (MOV over a NOP that was already
    # NOP-equivalent, ...) and some does not: both paths are exercised.
    assert 0 < taken < 40


def test_string_table_not_in_the_file(tmp_path: Path) -> None:
    """The symtab's sh_link names a SHT_NULL header with an offset past the
    file (never range-checked by the reader): both paths give the same error."""
    src = fixture_path("obj/gcc-plain-O2.o")
    data = bytearray(src.read_bytes())
    with mapped_elf(str(src)) as elf:
        assert elf.symtab is not None
        header = elf.e_shoff + 64 * elf.symtab.sh_link
    struct.pack_into("<I", data, header + 4, 0)  # sh_type = SHT_NULL
    struct.pack_into("<Q", data, header + 24, 1 << 63)  # sh_offset
    case = tmp_path / "case.o"
    case.write_bytes(data)
    assert not same_both_ways(case, tmp_path)
    with pytest.raises(FtpatchError, match="string table at file offset 0x8000000000000000"):
        rewrite_file(str(case))


def test_site_without_its_own_symbol(tmp_path: Path) -> None:
    """As 46 sites of a Linux 6.1 vmlinux.o: no symbol on the entry (here the
    local 'twice' stripped), judged by its words on the fast path too."""
    require("aarch64-linux-gnu-strip")
    case = tmp_path / "stripped.o"
    subprocess.run(
        ["aarch64-linux-gnu-strip", "--strip-symbol=twice", "-o", case,
         fixture_path("obj/gcc-plain-O2.o")],
        check=True,
    )  # fmt: skip
    with scan_file(str(case)) as result:
        places = [str(s.location).split(": ")[1] for s in result.sites]
    assert "mix+0x30" in places and not any(p.startswith("twice") for p in places)
    assert same_both_ways(case, tmp_path)


@pytest.mark.toolchain
@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("compiler", ["clang", "gcc"])
def test_symbol_less_call_ops_site_taken_with_the_files_prefix(
    compiler: str, bti: bool, tmp_path: Path
) -> None:
    """An overridden weak function's record in a CALL_OPS ld -r object (no
    symbol, nop ; nop ; nop ; nop: as 44 sites of Linux 6.12's vmlinux.o) is
    resolved in columns by the prefix the file's other sites show, as
    scan_elf resolves it: the fast path takes the file and writes what the
    general path plans (tests/test_weak_prefix.py checks those bytes against
    the kernel's rule)."""
    from test_weak_prefix import build

    ko = build(tmp_path, compiler, bti)
    with scan_file(str(ko)) as result:
        # The weak function's site: no function symbol decides where it is entered.
        assert any(s.entry_offset is None and s.layout for s in result.sites)
    assert same_both_ways(ko, tmp_path)


def test_symbol_less_site_without_a_known_prefix_goes_to_the_general_path(
    tmp_path: Path,
) -> None:
    """No other site says the prefix: the fast path hands the file over, and
    both paths refuse it alike (test_weak_prefix.py: the message)."""
    obj = anonymous_site_object(tmp_path)
    assert not same_both_ways(obj, tmp_path)
    with pytest.raises(FtpatchError, match="is not known"):
        rewrite_file(str(obj))
