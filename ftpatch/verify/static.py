"""Static checks of patch sites, and the runtime transitions the emulation replays.

Per site: the layout ``[prefix NOPs] [BTI C] MOV X9,X30 ; NOP`` with the
record on the NOP (the BL slot); the slot 4-byte aligned and, under the 4,2
layout, the 8-byte ops literal before the symbol 8-byte aligned (Linux
CALL_OPS selects FUNCTION_ALIGNMENT_8B); no relocation rewriting the MOV or
the slot, and none but the site's own record pointing at the slot; every
runtime transition changing exactly one aligned word with both words in the
default CMODX set (``arm64.CMODX_PERMITTED``, the ARMv8-A ARM issue A.a list,
each entry's citation in ``arm64.CMODX_ENTRIES``); in a linked
image, the BL from the slot reaching the trampoline (+-128 MiB).

The file is read through ``view.FileView``; each check is a function of
``checks.py``, the transitions and emulation cases come from ``cases.py``;
``FileChecker.check_site`` runs them in order for one site.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpatch.model import Site, State
from ftpatch.verify import cases, checks
from ftpatch.verify.data import Case, Store
from ftpatch.verify.findings import CHECK_SCAN, Finding, Scheme
from ftpatch.verify.view import FileView


@dataclass(frozen=True)
class SitePlan:
    """What the static pass hands the emulation for one site."""

    findings: tuple[Finding, ...]
    cases: tuple[Case, ...]
    entry_address: int | None
    slot_address: int | None
    stores: tuple[tuple[Store, ...], ...]  # per transition, even when not emulable
    names: tuple[str, ...]


class FileChecker(FileView):
    """Static checks over one scanned file."""

    def check_site(self, site: Site, index: int) -> SitePlan:
        if site.state is State.SKIPPED:  # a zero record: the kernel skips it too
            return SitePlan((), (), None, None, (), ())  # one note per file (core.py)
        sec = self.site_section(site)
        if sec is None:
            finding = Finding(
                CHECK_SCAN, site.location, site.reason or "no code section", site=index
            )
            return SitePlan((finding,), (), None, None, (), ())
        findings: list[Finding] = []
        r = site.record.target_offset
        findings.extend(checks.mov_missing(self, site, index, sec, r))
        findings.extend(checks.classifier_problem(self, site, index, sec, r))
        # The site's geometry is the classifier's (classify.Verdict): where
        # callers enter, the MOV, the BL slot and, under CALL_OPS, the ops
        # literal.  Without a MOV and a slot there is nothing to patch: the
        # classifier's finding says why.
        entry, mov, slot = site.entry_offset, site.mov_offset, site.slot_offset
        if r % 4 or mov is None or slot is None:
            return SitePlan(tuple(findings), (), None, None, (), ())
        # The single-slot kernel patches the word its record names, unchanged.
        patched = r if self.scheme is Scheme.SINGLE_SLOT else slot
        findings.extend(checks.slot_misaligned(self, site, index, sec, patched))
        findings.extend(checks.ops_literal(self, site, index, sec))
        findings.extend(checks.prefix_misaligned(self, site, index, sec, entry))
        findings.extend(checks.relocation(self, site, index, sec, mov, slot))
        findings.extend(checks.branch(self, site, index, sec))

        slot_address = self.address(sec, patched)
        findings.extend(checks.out_of_range(self, site, index, sec, patched, slot_address))
        stored = (patched,) if self.scheme is Scheme.SINGLE_SLOT else (patched, mov)
        outside = checks.patched_outside(self, site, index, sec, r, stored)
        if outside is not None:
            findings.append(outside)
            return SitePlan(tuple(findings), (), None, None, (), ())
        t1, t2 = cases.trampolines(self, slot_address)
        names = cases.trampoline_names(self, t1, t2)
        transitions = cases.transitions(self, sec, patched, mov, t1, t2)
        for t in transitions:
            findings.extend(checks.cmodx_words(self, site, index, sec, t, names))
            findings.extend(checks.cmodx_pair(self, site, index, sec, t, names))

        stores = cases.site_stores(self, sec, patched, slot_address, transitions)
        transition_names = tuple(t.name for t in transitions)
        if entry is None or entry < 0 or self.address(sec, entry) % 4:
            # No instruction starts off the 4-byte grid (the slot alignment
            # check reports a section placed there).
            return SitePlan(tuple(findings), (), None, slot_address, stores, transition_names)
        findings.extend(checks.entry_path(self, site, index, sec, entry, slot, patched, names))
        start = min(entry, patched, slot)
        body = max(slot, patched) + 4
        if self.word(sec, body - 4) is None or start < 0:
            return SitePlan(tuple(findings), (), None, slot_address, stores, transition_names)
        site_cases = cases.emulation_cases(
            self, sec, transitions, stores, start, body, entry, (t1, t2)
        )
        return SitePlan(
            tuple(findings),
            site_cases,
            self.address(sec, entry),
            slot_address,
            stores,
            transition_names,
        )
