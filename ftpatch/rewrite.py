"""One file through the rewrite pipeline: lock, scan, plan, write.

objtool's shape: decide first, mark what changed, write only if something
did.  ``check`` and ``dry_run`` stop after the plan.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ftpatch.elf.writer import locked, write_plan
from ftpatch.errors import FtpatchError
from ftpatch.model import Location, Plan, RecordsMode, State
from ftpatch.plan import plan_rewrite
from ftpatch.scan import scan_file


@dataclass(frozen=True)
class RewriteResult:
    path: str
    output: str
    plan: Plan
    written: bool  # a file was written (output differs from input, or -o given)

    @property
    def pristine(self) -> int:
        return sum(1 for s in self.plan.sites if s.state is State.PRISTINE)

    @property
    def rewritten(self) -> int:
        return sum(1 for s in self.plan.sites if s.state is State.REWRITTEN)


def rewrite_file(
    path: str,
    output: str | None = None,
    *,
    check: bool = False,
    dry_run: bool = False,
    records_mode: RecordsMode = "auto",
) -> RewriteResult:
    # Rewriting in place through a symlink rewrites its target and keeps the link.
    source = os.path.realpath(path)
    dest = source if output is None else output
    shown = path if output is None else output
    if output is None and not (check or dry_run):
        try:
            st = os.stat(source)
        except OSError as exc:
            raise FtpatchError(Location(path), f"cannot open: {exc.strerror}") from None
        if not stat.S_IMODE(st.st_mode) & 0o222:
            raise FtpatchError(
                Location(path), "file is read-only; refusing to rewrite it in place (use -o)"
            )
    with locked(source):
        with scan_file(source, records_mode) as result:
            plan = plan_rewrite(path, result.sites, big_endian=result.elf.big_endian)
            if check or dry_run:
                return RewriteResult(path, shown, plan, False)
            if not plan.changes and output is None:
                return RewriteResult(path, shown, plan, False)
            write_plan(plan, source, result._data, dest)
            return RewriteResult(path, shown, plan, True)
