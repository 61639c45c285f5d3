"""Scan and rewrite results -> text lines and JSON-ready dicts.  Prints nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftpatch.model import Edit, Site

if TYPE_CHECKING:  # the rewrite's messages load this module: no scan machinery
    from ftpatch.elf.container import Compression
    from ftpatch.rewrite import RewriteResult
    from ftpatch.scan import ScanResult


def wrapping(signed: bool, compression: Compression | None) -> str:
    """What wraps a file's ELF data, in words ("" for a plain ELF file)."""
    parts = []
    if compression is not None:
        parts.append(f"{compression.value}-compressed")
    if signed:
        parts.append("signed (appended module signature)")
    return ", ".join(parts)


def site_dict(site: Site) -> dict[str, Any]:
    r = site.record
    return {
        "record_section": r.section,
        "record_section_index": r.section_index,
        "record_index": r.index,
        "record_kind": r.kind.value,
        "record_value": r.value,
        "target_section": r.target_section,
        "target_section_index": r.target_index,
        "target_offset": r.target_offset,
        "target_address": r.target_address,
        "function": site.function,
        "location": site.location.place,
        "layout": str(site.layout) if site.layout else None,
        "prefix_nops": site.layout.prefix_nops if site.layout else None,
        "bti": site.layout.bti if site.layout else None,
        "state": site.state.value,
        "reason": site.reason,
        "entry_offset": site.entry_offset,
        "mov_offset": site.mov_offset,
        "slot_offset": site.slot_offset,
        "slot_address": site.slot_address,
        "literal_offset": site.literal_offset,
    }


def scan_dict(result: ScanResult) -> dict[str, Any]:
    elf = result.elf
    return {
        "path": result.path,
        "kind": result.kind,
        "signed": elf.signature is not None,
        "compression": None if elf.compression is None else elf.compression.value,
        "endian": "big" if elf.big_endian else "little",
        "prefix_nops": result.prefix,
        "counts": result.counts(),
        "sites": [site_dict(s) for s in result.sites],
    }


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def scan_lines(result: ScanResult) -> list[str]:
    sites = result.sites
    wrapped = wrapping(result.elf.signature is not None, result.elf.compression)
    head = f"{result.path}: {wrapped}:" if wrapped else f"{result.path}:"
    if not sites:
        return [f"{head} no patchable function entries"]
    sections = len({s.record.section_index for s in sites})
    lines = [
        f"{head} {len(sites)} records in {sections} section"
        f"{'s' if sections != 1 else ''} ({_summary(result.counts())})"
    ]
    rows = []
    for s in sites:
        r = s.record
        where = s.location.place
        rows.append(
            (
                f"[{r.section_index}] {r.section} #{r.index}",
                f"{r.target_section}+{r.target_offset:#x}",
                where if s.function else "-",
                str(s.layout) if s.layout else "-",
                s.state.value + (f": {s.reason}" if s.reason else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("record", "target", "function", "layout", "state")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=False)]
    for row in [header, *rows]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:4])]
        lines.append("  " + "  ".join(cells) + "  " + row[4])
    return lines


def edit_dict(edit: Edit) -> dict[str, Any]:
    return {
        "file_offset": edit.file_offset,
        "location": edit.location.place,
        "what": edit.what,
        "old": edit.old.hex(),
        "new": edit.new.hex(),
    }


def rewrite_dict(result: RewriteResult) -> dict[str, Any]:
    """Needs the result's Plan: rewrite_file(..., detail=True)."""
    assert result.plan is not None
    return {
        "path": result.path,
        "output": result.output,
        "sites": result.sites,
        "pristine": result.pristine,
        "already_rewritten": result.rewritten,
        "edits": [edit_dict(e) for e in result.plan.edits],
        "signed": result.signed,
        "signature_dropped": result.strips,
        "written": result.written,
    }


def rewrite_line(result: RewriteResult, *, check: bool = False, dry_run: bool = False) -> str:
    path = result.path
    n = result.sites
    would = check or dry_run
    target = "" if would or result.output == result.path else f" -> {result.output}"
    if n == 0 or result.pristine == 0:
        what = "no patchable function entries" if n == 0 else f"all {n} sites already rewritten"
        if result.strips:
            dropped = "would drop" if would else "dropped"
            return f"{path}: {what}; {dropped} the module signature{target}"
        if result.signed:
            return f"{path}: {what}, nothing to do (signed module: its signature still holds)"
        return f"{path}: {what}, nothing to do"
    if would:
        tail = ""
        if result.strips:
            tail = ", dropping the module signature"
        elif result.signed:
            tail = " (signed module: rewrite refuses it without --strip-signature)"
        return f"{path}: would rewrite {result.pristine} of {n} sites{tail}"
    tail = ", dropped the module signature" if result.strips else ""
    return f"{path}: rewrote {result.pristine} of {n} sites{tail}{target}"


def plan_lines(result: RewriteResult) -> list[str]:
    """Needs the result's Plan: rewrite_file(..., detail=True)."""
    assert result.plan is not None
    lines = []
    for e in result.plan.edits:
        lines.append(
            f"  {e.location.place}: file offset {e.file_offset:#x}: "
            f"{e.what}: {e.old.hex()} -> {e.new.hex()}"
        )
    return lines
