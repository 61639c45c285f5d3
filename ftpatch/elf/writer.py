"""The one writer of bytes: apply a Plan's same-size edits, atomically.

recordmcount's habits: check the exact bytes before patching, write a
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
from collections.abc import Iterator, Sequence

from ftpatch.elf.reader import open_regular
from ftpatch.errors import FtpatchError, WriteError
from ftpatch.model import Location, Plan


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


# What a region's new content may be: bytes, or an array in file byte order.
Buffer = bytes | bytearray | array  # type: ignore[type-arg]

def _pwrite_all(fd: int, content: Buffer, file_offset: int) -> None:
    view = memoryview(content).cast("B")  # an array's items may be wider than bytes
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


def write_plan(
    plan: Plan,
    source: str,
    data: bytes | memoryview | object,
    dest: str,
    *,
    source_name: str | None = None,
    dest_name: str | None = None,
) -> None:
    """Write ``source`` with ``plan`` applied to ``dest`` (may equal ``source``).

    ``data`` is the content the plan was made from; each edit's expected bytes
    are checked against it before anything is written.  In place (``dest``
    is ``source``) the caller holds ``locked(source)``.
    """
    view = memoryview(data)  # type: ignore[arg-type]
    try:
        regions = _regions(plan, view)
    finally:
        # Release the buffer even when an error's traceback keeps this frame
        # alive: the caller then closes the mmap, which raises BufferError
        # (an "internal error" in place of the real one) while views exist.
        view.release()
    write_regions(source, dest, regions, source_name=source_name, dest_name=dest_name)


# Edits closer than this share one region: one pwrite() instead of many.
_REGION_GAP = 1 << 16


def _regions(plan: Plan, view: memoryview) -> list[tuple[int, bytes]]:
    """Check every edit's expected bytes, then merge the edits into regions."""
    for edit in plan.edits:
        found = bytes(view[edit.file_offset : edit.file_offset + len(edit.old)])
        if found != edit.old:
            raise FtpatchError(
                edit.location,
                f"expected bytes {edit.old.hex()} at file offset {edit.file_offset:#x}, "
                f"found {found.hex()}",
            )
    regions: list[tuple[int, bytes]] = []
    edits = plan.edits  # sorted by file offset, none overlapping (plan.py)
    i = 0
    while i < len(edits):
        start = edits[i].file_offset
        j = i
        end = start + len(edits[i].new)
        while j + 1 < len(edits) and edits[j + 1].file_offset - end < _REGION_GAP:
            j += 1
            end = max(end, edits[j].file_offset + len(edits[j].new))
        content = bytearray(view[start:end])
        for edit in edits[i : j + 1]:
            o = edit.file_offset - start
            content[o : o + len(edit.new)] = edit.new
        regions.append((start, bytes(content)))
        i = j + 1
    return regions


def write_regions(
    source: str,
    dest: str,
    regions: Sequence[tuple[int, Buffer]],
    *,
    source_name: str | None = None,
    dest_name: str | None = None,
) -> None:
    """Write ``source`` to ``dest`` (may equal ``source``) with ``regions`` replaced.

    ``regions`` are (file offset, new bytes), sorted and not overlapping,
    each as long as the bytes it replaces.  The file is copied by the kernel
    (``copy_file_range``) and the regions written over the copy, so memory
    stays in proportion to what changes, not to the file.  Messages name the
    files ``source_name`` and ``dest_name`` (as the user typed them; default
    the paths).
    """
    source_loc = Location(source if source_name is None else source_name)
    dest_loc = Location(dest if dest_name is None else dest_name)
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
        end = 0
        for file_offset, content in regions:
            size = memoryview(content).nbytes
            if file_offset < end or file_offset + size > st.st_size:
                raise WriteError(
                    source_loc, f"region at file offset {file_offset:#x} out of place"
                )
            end = file_offset + size
        mode = stat.S_IMODE(st.st_mode)
        owner = st.st_uid, st.st_gid
        if dest != source and os.path.exists(dest):
            dest_st = os.stat(dest)
            mode, owner = stat.S_IMODE(dest_st.st_mode), (dest_st.st_uid, dest_st.st_gid)
        tmp_fd, tmp_path = _create_temp(dest, dest == source)
        try:
            _copy(src_fd, tmp_fd, st.st_size)
            for file_offset, content in regions:
                _pwrite_all(tmp_fd, content, file_offset)
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
