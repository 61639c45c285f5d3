"""VerifyReport -> text lines, a rich summary table, a JSON-ready dict.

Nothing here prints: ``cli.py`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ftpatch import arm64
from ftpatch.elf.container import Compression
from ftpatch.verify.data import Counterexample, Emulation
from ftpatch.verify.findings import Finding, SiteResult, VerifyReport


class _Region(NamedTuple):
    """A named address range of a trace.  A function's prefix words are
    named by how far they lie before the function (``func-0x8``), counted
    back from the region's end; everything else from its start."""

    start: int
    size: int
    name: str
    before: bool = False


class _Labels:
    """Names for the addresses of a counterexample: caller, function, trampolines."""

    def __init__(self, report: VerifyReport, site: SiteResult | None, ce: Counterexample) -> None:
        self.regions: list[_Region] = [_Region(ce.caller, 8, "caller")]
        tramp_name = (
            report.trampoline.name if report.trampoline and report.trampoline.name else "trampoline"
        )
        names = [tramp_name, "trampoline2"]
        for n, t in enumerate(ce.case.trampolines):
            self.regions.append(
                _Region(t, 0x100, names[n] if n < len(names) else f"trampoline{n + 1}")
            )
        if site is not None and site.site.function is not None:
            self.regions.append(_Region(ce.case.entry, 0x10000, site.site.function))
            if ce.case.start < ce.case.entry:
                self.regions.append(
                    _Region(ce.case.start, ce.case.entry - ce.case.start, site.site.function, True)
                )

    def __call__(self, address: int) -> str:
        for start, size, name, before in self.regions:
            if start <= address < start + size:
                if before:
                    return f"{name}-{start + size - address:#x}"
                return f"{name}+{address - start:#x}"
        return f"{address:#x}"

    def value(self, v: int) -> str:
        label = self(v)
        return f"{v:#x}" if label.startswith("0x") else f"{v:#x} ({label})"


def _site(report: VerifyReport, finding: Finding) -> SiteResult | None:
    if finding.site is not None and 0 <= finding.site < len(report.sites):
        return report.sites[finding.site]
    return None


def trace_lines(report: VerifyReport, finding: Finding) -> list[str]:
    """A counterexample as a step-by-step trace with disassembly."""
    ce = finding.counterexample
    if ce is None:
        return []
    site = _site(report, finding)
    label = _Labels(report, site, ce)
    case = ce.case
    lines = [
        f"    counterexample, {case.name} ({report.scheme.value}): {ce.interleaving.describe(case)}"
    ]
    if case.ordered:
        lines.append(
            "    the patcher's stores, in program order, each completed by DC CVAU; DSB ISH; "
            "IC IVAU; DSB ISH before the next (as the kernel patches one word at a time):"
        )
    else:
        lines.append("    the patcher's stores, in program order, with no maintenance between:")
    for k, s in enumerate(case.stores):
        lines.append(
            f"      [{k + 1}] {label(s.address)}: {arm64.describe(s.old)} -> "
            f"{arm64.describe(s.new)}"
        )
    lines.append(
        f"    {'step':>4}  {'where':<22} {'word':<8}  {'fetch':<5}  "
        f"{'instruction':<28} {'x9':<20} x30"
    )
    shown: set[int] = set()
    n = 0
    for step in ce.steps:
        if step.store is not None and step.version == "new":
            for k in range(step.store + 1):
                if k not in shown:
                    shown.add(k)
                    s = case.stores[k]
                    lines.append(
                        f"          -- patcher: store [{k + 1}] {label(s.address)} "
                        f"{arm64.describe(s.new)} takes effect"
                    )
        n += 1
        fetch = step.version or ""
        note = ""
        if step.store is not None and step.version == "old":
            if step.store in shown:  # (only without maintenance: the engine forbids it else)
                note = "  (stale fetch: nothing orders it after the store)"
            elif case.ordered:
                note = "  (fetched before the store: no later store was seen yet)"
        text = step.text
        if arm64.is_bl(step.word) or arm64.is_b(step.word):
            text = f"{text.split()[0]} {label(arm64.bl_target(step.address, step.word))}"
        lines.append(
            f"    {n:>4}  {label(step.address):<22} {step.word:08x}  {fetch:<5}  "
            f"{text:<28} {step.x9:<#20x} {step.x30:#x}{note}"
        )
    end = label(ce.end_pc)
    lines.append(
        f"    stop at {end}: x30 = {label.value(ce.end_x30)}; the caller's return "
        f"address is {label.value(ce.return_address)}"
    )
    for x9, x30, tramp in ce.log:
        lines.append(
            f"    {label(tramp)} ran with x9 = {label.value(x9)}, x30 = {label.value(x30)}"
        )
    lines.extend(f"    violation: {v}" for v in ce.violations)
    return lines


class FileSummary(NamedTuple):
    """What the run's summary needs of one verified file: a worker sends
    this back, not the report, so that a run over thousands of files keeps
    no report once its lines are made."""

    path: str
    kind: str
    scheme: str
    sites: int
    emulated: int
    interleavings: int
    violations: int
    errors: int
    seconds: float
    signed: bool
    compression: Compression | None

    @property
    def ok(self) -> bool:
        return not self.errors


def file_summary(report: VerifyReport) -> FileSummary:
    return FileSummary(
        report.path,
        report.kind,
        report.scheme.value,
        len(report.sites),
        report.emulated,
        report.interleavings,
        report.violations,
        len(report.errors),
        report.seconds,
        report.signed,
        report.compression,
    )


def _kind(s: FileSummary) -> str:
    """``relocatable``, ``relocatable, xz-compressed, signed``: short, for a table cell."""
    parts = [s.kind]
    if s.compression is not None:
        parts.append(f"{s.compression.value}-compressed")
    if s.signed:
        parts.append("signed")
    return ", ".join(parts)


def summary_line(s: FileSummary) -> str:
    verdict = "ok" if s.ok else "FAIL"
    return (
        f"{s.path}: {verdict}: {s.sites} sites ({_kind(s)}, "
        f"{s.scheme}), {s.emulated} emulated, {s.interleavings} "
        f"interleavings, {s.violations} violating, {s.errors} findings, "
        f"{s.seconds:.2f}s"
    )


def error_lines(report: VerifyReport, *, limit: int = 20, traces: int = 1) -> list[str]:
    """The errors, at most ``limit``, the first ``traces`` counterexamples traced."""
    lines: list[str] = []
    errors = [f for f in report.all_findings if f.is_error]
    traced = 0
    for f in errors[:limit]:
        lines.append(str(f))
        if f.counterexample is not None and traced < traces:
            traced += 1
            lines.extend(trace_lines(report, f))
    hidden = len(errors) - limit
    if hidden > 0:
        lines.append(f"{report.path}: ... and {hidden} more findings (--json lists all)")
    return lines


Note = tuple[str, str]  # (check, message) of a file-level note


def file_notes(report: VerifyReport) -> tuple[Note, ...]:
    """The notes of a file (said of the whole file, never of a site)."""
    return tuple((f.check, f.message) for f in report.all_findings if not f.is_error)


def finding_lines(report: VerifyReport, *, limit: int = 20, traces: int = 1) -> list[str]:
    """Errors, then notes: one file's findings as a run over it alone says them."""
    lines = error_lines(report, limit=limit, traces=traces)
    return lines + [f"{report.path}: note: [{c}] {m}" for c, m in file_notes(report)]


class Tally:
    """A run's totals, made file by file as each finishes: counts, the notes
    (a note many files share is said once, with their number), and the rows
    of the summary table (every file's with ``every_row``, else only those
    of failing files)."""

    def __init__(self, every_row: bool = False) -> None:
        self.every_row = every_row
        self.files = self.sites = self.interleavings = self.violations = 0
        self.findings = self.failing = self.unreadable = self.signed = 0
        self.compressed: dict[str, int] = {}
        self.rows: list[FileSummary] = []
        self.last: FileSummary | None = None
        self.notes: dict[Note, list[Any]] = {}  # note -> [files, first path]

    def add(self, s: FileSummary, notes: Sequence[Note]) -> None:
        self.last = s
        self.files += 1
        self.sites += s.sites
        self.interleavings += s.interleavings
        self.violations += s.violations
        self.findings += s.errors
        self.failing += not s.ok
        self.signed += s.signed
        if s.compression is not None:
            name = s.compression.value
            self.compressed[name] = self.compressed.get(name, 0) + 1
        if self.every_row or not s.ok:
            self.rows.append(s)
        for note in notes:
            seen = self.notes.get(note)
            if seen is None:
                self.notes[note] = [1, s.path]
            else:
                seen[0] += 1

    def note_lines(self) -> list[str]:
        """Each note once: by its file when one file has it, else with the count."""
        lines = []
        for (check, message), (count, path) in self.notes.items():
            if count == 1:
                lines.append(f"{path}: note: [{check}] {message}")
            else:
                lines.append(f"note: [{check}] {message} ({count} files)")
        return lines

    def line(self, seconds: float) -> str:
        wrapped = [f"{self.signed} signed"] if self.signed else []
        wrapped += [f"{n} {kind}-compressed" for kind, n in sorted(self.compressed.items())]
        what = f" ({', '.join(wrapped)})" if wrapped else ""
        unreadable = f", {self.unreadable} not verified (errors above)" if self.unreadable else ""
        rate = f", {self.sites / seconds:.0f} sites/s" if seconds > 0 else ""
        return (
            f"verified {self.files} file(s){what}: {self.sites} sites, {self.interleavings} "
            f"interleavings, {self.violations} violating, {self.findings} findings, "
            f"{self.failing} file(s) failing{unreadable}, {seconds:.2f}s{rate}"
        )


def summary_table(rows: Sequence[FileSummary], title: str = "ftpatch verify") -> Any:
    """A rich Table: one row per file given."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("file", "left"),
        ("kind", "left"),
        ("scheme", "left"),
        ("sites", "right"),
        ("emulated", "right"),
        ("interleavings", "right"),
        ("violating", "right"),
        ("findings", "right"),
        ("time", "right"),
        ("result", "left"),
    ):
        # A path is never cut: a long one folds onto the next line.
        overflow = "fold" if name == "file" else "ellipsis"
        table.add_column(name, justify=justify, overflow=overflow)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.path,
            _kind(r),
            r.scheme,
            str(r.sites),
            str(r.emulated),
            str(r.interleavings),
            str(r.violations),
            str(r.errors),
            f"{r.seconds:.2f}s",
            "[green]ok[/]" if r.ok else "[red]FAIL[/]",
        )
    return table


# -- JSON ---------------------------------------------------------------------


def _counterexample_dict(report: VerifyReport, f: Finding) -> dict[str, Any] | None:
    ce = f.counterexample
    if ce is None:
        return None
    label = _Labels(report, _site(report, f), ce)
    return {
        "transition": ce.case.name,
        "interleaving": [
            {"store": i, "address": ce.case.stores[i].address, "fetched": "new" if new else "old"}
            for i, new in ce.interleaving.fetches
        ],
        "stores": [
            {
                "address": s.address,
                "where": label(s.address),
                "old": f"{s.old:08x}",
                "new": f"{s.new:08x}",
                "old_text": arm64.describe(s.old),
                "new_text": arm64.describe(s.new),
            }
            for s in ce.case.stores
        ],
        "steps": [
            {
                "address": s.address,
                "where": label(s.address),
                "word": f"{s.word:08x}",
                "fetched": s.version,
                "instruction": s.text,
                "x9": s.x9,
                "x30": s.x30,
                "sp": s.sp,
            }
            for s in ce.steps
        ],
        "end": {"pc": ce.end_pc, "x30": ce.end_x30, "return_address": ce.return_address},
        "trampoline_log": [{"x9": x9, "x30": x30, "trampoline": t} for x9, x30, t in ce.log],
        "violations": list(ce.violations),
    }


def finding_dict(report: VerifyReport, f: Finding) -> dict[str, Any]:
    loc = f.location
    out: dict[str, Any] = {
        "check": f.check,
        "severity": f.severity.value,
        "where": str(loc),
        "section": loc.section,
        "offset": loc.offset,
        "symbol": loc.symbol,
        "symbol_offset": loc.symbol_offset,
        "site": f.site,
        "message": f.message,
    }
    ce = _counterexample_dict(report, f)
    if ce is not None:
        out["counterexample"] = ce
    return out


def _emulation_dict(e: Emulation | None) -> dict[str, Any] | None:
    """Which emulation covered a transition: ``id`` (per verify command),
    the ``file`` and ``site`` index whose transition ran it, and whether this
    one ``reused`` it (its recorded bytes matched; emulate.py, "Sharing")."""
    if e is None:
        return None
    file, site = e.origin if e.origin is not None else (None, None)
    return {"id": e.id, "file": file, "site": site, "reused": e.reused}


def _cmodx_dict() -> dict[str, Any]:
    """The permitted set verify checked against, and what each entry rests on."""
    return {
        "revision": arm64.CMODX_REVISION,
        "permitted": list(arm64.CMODX_PERMITTED),
        "entries": [
            {
                "name": e.name,
                "permitted": e.permitted,
                "source": e.source.key,
                "note": e.note,
            }
            for e in arm64.CMODX_ENTRIES
        ],
        "sources": {
            s.key: {
                "cite": s.cite,
                "document": s.document,
                "section": s.section,
                "quoted_by": s.quoted_by,
                "listed": list(s.listed),
            }
            for s in arm64.CMODX_SOURCES
        },
    }


def report_dict(report: VerifyReport) -> dict[str, Any]:
    t = report.trampoline
    return {
        "path": report.path,
        "kind": report.kind,
        "signed": report.signed,
        "compression": None if report.compression is None else report.compression.value,
        "scheme": report.scheme.value,
        "ok": report.ok,
        "trampoline": None if t is None else {"name": t.name, "address": t.address},
        "cmodx": _cmodx_dict(),
        "prefix_words": report.prefix_words,
        "synthetic_addresses": report.synthetic_addresses,
        "sites": len(report.sites),
        "emulated": report.emulated,
        "interleavings": report.interleavings,
        "violations": report.violations,
        "emulations": report.emulations,
        "seconds": round(report.seconds, 6),
        "findings": [finding_dict(report, f) for f in report.all_findings],
        "site_results": [
            {
                "index": s.index,
                "function": s.site.function,
                "where": str(s.site.location),
                "state": s.site.state.value,
                "layout": None if s.site.layout is None else str(s.site.layout),
                "entry_address": s.entry_address,
                "slot_address": s.slot_address,
                "emulated": s.emulated,
                "interleavings": s.interleavings,
                "ok": s.ok,
                "transitions": [
                    {
                        "name": t.name,
                        "interleavings": t.interleavings,
                        "failing": t.failing,
                        "truncated": t.truncated,
                        "emulation": _emulation_dict(t.emulation),
                        "stores": [
                            {"address": st.address, "old": f"{st.old:08x}", "new": f"{st.new:08x}"}
                            for st in t.stores
                        ],
                    }
                    for t in s.transitions
                ],
            }
            for s in report.sites
        ],
    }
