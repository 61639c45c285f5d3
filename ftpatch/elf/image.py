"""Records of linked images (ET_EXEC, ET_DYN)."""

from __future__ import annotations

from ftpatch.elf.reader import ElfFile
from ftpatch.elf.records import RawRecord
from ftpatch.errors import NotElfError
from ftpatch.model import Location, RecordKind


def image_records(elf: ElfFile) -> tuple[list[RawRecord], RecordKind]:
    raise NotElfError(
        Location(elf.path), "linked images are not supported yet: give relocatable objects"
    )
