"""summary.json: what one e2e run found, one typed key at a time.

Each command of the e2e adds its keys to the file (read, merged, written
whole with ``json``), so the file is current whenever the run stops.  The
keys the shell notes itself, facts of the build rather than judgements,
are declared in NOTES with the type each holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bootlog import BootLog
from .rules import Judgement

Value = str | int | float | bool | None | list[str] | dict[str, Any]

# Keys (or key prefixes, ending in "_") the shell sets with ``note``, and their types.
NOTES: dict[str, type] = {
    "kernel_version": str,
    "qemu": str,
    "config_checked": str,
    "build_seconds_": float,
    "module_damaged_site": str,
    "module_literal_damaged_site": str,
    "module_literal_damaged_verify": str,
    "module_stamp_tracks_command": str,
    "norewrite_build_failed": str,
    "verify": str,
    "samples_verify": str,
    "direct_samples_booted": str,
}


def note_value(key: str, text: str) -> Value:
    """``text`` as the type NOTES declares for ``key``; ValueError if none."""
    for name, kind in NOTES.items():
        if key == name or (name.endswith("_") and key.startswith(name)):
            return float(text) if kind is float else text
    raise ValueError(f"summary key {key!r} is not one the shell notes: {', '.join(NOTES)}")


class Summary:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Value]:
        if not self.path.exists():
            return {}
        doc: dict[str, Value] = json.loads(self.path.read_text())
        return doc

    def update(self, values: dict[str, Value]) -> None:
        doc = {**self.read(), **values}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(doc.items())), indent=1) + "\n")
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class BootSummary:
    """One kernel's boots: the last one's log and verdict, and every retry."""

    kernel: str
    log: BootLog
    judgement: Judgement
    seconds: float
    flake_logs: tuple[str, ...]
    layout_logs: tuple[str, ...]

    def items(self) -> dict[str, Value]:
        k = self.kernel
        return {
            f"boots_{k}": 1 + len(self.flake_logs) + len(self.layout_logs),
            f"flakes_{k}": len(self.flake_logs),
            f"layout_retries_{k}": len(self.layout_logs),
            f"flake_logs_{k}": list(self.flake_logs),
            f"layout_logs_{k}": list(self.layout_logs),
            f"boot_seconds_{k}": self.seconds,
            f"boot_log_{k}": self.log.path,
            f"boot_verdict_{k}": str(self.judgement),
            f"ftrace_init_ms_{k}": self.log.ftrace_init_ms,
            f"self_tests_passed_{k}": len(self.log.passed),
            f"ftrace_entries_{k}": self.log.ftrace_entries,
        }


def scan_counts(scan: dict[str, Any]) -> dict[str, int]:
    """The per-state site counts of the one file of ``ftpatch scan --json``."""
    (entry,) = scan["files"]
    counts: dict[str, int] = entry["counts"]
    return counts


def core_sites(scan: dict[str, Any]) -> int:
    """Sites outside .init.text: what the kernel lists once a module has loaded."""
    (entry,) = scan["files"]
    return sum(not s["target_section"].startswith(".init") for s in entry["sites"])


def state_line(scan: dict[str, Any]) -> str:
    """``pristine=0 rewritten=N ...``: each state's site count, by name."""
    (entry,) = scan["files"]
    states: dict[str, int] = {}
    for site in entry["sites"]:
        states[site["state"]] = states.get(site["state"], 0) + 1
    return " ".join(f"{k}={v}" for k, v in sorted(states.items()))
