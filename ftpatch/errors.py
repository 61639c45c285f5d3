"""The one exception family of ftpatch.

The core raises; only ``cli.py`` turns an error into a message and an exit
status.  Every error names its place, objtool style: ``file: sym+0xoff: what``.
"""

from __future__ import annotations

from ftpatch.model import Location


class FtpatchError(Exception):
    """Bad input or an impossible request: exit status 2, input untouched."""

    exit_status = 2

    def __init__(self, location: Location | str, message: str) -> None:
        self.location = location
        self.message = message
        super().__init__(f"{location}: {message}")


class NotElfError(FtpatchError):
    """The file is not an ELF file, or not the kind ftpatch handles."""


class MalformedElfError(FtpatchError):
    """A header, table or entry points outside the file or is inconsistent."""


class SiteError(FtpatchError):
    """A patch site is neither pristine nor rewritten (or half rewritten)."""


class WriteError(FtpatchError):
    """Writing the result failed (disk full, permissions); the input is intact."""
