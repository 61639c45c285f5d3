"""One file through the verifier: scan, static checks, emulation, a report.

Returns data only (``VerifyReport``); ``render.py`` turns it into text or
JSON and ``cli.py`` prints it and picks the exit status.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ftpatch.errors import FtpatchError
from ftpatch.model import Location, State
from ftpatch.scan import ScanResult, scan_file, zero_records_note
from ftpatch.verify.data import Exploration
from ftpatch.verify.emulate import CONTRACT_TRAMPOLINE, Engine
from ftpatch.verify.findings import (
    CHECK_COVERAGE,
    CHECK_EMULATION,
    CHECK_SKIPPED,
    Finding,
    Scheme,
    Severity,
    SiteResult,
    Trampoline,
    TransitionResult,
    VerifyReport,
)
from ftpatch.verify.static import FileChecker, SitePlan

DEFAULT_TRAMPOLINE = "ftrace_caller"

# Counterexamples re-run with a full trace, per file; the rest are counted.
MAX_TRACES = 32

Progress = Callable[[int, int], None]


def resolve_trampoline(result: ScanResult, spec: str | None) -> Trampoline | None:
    """``--trampoline SYMBOL|ADDRESS``; in a linked image ``ftrace_caller`` by default.

    In a relocatable object the trampoline is an undefined symbol, so it has
    no address and the range check waits for the linked image.
    """
    linked = result.linked
    if spec is None:
        if linked:
            address = result.symbol_address(DEFAULT_TRAMPOLINE)
            if address is not None:
                return Trampoline(DEFAULT_TRAMPOLINE, address)
        return None
    try:
        return Trampoline(None, int(spec, 0))
    except ValueError:
        pass
    if not linked:
        return Trampoline(spec, None)
    address = result.symbol_address(spec)
    if address is None:
        raise FtpatchError(Location(result.path), f"--trampoline {spec}: no such symbol")
    return Trampoline(spec, address)


def _sample(indexes: list[int], limit: int | None) -> set[int]:
    if limit is None or limit >= len(indexes):
        return set(indexes)
    if limit <= 0:
        return set()
    step = len(indexes) / limit
    return {indexes[int(k * step)] for k in range(limit)}


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic collector off while one file is verified.

    A large file builds hundreds of thousands of small objects that all live
    until the report is done; each automatic collection walks them again,
    which took a third of the time of a 30,300-site object.  The few cycles
    made meanwhile are collected once the collector resumes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def verify_file(
    path: str,
    *,
    scheme: Scheme = Scheme.SINGLE_SLOT,
    trampoline: str | None = None,
    sites: int | None = None,
    engine: Engine | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify every site of ``path``; emulate all of them, or ``sites`` spread evenly."""
    started = time.perf_counter()
    with _collector_paused(), scan_file(path) as result:
        tramp = resolve_trampoline(result, trampoline)
        checker = FileChecker(result, scheme, tramp)
        total = len(result.sites)
        # Every site emulated: check and emulate one site at a time, so that
        # its cases go once its result is made.  A sample needs the whole list.
        plans: list[SitePlan] | None = None
        chosen: set[int] | None = None
        if sites is not None:
            plans = [checker.check_site(site, i) for i, site in enumerate(result.sites)]
            chosen = _sample([i for i, p in enumerate(plans) if p.cases], sites)
        out: list[SiteResult] = []
        traced = 0
        emulable = 0
        emulated_sites = 0
        for i, site in enumerate(result.sites):
            plan = plans[i] if plans is not None else checker.check_site(site, i)
            findings = list(plan.findings)
            transitions: list[TransitionResult] = []
            emulable += bool(plan.cases)
            emulated = bool(plan.cases) and (chosen is None or i in chosen)
            explorations: list[Exploration] = []
            if emulated:
                emulated_sites += 1
                if engine is None:
                    engine = Engine(CONTRACT_TRAMPOLINE)
                explorations = [
                    engine.explore(case, trace=traced < MAX_TRACES, origin=(path, i))
                    for case in plan.cases
                ]
                traced += sum(len(x.counterexamples) for x in explorations)
            for n, (name, stores) in enumerate(zip(plan.names, plan.stores, strict=True)):
                if emulated:
                    x = explorations[n]
                    transitions.append(
                        TransitionResult(
                            name, stores, x.interleavings, x.failing, x.truncated, x.emulation
                        )
                    )
                    findings.extend(_emulation_findings(site.location, i, x))
                else:
                    transitions.append(TransitionResult(name, stores))
            findings.extend(_vacuous_findings(site.location, i, explorations))
            out.append(
                SiteResult(
                    i,
                    site,
                    plan.entry_address,
                    plan.slot_address,
                    tuple(transitions),
                    tuple(findings),
                    emulated,
                )
            )
            if progress is not None:
                progress(i + 1, total)
        notes: list[Finding] = []
        where = Location(path)
        if not result.sites:
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    "no patch sites (no __patchable_function_entries records)",
                    Severity.NOTE,
                )
            )
        zero = sum(1 for site in result.sites if site.state is State.SKIPPED)
        skipped = total - emulable - zero
        if skipped:
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    f"{skipped} site(s) could not be emulated (entry unknown or slot misaligned)",
                    Severity.NOTE,
                )
            )
        if zero:
            notes.append(Finding(CHECK_SKIPPED, where, zero_records_note(zero), Severity.NOTE))
        if emulated_sites < emulable:
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    f"emulated {emulated_sites} of {emulable} sites (--sites {sites})",
                    Severity.NOTE,
                )
            )
        linked = result.linked
        if not linked and trampoline is not None and result.sites:
            # A relocatable object has no addresses: what --trampoline names
            # can only be checked once linked (issue 15: it was ignored silently).
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    f"--trampoline {trampoline}: a relocatable object has no addresses, so "
                    "the BL reach (+-128 MiB) was not checked: verify the linked image; "
                    "the emulation calls a stand-in that keeps the ftrace_caller contract",
                    Severity.NOTE,
                )
            )
        if not linked and trampoline is None and result.sites:
            # A module (.ko) or an ld -r output: say what only its load can
            # decide (issue 17).
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    "relocatable object: no addresses, so where the BL slot branches "
                    "(ftrace_caller within +-128 MiB, or a module's ftrace PLT) is decided "
                    "when it is linked or loaded and was not checked; the emulation calls a "
                    "stand-in that keeps the ftrace_caller contract",
                    Severity.NOTE,
                )
            )
        if linked and tramp is None and result.sites:
            notes.append(
                Finding(
                    CHECK_COVERAGE,
                    where,
                    "no trampoline known (give --trampoline "
                    f"or define {DEFAULT_TRAMPOLINE}): BL range not checked",
                    Severity.NOTE,
                )
            )
        return VerifyReport(
            path,
            result.kind,
            scheme,
            tramp,
            tuple(out),
            tuple(notes),
            time.perf_counter() - started,
            checker.prefix_words,
            not linked,
            result.elf.signature is not None,
            result.elf.compression,
        )


def _emulation_findings(location: Location, index: int, x: Exploration) -> list[Finding]:
    findings = []
    name = x.case.name
    if x.failing:
        example = x.counterexamples[0] if x.counterexamples else None
        first = example.violations[0] if example and example.violations else "violation"
        findings.append(
            Finding(
                CHECK_EMULATION,
                location,
                f"{name}: {x.failing} of {x.interleavings} interleavings break the ftrace_caller "
                f"contract ({first})",
                site=index,
                counterexample=example,
            )
        )
    if x.truncated:
        findings.append(
            Finding(
                CHECK_EMULATION,
                location,
                f"{name}: exploration stopped after {x.interleavings} interleavings "
                "(a changed word is fetched in a loop?)",
                site=index,
            )
        )
    return findings


def _vacuous_findings(location: Location, index: int, xs: list[Exploration]) -> list[Finding]:
    """An emulation that never fetched a word the patcher changes ran only
    unchanged code: it proves nothing, and is a finding, not coverage."""
    empty = [x for x in xs if not x.fetched_changed]
    if not empty:
        return []
    changed = sorted({st.address for x in empty for st in x.case.stores})
    return [
        Finding(
            CHECK_EMULATION,
            location,
            f"{', '.join(x.case.name for x in empty)}: no interleaving fetched a changed word "
            f"({', '.join(f'{a:#x}' for a in changed)}) on the way from the entry "
            f"{empty[0].case.entry:#x} into the body: the emulation proves nothing for this site",
            site=index,
        )
    ]
