"""One file through the rewrite pipeline: lock, scan, plan, write.

objtool's shape: decide first, mark what changed, write only if something
did.  ``check`` and ``dry_run`` stop after the plan.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import NamedTuple

from ftpatch.elf.container import HEAD_SIZE, compression_of
from ftpatch.elf.reader import ElfFile, mapped_elf, open_regular
from ftpatch.elf.writer import locked, write_edits
from ftpatch.errors import FtpatchError
from ftpatch.model import Location, Plan, RecordsMode
from ftpatch.plan import plan_file


class RewriteResult(NamedTuple):
    """What one file's rewrite found and did (a NamedTuple: cheaper to define
    at start-up than a frozen dataclass)."""

    path: str
    output: str
    sites: int
    pristine: int  # sites this rewrite changes (or would change)
    rewritten: int  # sites found already rewritten
    changes: bool
    written: bool  # a file was written (output differs from input, or -o given)
    # The whole plan, site by site, for output that shows it (detail=True).
    plan: Plan | None = None
    skipped: int = 0  # zero records of a linked image, left alone
    signed: bool = False  # the input ends in an appended module signature
    # The output is the ELF data alone, the signature dropped (or, with
    # check/dry_run, would be): strip_signature on a signed input.
    strips: bool = False


def rewrite_file(
    path: str,
    output: str | None = None,
    *,
    check: bool = False,
    dry_run: bool = False,
    records_mode: RecordsMode = "auto",
    detail: bool = False,
    strip_signature: bool = False,
) -> RewriteResult:
    """Rewrite one file (in place, or to ``output``); ``detail`` keeps the
    Plan site by site (``--dry-run``, ``--json``), built from the same edit
    columns that are written.

    A compressed input is refused: writing it back would mean compressing
    again, which is the install's business.  A signed module
    (elf/container.py) whose sites need rewriting is refused, as the edits
    would break its signature, unless ``strip_signature``: then the output
    is its ELF data alone, rewritten, ready for ``scripts/sign-file``.
    Checking, planning, and a signed module with nothing to rewrite, touch
    no signature and go ahead.
    """
    # Rewriting in place through a symlink rewrites its target and keeps the link.
    source = os.path.realpath(path)
    dest = source if output is None else output
    shown = path if output is None else output
    # Before the lock, which opens the file: a FIFO would wait there forever.
    # Messages name the file as typed (``path``), never its resolved target.
    os.close(open_regular(source, path))
    if output is None and not (check or dry_run):
        try:
            st = os.stat(source)
        except OSError as exc:
            raise FtpatchError(Location(path), f"cannot open: {exc.strerror}") from None
        if not stat.S_IMODE(st.st_mode) & 0o222:
            raise FtpatchError(
                Location(path), "file is read-only; refusing to rewrite it in place (use -o)"
            )
        # The rewrite replaces the file by rename, which only needs the
        # directory: refuse a file this user could not write itself (another
        # owner's, or on a read-only mount), as an in-place write would.
        if not os.access(source, os.W_OK, effective_ids=os.access in os.supports_effective_ids):
            raise FtpatchError(
                Location(path),
                "file is not writable by this user; refusing to replace it in place (use -o)",
            )
    with locked(source, path) as fd:
        _refuse_compressed(path, fd)
        with mapped_elf(source, path, compressed=False) as elf:
            return _rewrite_open(
                path,
                source,
                dest,
                shown,
                elf,
                output=output,
                check=check,
                dry_run=dry_run,
                records_mode=records_mode,
                detail=detail,
                strip_signature=strip_signature,
            )


def _refuse_compressed(path: str, fd: int) -> None:
    try:
        head = os.pread(fd, HEAD_SIZE, 0)
    except OSError as exc:
        raise FtpatchError(Location(path), f"cannot read: {exc.strerror}") from None
    kind = compression_of(head)
    if kind is not None:
        raise FtpatchError(
            Location(path),
            f"{kind.value}-compressed module: rewrite refuses compressed input (it would have "
            "to compress it again); rewrite the .ko before modules_install compresses it, or "
            f"decompress it, rewrite, and compress it again ({kind.value})",
        )


def _refuse_signed(path: str, pristine: int) -> FtpatchError:
    return FtpatchError(
        Location(path),
        f"signed module (appended signature): rewriting its {pristine} pristine site"
        f"{'s' if pristine != 1 else ''} would break the signature; rewrite before signing "
        "(the kernel build rewrites in Makefile.modfinal, modules_install signs after), or "
        "pass --strip-signature and sign the result again (scripts/sign-file)",
    )


def _rewrite_open(
    path: str,
    source: str,
    dest: str,
    shown: str,
    elf: ElfFile,
    *,
    output: str | None,
    check: bool,
    dry_run: bool,
    records_mode: RecordsMode,
    detail: bool,
    strip_signature: bool,
) -> RewriteResult:
    """``rewrite_file`` on the open, locked input."""
    planned = plan_file(elf, records_mode)
    plan: Plan | None = None
    if detail:
        from ftpatch.plan import detail as plan_detail
        from ftpatch.scan import scan_elf

        plan = plan_detail(path, scan_elf(elf, records_mode), planned.edits)
    signed = elf.signature is not None
    strips = signed and strip_signature
    result = RewriteResult(
        path,
        shown,
        planned.sites,
        planned.pristine,
        planned.rewritten,
        bool(planned.edits),
        False,
        plan,
        planned.skipped,
        signed,
        strips,
    )
    if check or dry_run:
        return result
    if signed and result.changes and not strips:
        raise _refuse_signed(path, result.pristine)
    if not result.changes and not strips and output is None:
        return result
    write_edits(
        source,
        dest,
        planned.edits,
        source_name=path,
        dest_name=shown,
        locate=_locator(path, elf, records_mode),
        size=elf.size if strips else None,
    )
    return result._replace(written=True)


def _locator(path: str, elf: ElfFile, records_mode: RecordsMode) -> Callable[[int], Location]:
    """File offset of an edit -> the place it changes, for the writer's
    messages.  The plan keeps no Sites: they are made here from the file as
    it is now, only when a message needs one."""

    def locate(file_offset: int) -> Location:
        from ftpatch.scan import scan_elf

        try:
            sites = scan_elf(elf, records_mode)
        except FtpatchError:
            return Location(path)
        for site in sites:
            if site.mov_file_offset == file_offset and site.mov_offset is not None:
                return site.location.moved(site.mov_offset)
            record = site.record
            if file_offset in (record.value_file_offset, record.mirror_file_offset):
                return Location(path, record.section, record.index * 8)
        return Location(path)

    return locate
