"""The one writer and its one contract: edit columns of (file offset, old, new).

The one planner (plan.py) reaches the file only through ``write_edits``, which checks every old byte
against the file before anything replaces it.  Here the file changes between
the plan and the write (as a writer ignoring the lock would make it), and
the writer must refuse, naming the place and both words, with the file
left as it was.
"""

from __future__ import annotations

import shutil
import struct
from array import array
from pathlib import Path

import pytest
from conftest import fixture_path

from ftpatch import arm64
from ftpatch.elf.reader import mapped_elf
from ftpatch.elf.writer import write_edits
from ftpatch.errors import FtpatchError
from ftpatch.model import EditColumn
from ftpatch.plan import detail, plan_file
from ftpatch.rewrite import _locator
from ftpatch.scan import scan_elf

OBJECT = "obj/gcc-plain-O2.o"
BL = 0x94000010  # bl .+0x40


def _copy(tmp_path: Path, name: str = OBJECT) -> Path:
    work = tmp_path / "work.o"
    shutil.copyfile(fixture_path(name), work)
    return work


def test_changed_word_is_refused_naming_the_place_and_both_words(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    with mapped_elf(str(work)) as elf:
        columns = plan_file(elf).edits
        locate = _locator(str(work), elf, "auto")
        movs = [c for c in columns if c.width == 4]
        target = movs[0].file_offsets[1]
        with mapped_elf(str(work)) as again:
            expected_place = next(
                e.location
                for e in detail(str(work), scan_elf(again), plan_file(again).edits).edits
                if e.file_offset == target
            )
        data = bytearray(work.read_bytes())
        struct.pack_into("<I", data, target, BL)
        work.write_bytes(data)  # same inode: the plan's mmap sees it too
        with pytest.raises(FtpatchError) as info:
            write_edits(str(work), str(work), columns, locate=locate)
    message = str(info.value)
    assert message == (
        f"{expected_place}: expected nop (d503201f) at file offset {target:#x}, "
        f"found {arm64.describe(BL)}"
    )
    assert "\n" not in message
    assert work.read_bytes() == data, "the input must be left as it was"
    assert not list(tmp_path.glob(".*ftpatch-tmp")), "no temporary file left"


def test_changed_record_value_is_refused_with_both_values(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    with mapped_elf(str(work)) as elf:
        fast = plan_file(elf)
    records = next(c for c in fast.edits if c.width == 8)
    target = records.file_offsets[0]
    data = bytearray(work.read_bytes())
    old = bytes(data[target : target + 8])
    data[target : target + 8] = b"\xff" * 8
    work.write_bytes(data)
    with pytest.raises(FtpatchError, match=f"expected bytes {old.hex()} at file offset "
                       f"{target:#x}, found ffffffffffffffff"):  # fmt: skip
        write_edits(str(work), str(work), fast.edits)
    assert work.read_bytes() == data


def test_edits_that_overlap_are_refused(tmp_path: Path) -> None:
    work = _copy(tmp_path)
    before = work.read_bytes()
    nop, mov = arm64.word_bytes(arm64.NOP), arm64.word_bytes(arm64.MOV_X9_X30)
    with mapped_elf(str(work)) as elf:
        fast = plan_file(elf)
    first = next(c for c in fast.edits if c.width == 4).file_offsets[0]
    for offsets in ([first, first + 2], [first + 4, first]):
        column = EditColumn(4, array("Q", offsets), nop * 2, mov * 2)
        with pytest.raises(FtpatchError, match="overlaps another"):
            write_edits(str(work), str(work), [column])
    assert work.read_bytes() == before


def test_written_bytes_are_exactly_the_edits(tmp_path: Path) -> None:
    """Columns of both widths, dense and sparse, in one write."""
    work = _copy(tmp_path)
    out = tmp_path / "out.o"
    before = work.read_bytes()
    with mapped_elf(str(work)) as elf:
        fast = plan_file(elf)
    assert fast.edits
    write_edits(str(work), str(out), fast.edits)
    after = bytearray(before)
    for column in fast.edits:
        new = memoryview(column.new).cast("B")
        for i, o in enumerate(column.file_offsets):
            assert before[o : o + column.width] == bytes(
                memoryview(column.old).cast("B")[i * column.width : (i + 1) * column.width]
            )
            after[o : o + column.width] = new[i * column.width : (i + 1) * column.width]
    assert out.read_bytes() == bytes(after)
    assert work.read_bytes() == before
