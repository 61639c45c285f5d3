"""The runtime transitions of one site and the emulation cases built from them.

A transition (enable NOP -> BL, disable BL -> NOP, retarget BL -> BL'; under
two-slot the MOV written and removed too) is the words before it and the
stores the patcher makes, in its order.  A case (``data.Case``) is the words
from where callers enter to the first body instruction, at their addresses,
with those stores and the trampolines the BL words call.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpatch import arm64
from ftpatch.elf.reader import Section
from ftpatch.verify.data import Case, Store
from ftpatch.verify.findings import Scheme
from ftpatch.verify.view import FileView


@dataclass(frozen=True)
class Transition:
    """One runtime transition: the words before and after, and the stores between."""

    name: str
    before: dict[int, int]  # offset in the section -> word
    stores: tuple[tuple[int, int, int], ...]  # (offset, old, new) in the patcher's order


def trampolines(view: FileView, slot_address: int) -> tuple[int, int]:
    """Trampoline addresses for the emulation: the real one when reachable."""
    t = view.trampoline
    if view.linked and t is not None and t.address is not None and t.address % 4 == 0:
        real = t.address
        if -arm64.BL_RANGE <= real - slot_address < arm64.BL_RANGE:
            for second in (real + 0x1000, real - 0x1000):
                if -arm64.BL_RANGE <= second - slot_address < arm64.BL_RANGE and (
                    abs(second - slot_address) > 0x2000
                ):
                    return real, second
    block = slot_address & ~0xFFFFF
    t1 = block - 0x100000 if block >= 0x200000 else block + 0x200000
    return t1, t1 + 0x1000


def trampoline_names(view: FileView, t1: int, t2: int) -> dict[int, str]:
    """What a BL to each trampoline is called in messages."""
    known = view.trampoline
    first = known.name if known is not None and known.name and known.address == t1 else "trampoline"
    return {t1: first, t2: "trampoline2"}


def transitions(
    view: FileView, sec: Section, patched: int, mov: int | None, t1: int, t2: int
) -> tuple[Transition, ...]:
    bl1 = arm64.encode_bl(view.address(sec, patched), t1)
    bl2 = arm64.encode_bl(view.address(sec, patched), t2)
    w_slot = view.word(sec, patched)
    assert w_slot is not None
    if w_slot == arm64.NOP:
        w_slot = arm64.NOP  # one int for every site's NOP (the report keeps them)
    if view.scheme is Scheme.SINGLE_SLOT:
        return (
            Transition("enable", {}, ((patched, w_slot, bl1),)),
            Transition("disable", {patched: bl1}, ((patched, bl1, w_slot),)),
            Transition("retarget", {patched: bl1}, ((patched, bl1, bl2),)),
        )
    assert mov is not None
    w_mov = view.word(sec, mov)
    assert w_mov is not None

    def changed(*stores: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
        return tuple(s for s in stores if s[1] != s[2])

    enabled = {mov: arm64.MOV_X9_X30, patched: bl1}
    return (
        Transition("enable", {}, changed((mov, w_mov, arm64.MOV_X9_X30), (patched, w_slot, bl1))),
        Transition(
            "disable", enabled, changed((patched, bl1, w_slot), (mov, arm64.MOV_X9_X30, w_mov))
        ),
        Transition("retarget", enabled, changed((patched, bl1, bl2))),
    )


def site_stores(
    view: FileView,
    sec: Section,
    patched: int,
    slot_address: int,
    ts: tuple[Transition, ...],
) -> tuple[tuple[Store, ...], ...]:
    """Each transition's stores at their addresses (the patched word's is the
    slot address already computed: the report keeps one int for them)."""
    return tuple(
        tuple(
            Store(slot_address if o == patched else view.address(sec, o), old, new)
            for o, old, new in t.stores
        )
        for t in ts
    )


def emulation_cases(
    view: FileView,
    sec: Section,
    ts: tuple[Transition, ...],
    stores: tuple[tuple[Store, ...], ...],
    start: int,
    body: int,
    entry: int,
    tramps: tuple[int, int],
) -> tuple[Case, ...]:
    """One case per transition: the words from ``start`` to ``body`` as they
    are before it, entered at ``entry``."""
    file_words = [view.word(sec, o) for o in range(start, body, 4)]
    cases = []
    for t, t_stores in zip(ts, stores, strict=True):
        words = tuple(t.before.get(start + 4 * i, w or 0) for i, w in enumerate(file_words))
        cases.append(
            Case(
                view.address(sec, start),
                words,
                view.address(sec, entry),
                t_stores,
                tramps,
                t.name,
                ordered=True,  # the kernel patches word by word, maintained
            )
        )
    return tuple(cases)
