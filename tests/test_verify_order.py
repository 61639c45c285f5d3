"""The two-slot counterexample names a schedule the architecture allows (issue 15, point 3).

The kernel patches one word at a time, each store followed by cache
maintenance (aarch64_insn_patch_text_nosync: DC CVAU, DSB ISH, IC IVAU,
DSB ISH).  herd7's AArch64 model with -variant ifetch (the table in
ARM64-FTRACE.md) then allows all 4 old/new outcomes for enable (MOV then BL)
but only 3 for disable (BL -> NOP, then MOV -> NOP): a CPU that fetched the
new first word (the MOV gone) cannot then fetch the stale BL.  The verdict
stays a failure (NOP <-> MOV is outside the permitted set), but the
emulation's witness must be an outcome the model allows: for disable there
is none, and without maintenance (or in the other order) there is one.
"""

from __future__ import annotations

import dataclasses

from conftest import fixture_path

from ftpatch.verify import Scheme, verify_file
from ftpatch.verify.emulate import Case, Engine, Store


def two_slot_cases() -> dict[str, Case]:
    """enable and disable of gcc-plain-O2.o's first site, as verify builds them."""
    report = verify_file(str(fixture_path("obj/gcc-plain-O2.o")), scheme=Scheme.TWO_SLOT)
    site = report.sites[0]
    assert {t.name for t in site.transitions} == {"enable", "disable", "retarget"}
    failing = {t.name: (t.interleavings, t.failing) for t in site.transitions}
    # enable: every pair of old/new fetches, one of them fatal (MOV old, BL new)
    assert failing["enable"] == (4, 1), failing
    # disable: 3 outcomes, none fatal
    assert failing["disable"] == (3, 0), failing
    assert any(
        f.check == "cmodx-pair" and "disable" in f.message for f in site.findings
    ), "the verdict on disable must still be a failure"
    from ftpatch.scan import scan_file
    from ftpatch.verify.static import FileChecker  # the cases themselves

    with scan_file(str(fixture_path("obj/gcc-plain-O2.o"))) as result:
        plan = FileChecker(result, Scheme.TWO_SLOT, None).check_site(result.sites[0], 0)
    return {c.name: c for c in plan.cases}


def test_disable_has_no_witness_with_the_kernels_order_and_maintenance() -> None:
    case = two_slot_cases()["disable"]
    assert case.ordered
    x = Engine().explore(case)
    assert (x.interleavings, x.failing) == (3, 0)


def test_disable_witness_without_maintenance_or_in_the_other_order() -> None:
    case = two_slot_cases()["disable"]
    engine = Engine()
    loose = engine.explore(dataclasses.replace(case, ordered=False))
    assert (loose.interleavings, loose.failing) == (4, 1)
    (ce,) = loose.counterexamples
    # the MOV fetched new (gone), then the BL stale: X9 never saved
    assert [new for _i, new in ce.interleaving.fetches] == [True, False]
    reverse = dataclasses.replace(case, stores=tuple(reversed(case.stores)))
    x = engine.explore(reverse)
    assert (x.interleavings, x.failing) == (4, 1)


def test_enable_witness_needs_no_weak_memory() -> None:
    """The enable counterexample: the first word fetched old before either
    store, the second new after both: no stale fetch after a visible store."""
    case = two_slot_cases()["enable"]
    x = Engine().explore(case)
    assert x.failing == 1
    (ce,) = x.counterexamples
    assert [(case.stores[i].address, new) for i, new in ce.interleaving.fetches] == [
        (case.stores[0].address, False),
        (case.stores[1].address, True),
    ]
    assert isinstance(case.stores[0], Store)
