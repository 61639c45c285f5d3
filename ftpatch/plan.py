"""Pure: sites -> a Plan of same-size byte edits.  Nothing here touches a file.

For each pristine site: the first entry NOP becomes ``mov x9, x30`` and the
record moves to the second entry word, the BL slot, which is what
``ftrace_call_adjust()`` would otherwise compute at every boot.  Rewritten
sites and discarded records need nothing; an invalid site stops the whole
plan (nothing is written rather than a partial rewrite).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Literal

from ftpatch import arm64
from ftpatch.errors import SiteError
from ftpatch.model import Edit, EditColumn, EditKind, Plan, Site, State

_NOP = arm64.word_bytes(arm64.NOP)
_MOV = arm64.word_bytes(arm64.MOV_X9_X30)
_U64 = 0xFFFFFFFFFFFFFFFF


def _by_offset(edit: Edit) -> int:
    return edit.file_offset


def plan_rewrite(path: str, sites: tuple[Site, ...], *, big_endian: bool) -> Plan:
    edits: list[Edit] = []
    append = edits.append
    seen_mov: set[int] = set()
    order: Literal["big", "little"] = "big" if big_endian else "little"
    pristine = State.PRISTINE
    invalid = State.INVALID
    for site in sites:
        state = site.state
        if state is not pristine:
            if state is invalid:
                raise SiteError(site.location, site.reason or "invalid site")
            continue  # rewritten, or a discarded record left alone
        mov = site.mov_file_offset
        slot_offset = site.slot_offset
        assert mov is not None and slot_offset is not None
        if mov not in seen_mov:  # two records for one entry move, one MOV
            seen_mov.add(mov)
            append(Edit(mov, _NOP, _MOV, site, EditKind.MOV))
        record = site.record
        value = record.value
        delta = slot_offset - record.target_offset
        # Two's complement: the same bytes whether the field is an r_addend
        # (signed) or an address word (unsigned).
        old = (value & _U64).to_bytes(8, order)
        new = ((value + delta) & _U64).to_bytes(8, order)
        if record.mirror_file_offset is not None:
            append(Edit(record.mirror_file_offset, old, new, site, EditKind.RECORD_WORD))
        append(Edit(record.value_file_offset, old, new, site, EditKind.RECORD))
    edits.sort(key=_by_offset)
    end = -1
    for edit in edits:
        if edit.file_offset < end:
            raise SiteError(
                edit.location, f"edit at file offset {edit.file_offset:#x} overlaps another"
            )
        end = edit.file_offset + len(edit.old)
    return Plan(path, sites, tuple(edits))


def edit_columns(edits: Sequence[Edit]) -> list[EditColumn]:
    """A Plan's edits (sorted, not overlapping) as the writer's columns, one per width."""
    by_width: dict[int, tuple[array, list[bytes], list[bytes]]] = {}  # type: ignore[type-arg]
    for edit in edits:
        column = by_width.get(len(edit.old))
        if column is None:
            column = by_width[len(edit.old)] = (array("Q"), [], [])
        column[0].append(edit.file_offset)
        column[1].append(edit.old)
        column[2].append(edit.new)
    return [
        EditColumn(width, offsets, b"".join(old), b"".join(new))
        for width, (offsets, old, new) in sorted(by_width.items())
    ]
