"""Sharing emulations between sites (issue 15): a case reuses an earlier
emulation only when every byte that emulation fetched or read is the same at
the same distance from its start, with the same stores; anything else, down
to one byte of one fetched word, gets an emulation of its own.

The cases are built by hand (the engine knows nothing about ELF); the last
tests run the real fixtures through ``verify_file`` and ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fixture_path, ftpatch, rewritten

from ftpatch import arm64
from ftpatch.verify import Scheme, verify_file
from ftpatch.verify.emulate import Case, Engine, Exploration, Store, placement_free

NOP = 0xD503201F  # nop
BTI_C = 0xD503245F  # bti c
BTI_J = 0xD503249F  # bti j
MOV_X9_X30 = 0xAA1E03E9  # mov x9, x30
MOV_X9_X29 = 0xAA1D03E9  # mov x9, x29
LDR_X17_MINUS4 = 0x58FFFFF1  # ldr x17, .-4 (a literal one word back)
ADD_X0_1 = 0x91000400  # add x0, x0, #1
ADR_X0 = 0x10000000  # adr x0, .
LDR_X30_MINUS8 = 0x58FFFFDE  # ldr x30, .-8
MOVZ_X30 = 0xD280009E  # mov x30, #4
PACIASP = 0xD503233F  # paciasp


def enable(start: int, words: list[int], entry_index: int, slot_index: int) -> Case:
    """The single-slot enable of an entry whose BL slot is ``words[slot_index]``,
    with its trampolines 1 MiB below, as ``FileChecker`` places them."""
    t1 = (start & ~0xFFFFF) - 0x100000
    slot = start + 4 * slot_index
    store = Store(slot, words[slot_index], arm64.encode_bl(slot, t1))
    return Case(start, tuple(words), start + 4 * entry_index, (store,), (t1, t1 + 0x1000), "enable")


def other_place(case: Case, delta: int) -> Case:
    """``case`` moved by ``delta``, its trampolines where FileChecker would put them."""
    words = list(case.words)
    i = (case.stores[0].address - case.start) // 4
    moved = enable(case.start + delta, words, (case.entry - case.start) // 4, i)
    return Case(moved.start, moved.words, moved.entry, (
        Store(moved.stores[0].address, case.stores[0].old, moved.stores[0].new),
    ), moved.trampolines, case.name)


def flip(word: int, byte: int) -> int:
    return word ^ (0x01 << (8 * byte))


BASE = 0x4000_0000


@pytest.fixture()
def engine() -> Engine:
    return Engine()


def first(engine: Engine, case: Case) -> Exploration:
    x = engine.explore(case, origin=("first", 0))
    assert x.emulation is not None and not x.emulation.reused
    return x


def test_the_same_entry_elsewhere_reuses_the_emulation(engine: Engine) -> None:
    base = enable(BASE + 0x40, [BTI_C, MOV_X9_X30, NOP], 0, 2)
    a = first(engine, base)
    for delta in (0x1234 * 4, 0x7654_3210, -0x40):  # other page offsets, other trampoline distances
        b = engine.explore(other_place(base, delta), origin=("second", 1))
        assert b.emulation is not None and b.emulation.reused
        assert b.emulation.id == a.emulation.id and b.emulation.origin == ("first", 0)
        assert (b.interleavings, b.failing, b.ok) == (a.interleavings, a.failing, True)
        assert b.case.start == BASE + 0x40 + delta  # the report is about its own case
    assert engine.emulations == 1 and engine.reused == 3


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("byte", [0, 1, 2, 3])
def test_one_different_byte_of_a_fetched_word_gets_its_own_emulation(
    engine: Engine, index: int, byte: int
) -> None:
    """BTI, MOV, the slot: each is fetched, so no byte of them may differ."""
    words = [BTI_C, MOV_X9_X30, NOP]
    base = enable(BASE + 0x40, words, 0, 2)
    first(engine, base)
    words[index] = flip(words[index], byte)
    x = engine.explore(other_place(enable(BASE, words, 0, 2), 0x8000), origin=("mutant", 1))
    assert x.emulation is not None and not x.emulation.reused
    assert engine.emulations == 2


@pytest.mark.parametrize("byte", [0, 1, 2, 3])
def test_one_different_byte_of_a_stored_word_gets_its_own_emulation(
    engine: Engine, byte: int
) -> None:
    base = enable(BASE, [MOV_X9_X30, NOP], 0, 1)
    first(engine, base)
    moved = other_place(base, 0x8000)
    (s,) = moved.stores
    mutant = Case(moved.start, moved.words, moved.entry,
                  (Store(s.address, s.old, flip(s.new, byte)),), moved.trampolines, moved.name)
    x = engine.explore(mutant)
    assert x.emulation is not None and not x.emulation.reused


def test_bti_and_mov_variants_are_separate_and_judged_on_their_own_bytes(engine: Engine) -> None:
    good = first(engine, enable(BASE, [BTI_C, MOV_X9_X30, NOP], 0, 2))
    bti_j = engine.explore(enable(BASE + 0x1000, [BTI_J, MOV_X9_X30, NOP], 0, 2))
    typo = engine.explore(enable(BASE + 0x2000, [BTI_C, MOV_X9_X29, NOP], 0, 2))
    assert good.ok and bti_j.ok
    assert not typo.ok and typo.failing  # x9 = x29 reaches the trampoline
    ids = {x.emulation.id for x in (good, bti_j, typo) if x.emulation is not None}
    assert len(ids) == 3
    # The typo, placed elsewhere, reuses the typo's emulation, and its trace
    # is re-run at its own addresses.
    again = engine.explore(enable(BASE + 0x30_0000, [BTI_C, MOV_X9_X29, NOP], 0, 2))
    assert again.emulation is not None and again.emulation.reused
    assert typo.emulation is not None and again.emulation.id == typo.emulation.id
    (ce,) = again.counterexamples
    assert ce.case is again.case and ce.violations
    assert {s.address for s in ce.steps} >= {BASE + 0x30_0000, BASE + 0x30_0008}


def test_a_word_never_fetched_may_differ(engine: Engine) -> None:
    """The word before the entry (a CALL_OPS prefix, say) is never fetched."""
    first(engine, enable(BASE, [NOP, MOV_X9_X30, NOP], 1, 2))
    for unfetched in (0xDEADBEEF, 0, BTI_C):
        x = engine.explore(enable(BASE + 0x10_0000, [unfetched, MOV_X9_X30, NOP], 1, 2))
        assert x.emulation is not None and x.emulation.reused


def test_a_data_word_read_keeps_its_emulation(engine: Engine) -> None:
    """``ldr x17, .-4`` reads the word before the entry: the same bytes
    elsewhere, or that word one byte different, run their own emulation."""
    assert not placement_free(LDR_X17_MINUS4)
    words = [0x1111_1111, LDR_X17_MINUS4, MOV_X9_X30, NOP]
    first(engine, enable(BASE, words, 1, 3))
    same = engine.explore(enable(BASE + 0x8000, words, 1, 3))
    assert same.ok and same.emulation is not None and not same.emulation.reused
    for byte in range(4):
        data = flip(0x1111_1111, byte)
        x = engine.explore(enable(BASE + 0x9000, [data, LDR_X17_MINUS4, MOV_X9_X30, NOP], 1, 3))
        assert x.emulation is not None and not x.emulation.reused, byte


def test_a_loaded_word_equal_to_the_return_address_is_judged_where_it_is(engine: Engine) -> None:
    """Why loads and constants never share: ``ldr x30, .-8`` loads a word
    that is the caller's return address at one place only."""
    words = [0, 0, LDR_X30_MINUS8, MOV_X9_X30, NOP]
    here = enable(BASE, words, 2, 4)
    ret = engine.caller_for(here) + 4
    words[0], words[1] = ret & 0xFFFF_FFFF, ret >> 32
    lucky = engine.explore(enable(BASE, words, 2, 4))
    assert lucky.ok  # x30 holds the return address, by coincidence
    elsewhere = engine.explore(enable(BASE + 0x8000, words, 2, 4))
    assert not elsewhere.ok
    assert elsewhere.emulation is not None and not elsewhere.emulation.reused


@pytest.mark.parametrize("word", [ADD_X0_1, ADR_X0, MOVZ_X30, LDR_X17_MINUS4, PACIASP])
def test_code_that_may_depend_on_its_place_never_shares(engine: Engine, word: int) -> None:
    """An ADR (or anything outside ``placement_free``) on the entry path: even
    the same bytes elsewhere run their own emulation."""
    assert not placement_free(word)
    first(engine, enable(BASE, [word, MOV_X9_X30, NOP], 0, 2))
    x = engine.explore(enable(BASE + 0x8000, [word, MOV_X9_X30, NOP], 0, 2))
    assert x.emulation is not None and not x.emulation.reused


def test_a_branch_out_of_the_entry_never_shares(engine: Engine) -> None:
    """B to a place outside the entry words: what it finds there is not in the key."""
    far = arm64.encode_bl(BASE, BASE + 0x40) & ~arm64.BRANCH_MASK | arm64.B_OPCODE
    first(engine, enable(BASE, [far, MOV_X9_X30, NOP], 0, 2))
    x = engine.explore(enable(BASE + 0x8000, [far, MOV_X9_X30, NOP], 0, 2))
    assert x.emulation is not None and not x.emulation.reused


def test_a_trampoline_over_the_entry_never_shares(engine: Engine) -> None:
    base = enable(BASE, [MOV_X9_X30, NOP], 0, 1)
    first(engine, base)
    (s,) = base.stores

    def with_trampoline(t1: int) -> Case:
        store = Store(s.address, s.old, arm64.encode_bl(s.address, t1))
        return Case(BASE, base.words, base.entry, (store,), (t1, t1 + 0x1000), "enable")

    near = engine.explore(with_trampoline(BASE + 0x100))  # same page, other bytes
    assert near.ok and near.emulation is not None and near.emulation.reused
    over = engine.explore(with_trampoline(BASE))  # the trampoline's words are the entry's
    assert over.emulation is not None and not over.emulation.reused


def test_verify_file_shares_and_json_says_which_emulation(tmp_path: Path) -> None:
    path = str(rewritten(tmp_path, "obj/gcc-bti.o"))
    report = verify_file(path)
    assert report.ok and report.emulated == 8
    assert report.emulations < 3 * report.emulated
    ran: dict[int, tuple[int, str]] = {}
    for site in report.sites:
        for t in site.transitions:
            e = t.emulation
            assert e is not None and e.origin is not None and e.origin[0] == path
            if not e.reused:
                assert e.origin[1] == site.index
                ran[e.id] = (site.index, t.name)
    for site in report.sites:
        for t in site.transitions:
            assert t.emulation is not None
            assert ran[t.emulation.id] == (t.emulation.origin[1], t.name)  # type: ignore[index]
    run = ftpatch("verify", "--json", path)
    doc = json.loads(run.stdout)["files"][0]
    assert doc["emulations"] == report.emulations
    first_site = doc["site_results"][0]["transitions"][0]["emulation"]
    assert first_site == {"id": first_site["id"], "file": path, "site": 0, "reused": False}
    later = doc["site_results"][-1]["transitions"][0]["emulation"]
    assert later["file"] == path and later["site"] <= doc["site_results"][-1]["index"]


def test_two_slot_counterexamples_stay_at_each_sites_addresses() -> None:
    """Every pristine site fails; reused results still trace their own site."""
    report = verify_file(fixture_path("obj/gcc-plain-O2.o"), scheme=Scheme.TWO_SLOT)
    traced = [f for f in report.errors if f.counterexample is not None]
    # One per site, enable's: with the kernel's store order and per-word
    # maintenance, disable's stale-BL outcome is one the architecture forbids
    # (issue 15, point 3; tests/test_verify_order.py).
    assert len(traced) == len(report.sites)
    assert report.emulations < len(traced)
    for f in traced:
        ce = f.counterexample
        assert ce is not None and f.site is not None
        site = report.sites[f.site]
        assert ce.case.entry == site.entry_address
        assert any(s.address == site.slot_address for s in ce.steps)


def test_another_trampoline_shares_only_when_placement_free() -> None:
    """Not the contract trampoline: its own words must pass ``placement_free``."""
    plain = Engine("tramp:\n    mov x16, x30\n    mov x30, x9\n    ret x16\n")
    base = enable(BASE, [MOV_X9_X30, NOP], 0, 1)
    first(plain, base)
    x = plain.explore(other_place(base, 0x8000))
    assert x.ok and x.emulation is not None and x.emulation.reused
    adr = Engine("tramp:\n    adr x16, tramp\n    mov x16, x30\n    mov x30, x9\n    ret x16\n")
    first(adr, base)
    y = adr.explore(other_place(base, 0x8000))
    assert y.ok and y.emulation is not None and not y.emulation.reused


def test_cases_near_the_initial_register_values_do_not_share(engine: Engine) -> None:
    """There an address could equal a sentinel the judge compares with."""
    base = enable(BASE, [MOV_X9_X30, NOP], 0, 1)
    first(engine, base)
    x = engine.explore(other_place(base, 0x5A5A_0000_1000_0000 - BASE))
    assert x.ok and x.emulation is not None and not x.emulation.reused
