"""Pure: sites -> a Plan of same-size byte edits.  Nothing here touches a file.

For each pristine site: the first entry NOP becomes ``mov x9, x30`` and the
record moves to the second entry word, the BL slot, which is what
``ftrace_call_adjust()`` would otherwise compute at every boot.  Rewritten
sites need nothing; an invalid site stops the whole plan (nothing is written
rather than a partial rewrite).
"""

from __future__ import annotations

import itertools
from typing import Literal

from ftpatch import arm64
from ftpatch.errors import SiteError
from ftpatch.model import Edit, Location, Plan, Site, State

_NOP = arm64.word_bytes(arm64.NOP)
_MOV = arm64.word_bytes(arm64.MOV_X9_X30)
_U64 = 0xFFFFFFFFFFFFFFFF


def _at(site: Site, offset: int) -> Location:
    """The site's location moved to ``offset`` in the same section."""
    loc = site.location
    if loc.offset is None:
        return loc
    sym_off = None if loc.symbol_offset is None else loc.symbol_offset + offset - loc.offset
    return Location(loc.path, loc.section, offset, loc.symbol, sym_off)


def _place(loc: Location) -> str:
    return str(loc).split(": ", 1)[-1]


def plan_rewrite(path: str, sites: tuple[Site, ...], *, big_endian: bool) -> Plan:
    edits: list[Edit] = []
    seen_mov: set[int] = set()
    order: Literal["big", "little"] = "big" if big_endian else "little"
    for site in sites:
        if site.state is State.INVALID:
            raise SiteError(site.location, site.reason or "invalid site")
        if site.state is State.REWRITTEN or site.state is State.DISCARDED:
            continue
        assert site.mov_file_offset is not None and site.mov_offset is not None
        assert site.slot_offset is not None
        if site.mov_file_offset not in seen_mov:  # two records for one entry
            seen_mov.add(site.mov_file_offset)
            edits.append(
                Edit(site.mov_file_offset, _NOP, _MOV, _at(site, site.mov_offset), "mov x9, x30")
            )
        record = site.record
        delta = site.slot_offset - record.target_offset
        # Two's complement: the same bytes whether the field is r_addend (signed)
        # or an address word (unsigned).
        old = (record.value & _U64).to_bytes(8, order)
        new = ((record.value + delta) & _U64).to_bytes(8, order)
        if record.mirror_file_offset is not None:
            edits.append(
                Edit(
                    record.mirror_file_offset,
                    old,
                    new,
                    Location(site.location.path, record.section, record.index * 8),
                    f"record word +{delta:#x}",
                )
            )
        edits.append(
            Edit(
                record.value_file_offset,
                old,
                new,
                Location(site.location.path, record.section, record.index * 8),
                f"record +{delta:#x} -> {_place(_at(site, site.slot_offset))}",
            )
        )
    edits.sort(key=lambda e: e.file_offset)
    for a, b in itertools.pairwise(edits):
        if a.file_offset + len(a.old) > b.file_offset:
            raise SiteError(b.location, f"edit overlaps the edit at file offset {a.file_offset:#x}")
    return Plan(path, sites, tuple(edits))
