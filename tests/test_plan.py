"""The one rewrite planner (ftpatch/plan.py) on what it meets.

Objects relocated the compilers' way are planned from array columns, odd
objects and linked images record by record; either way each site is judged
by ``classify.classify_file``, and what ``--dry-run`` shows is the plan that
is written.  The bytes themselves are checked against an independent reader
in test_rewrite.py and test_weak_prefix.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import GOOD_OBJECTS, anonymous_site_object, fixture_path, ftpatch, require

from ftpatch.elf.reader import mapped_elf
from ftpatch.errors import FtpatchError
from ftpatch.model import Site
from ftpatch.rewrite import rewrite_file
from ftpatch.scan import scan_file

WITH_RECORDS = [o for o in GOOD_OBJECTS if "norecords" not in o]


@pytest.mark.parametrize("name", WITH_RECORDS)
def test_dry_run_shows_the_edits_that_are_written(name: str, tmp_path: Path) -> None:
    """Every edit --dry-run --json lists, applied to the input, gives exactly
    the file rewrite writes: the detail is the plan, not a second one."""
    src = tmp_path / "in.o"
    shutil.copyfile(fixture_path(name), src)
    src.chmod(0o644)
    before = src.read_bytes()
    doc = json.loads(ftpatch("rewrite", "--dry-run", "--json", src).stdout)["files"][0]
    assert src.read_bytes() == before
    expected = bytearray(before)
    for edit in doc["edits"]:
        old, new = bytes.fromhex(edit["old"]), bytes.fromhex(edit["new"])
        o = edit["file_offset"]
        assert before[o : o + len(old)] == old, edit
        expected[o : o + len(new)] = new
    out = tmp_path / "out.o"
    assert ftpatch("rewrite", "-o", out, src).returncode == 0
    assert out.read_bytes() == bytes(expected)
    with scan_file(str(src)) as result:
        pristine = [s for s in result.sites if s.state.value == "pristine"]
    # One MOV per pristine entry and one record value per pristine record.
    movs = {s.mov_file_offset for s in pristine}
    assert len(doc["edits"]) == len(movs) + len(pristine)


def test_string_table_not_in_the_file(tmp_path: Path) -> None:
    """The symtab's sh_link names a SHT_NULL header with an offset past the
    file (never range-checked by the reader): one error, nothing written."""
    src = fixture_path("obj/gcc-plain-O2.o")
    data = bytearray(src.read_bytes())
    with mapped_elf(str(src)) as elf:
        assert elf.symtab is not None
        header = elf.e_shoff + 64 * elf.symtab.sh_link
    struct.pack_into("<I", data, header + 4, 0)  # sh_type = SHT_NULL
    struct.pack_into("<Q", data, header + 24, 1 << 63)  # sh_offset
    case = tmp_path / "case.o"
    case.write_bytes(data)
    with pytest.raises(FtpatchError, match="string table at file offset 0x8000000000000000"):
        rewrite_file(str(case))
    assert case.read_bytes() == data


def test_site_without_its_own_symbol(tmp_path: Path) -> None:
    """As 46 sites of a Linux 6.1 vmlinux.o: no symbol on the entry (here the
    local 'twice' stripped): entered where its words start, rewritten, and
    the result verifies."""
    require("aarch64-linux-gnu-strip")
    case = tmp_path / "stripped.o"
    subprocess.run(
        ["aarch64-linux-gnu-strip", "--strip-symbol=twice", "-o", case,
         fixture_path("obj/gcc-plain-O2.o")],
        check=True,
    )  # fmt: skip
    with scan_file(str(case)) as result:
        places = [s.location.place for s in result.sites]
        twice = result.sites[places.index("mix+0x30")]
    assert not any(p.startswith("twice") for p in places)
    # Named after the function before it, entered where its own words start.
    assert twice.entry_offset == twice.mov_offset == twice.record.target_offset
    assert ftpatch("rewrite", case).returncode == 0
    v = ftpatch("verify", case)
    assert v.returncode == 0, v.stdout + v.stderr


def function_start(site: Site) -> int | None:
    loc = site.location
    if loc.symbol is None or loc.offset is None or loc.symbol_offset is None:
        return None
    return loc.offset - loc.symbol_offset


@pytest.mark.toolchain
@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("compiler", ["clang", "gcc"])
def test_symbol_less_call_ops_site_takes_the_files_prefix(
    compiler: str, bti: bool, tmp_path: Path
) -> None:
    """An overridden weak function's record in a CALL_OPS ld -r object (no
    symbol, nop ; nop ; [bti] nop ; nop: as 44 sites of Linux 6.12's
    vmlinux.o): entered past the two prefix NOPs the file's other sites
    show, its literal those two NOPs (tests/test_weak_prefix.py checks the
    bytes against the kernel's rule)."""
    from test_weak_prefix import build

    ko = build(tmp_path, compiler, bti)
    with scan_file(str(ko)) as result:
        assert result.prefix == 2
        # Named after the function before them, if any: not entered there.
        anonymous = [s for s in result.sites if s.entry_offset != function_start(s)]
        assert anonymous
        for s in anonymous:
            r = s.record.target_offset
            assert s.entry_offset == r + 8 and s.literal_offset == r, s
    assert ftpatch("rewrite", ko).returncode == 0
    with scan_file(str(ko)) as result:
        for s in result.sites:
            assert s.state.value == "rewritten"
            assert s.literal_offset == s.entry_offset - 8, s  # type: ignore[operator]


def test_symbol_less_site_without_a_known_prefix_is_refused(tmp_path: Path) -> None:
    """No other site says the prefix: the file is refused, never guessed
    (test_weak_prefix.py: the message)."""
    obj = anonymous_site_object(tmp_path)
    before = obj.read_bytes()
    with pytest.raises(FtpatchError, match="is not known"):
        rewrite_file(str(obj))
    assert obj.read_bytes() == before
