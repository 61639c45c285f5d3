"""The one writer of bytes: apply same-size edits, atomically.

Every caller hands it the one plan contract, edit columns of (file offset,
old bytes, new bytes) (``model.EditColumn``), from the one planner
(plan.py).  recordmcount's habits:
check the exact bytes before patching, write a
temporary file beside the target, fsync it, rename it over the target, so a
crash or a full disk leaves either the original or the complete rewrite.
The rest of the file is copied by the kernel (``copy_file_range``) and never
re-laid out, so every byte not named by an edit stays identical; the edited
regions are written over the copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise, repeat
from operator import and_ as _and
from operator import floordiv, sub
from typing import Literal

from ftpatch.elf.reader import open_regular
from ftpatch.errors import FtpatchError, WriteError
from ftpatch.model import EditColumn, Location


@contextlib.contextmanager
def locked(path: str, name: str | None = None) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (the file, not a lock file).

    Writers replace the file by rename, so a waiter may wake up holding the
    lock of an inode that is no longer ``path``: it then retries on the new
    one.  This serialises concurrent ``ftpatch rewrite`` runs on one file
    (a parallel make mishap) so that no record is moved twice.  ``name`` is
    the file as the user typed it, for messages; anything but a regular file
    is refused before it is opened (elf/reader.py: open_regular).
    """
    while True:
        fd = open_regular(path, name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                mine.st_ino,
                mine.st_dev,
            ):
                yield fd
                return
        finally:
            os.close(fd)


def _copy(src_fd: int, dst_fd: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except OSError as exc:
        if exc.errno not in (18, 22, 38, 95):  # EXDEV EINVAL ENOSYS EOPNOTSUPP: fall back
            raise
    while offset < size:
        chunk = os.pread(src_fd, min(1 << 22, size - offset), offset)
        if not chunk:
            raise OSError(5, "short read")
        os.pwrite(dst_fd, chunk, offset)
        offset += len(chunk)


def _pwrite_all(fd: int, content: bytearray, file_offset: int) -> None:
    view = memoryview(content)
    while view:
        n = os.pwrite(fd, view, file_offset)
        view = view[n:]
        file_offset += n


TMP_SUFFIX = ".ftpatch-tmp"


def temp_path(dest: str) -> str:
    """The temporary file of an in-place rewrite of ``dest``: ``.NAME.ftpatch-tmp``.

    One fixed name per file: only the holder of ``locked(dest)`` writes it,
    so one left by a killed run (SIGKILL, power loss) is stale by the time
    anyone else holds the lock, and the next in-place run replaces it.
    """
    head, tail = os.path.split(dest)
    return os.path.join(head, "." + tail + TMP_SUFFIX)


def _create_temp(dest: str, in_place: bool) -> tuple[int, str]:
    if not in_place:
        # -o OUT: not serialised by the lock on the input; a random name.
        return tempfile.mkstemp(
            prefix="." + os.path.basename(dest) + ".",
            suffix=TMP_SUFFIX,
            dir=os.path.dirname(os.path.abspath(dest)),
        )
    path = temp_path(dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale: its writer died holding the lock we now hold
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, 0o600), path


# Edits closer than this share one region: one pread() and one pwrite().
_REGION_GAP = 1 << 16
# A column with an edit every this many bytes or fewer is one region.
_DENSE = 1 << 10

# A region: file offsets [start, end) and the edits in it, as (column, first, stop).
_Region = tuple[int, int, list[tuple[EditColumn, int, int]]]


def _regions(columns: Sequence[EditColumn], file_size: int, where: Location) -> list[_Region]:
    """The regions the edits fall in, sorted; refuses edits outside the file.

    A dense column (a code section's MOVs, a RELA table's addends) is one
    region, found from its first and last offsets alone; a sparse one is
    split where edits are far apart.  That the edits ascend without
    overlapping is checked with their bytes (``_check_and_apply``).
    """
    runs: list[_Region] = []
    for col in columns:
        offsets, w = col.file_offsets, col.width
        n = len(offsets)
        old_size, new_size = memoryview(col.old).nbytes, memoryview(col.new).nbytes
        if old_size != n * w or new_size != n * w:
            raise WriteError(where, f"{n} edits of {w} bytes with {old_size} old, {new_size} new")
        if not n:
            continue
        start, end = offsets[0], offsets[-1] + w
        if end - start <= max(_REGION_GAP, n * _DENSE) or end <= start:
            runs.append((start, max(end, start + w), [(col, 0, n)]))
            continue
        first = 0
        end = start
        for i in range(n):
            o = offsets[i]
            if o - end >= _REGION_GAP:
                runs.append((start, end, [(col, first, i)]))
                first, start = i, o
            end = max(end, o + w)
        runs.append((start, end, [(col, first, n)]))
    runs.sort(key=_region_start)
    merged: list[_Region] = []
    for start, end, parts in runs:
        if end > file_size:
            raise WriteError(where, f"edit at file offset {end - 1:#x} lies outside the file")
        if merged and start < merged[-1][1]:
            # Columns meet (only a hostile file's overlapping sections do):
            # one region, every edit checked against every other.
            last = merged.pop()
            start, end, parts = last[0], max(last[1], end), last[2] + parts
            spans = sorted((o, o + c.width) for c, lo, hi in parts for o in c.file_offsets[lo:hi])
            for (_, a_end), (b, _) in pairwise(spans):
                if b < a_end:
                    raise WriteError(where, f"edit at file offset {b:#x} overlaps another")
        merged.append((start, end, parts))
    return merged


def _region_start(region: _Region) -> int:
    return region[0]


def _mismatch(width: int, file_offset: int, old: bytes, found: bytes) -> str:
    """Expected and found bytes, disassembled when they are instruction words."""
    if width == 4:
        from ftpatch import arm64  # only for the message

        expected = arm64.describe(arm64.read_word(old, 0))
        seen = arm64.describe(arm64.read_word(found, 0))
        return f"expected {expected} at file offset {file_offset:#x}, found {seen}"
    return f"expected bytes {old.hex()} at file offset {file_offset:#x}, found {found.hex()}"


_ITEMS: dict[int, Literal["I", "Q"]] = {4: "I", 8: "Q"}


def _check_and_apply(
    buf: bytearray,
    base: int,
    col: EditColumn,
    lo: int,
    hi: int,
    locate: Callable[[int], Location],
) -> None:
    """Check that ``buf`` (the file from ``base``) holds the old bytes of
    edits ``lo:hi`` of ``col``, then put the new ones in.

    In bulk where the edits lie on one grid (every MOV word of a section,
    every r_addend of a RELA table): read as array items (one strided slice
    for evenly spaced edits) and compared with one array comparison; others
    one slice at a time.  Either way the edits must ascend without
    overlapping.
    """
    w = col.width
    offsets = col.file_offsets[lo:hi]
    with memoryview(col.old) as o_view, memoryview(col.new) as n_view:
        old = o_view.cast("B")[lo * w : hi * w].tobytes()
        new = n_view.cast("B")[lo * w : hi * w].tobytes()
    n = len(offsets)
    o0 = offsets[0]
    code = _ITEMS.get(w)
    if code is not None and len(set(map(_and, offsets, repeat(w - 1, n)))) == 1:
        step = offsets[1] - o0 if n > 1 else w
        span = offsets[-1] - o0 + w
        if span < n * w:  # not ascending, or overlapping
            _refuse_order(offsets, w, locate)
        with memoryview(buf)[o0 - base : o0 - base + span] as raw, raw.cast(code) as view:
            items: Sequence[int]
            if step % w == 0 and offsets == array("Q", range(o0, o0 + n * step, step)):
                items = range(0, n * step // w, step // w)
                found = array(code, view[:: step // w].tobytes())
            else:
                items = array("Q", map(floordiv, map(sub, offsets, repeat(o0, n)), repeat(w, n)))
                if n > 1 and min(map(sub, items[1:], items)) <= 0:
                    _refuse_order(offsets, w, locate)
                found = array(code, map(view.__getitem__, items))
            expected = array(code, old)
            if found != expected:
                i = next(i for i in range(n) if found[i] != expected[i])
                raise FtpatchError(
                    locate(offsets[i]),
                    _mismatch(w, offsets[i], old[i * w : i * w + w], found[i : i + 1].tobytes()),
                )
            replacement = array(code, new)
            if isinstance(items, range):
                view[:: step // w] = replacement
            elif new == new[:w] * n:  # one word for all (every MOV)
                word = replacement[0]
                for k in items:
                    view[k] = word
            else:
                for k, value in zip(items, replacement, strict=True):
                    view[k] = value
        return
    end = base
    for i, o in enumerate(offsets):
        if o < end:
            _refuse_order(offsets, w, locate)
        end = o + w
        r = o - base
        if buf[r : r + w] != old[i * w : i * w + w]:
            raise FtpatchError(
                locate(o), _mismatch(w, o, old[i * w : i * w + w], bytes(buf[r : r + w]))
            )
        buf[r : r + w] = new[i * w : i * w + w]


def _refuse_order(offsets: Sequence[int], width: int, locate: Callable[[int], Location]) -> None:
    for a, b in pairwise(offsets):
        if b < a + width:
            raise WriteError(locate(b), f"edit at file offset {b:#x} overlaps another")
    raise AssertionError("edits in order")  # pragma: no cover - callers found one


def write_edits(
    source: str,
    dest: str,
    columns: Sequence[EditColumn],
    *,
    source_name: str | None = None,
    dest_name: str | None = None,
    locate: Callable[[int], Location] | None = None,
    size: int | None = None,
) -> None:
    """Write ``source`` to ``dest`` (may equal ``source``) with ``columns`` applied.

    ``size``: write only the first ``size`` bytes of ``source`` (a module's
    ELF data without its appended signature); default the whole file.

    The one writer, and its one contract: every edit is (file offset, old
    bytes, new bytes), and the old bytes are checked against ``source`` before
    anything replaces ``dest``; a mismatch names the place (``locate``: file
    offset -> Location, default the file) and both words, disassembled.  In
    place (``dest`` is ``source``) the caller holds ``locked(source)``.

    The file is copied by the kernel (``copy_file_range``) and the edited
    regions, read with pread and patched, written over the copy, so memory
    stays in proportion to what changes, not to the file.  Messages name the
    files ``source_name`` and ``dest_name`` (as the user typed them; default
    the paths).
    """
    source_loc = Location(source if source_name is None else source_name)
    dest_loc = Location(dest if dest_name is None else dest_name)
    if locate is None:
        locate = _whole_file(source_loc)
    if dest != source and os.path.islink(dest):
        # -o LINK writes the link's target and keeps the link, as ld does
        # and as an in-place rewrite of a link does.
        dest = os.path.realpath(dest)
    dest_dir = os.path.dirname(os.path.abspath(dest))
    try:
        src_fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise WriteError(source_loc, f"cannot open: {exc.strerror}") from None
    tmp_path: str | None = None
    try:
        st = os.fstat(src_fd)
        length = st.st_size if size is None else min(size, st.st_size)
        regions = _regions(columns, length, source_loc)
        mode = stat.S_IMODE(st.st_mode)
        owner = st.st_uid, st.st_gid
        if dest != source and os.path.exists(dest):
            dest_st = os.stat(dest)
            mode, owner = stat.S_IMODE(dest_st.st_mode), (dest_st.st_uid, dest_st.st_gid)
        tmp_fd, tmp_path = _create_temp(dest, dest == source)
        try:
            _copy(src_fd, tmp_fd, length)
            for start, end, parts in regions:
                buf = bytearray(end - start)
                if os.preadv(src_fd, [buf], start) != len(buf):
                    raise OSError(5, "short read")
                for col, lo, hi in parts:
                    _check_and_apply(buf, start, col, lo, hi, locate)
                _pwrite_all(tmp_fd, buf, start)
                del buf  # before the next region's: one at a time
            # The new inode keeps the owner (root rewriting a user's build
            # tree) where permitted; fchown clears set-id bits, so it goes first.
            with contextlib.suppress(PermissionError):
                os.fchown(tmp_fd, *owner)
            os.fchmod(tmp_fd, mode)
            os.fsync(tmp_fd)
        finally:
            os.close(tmp_fd)
        os.replace(tmp_path, dest)
        tmp_path = None
        dir_fd = os.open(dest_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise WriteError(dest_loc, f"cannot write: {reason}; input left unchanged") from None
    finally:
        os.close(src_fd)
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_path)


def _whole_file(where: Location) -> Callable[[int], Location]:
    def locate(file_offset: int) -> Location:
        return where

    return locate
