"""The compiler's warnings in a W=1 build log, and the series' new ones.

The e2e compiles the C files the series touches with ``make W=1`` twice in
one run: in the stock kernel (CONFIG_FTPATCH=n, the arm64 side not applied)
and in the ftpatch kernel.  A warning is keyed by its file, its text and its
option, never its line: the series moves lines, and a warning that only
moved is not new.  Equal warnings are counted, so a second copy is new.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# GCC and Clang: "path:line:col: warning: text [-Wflag]" (col optional).
_WARNING = re.compile(
    r"^(?P<path>[^\s:]+):\d+:(?:\d+:)? warning: (?P<text>.*?)(?: \[(?P<flag>-W[^\]]+)\])?$"
)


@dataclass(frozen=True, order=True)
class CompilerWarning:
    path: str  # as the compiler printed it, the source tree's prefix removed
    text: str
    flag: str  # "-Wmissing-prototypes"; "" when the compiler named none

    def __str__(self) -> str:
        return f"{self.path}: warning: {self.text}" + (f" [{self.flag}]" if self.flag else "")


def parse(log: str, source_root: str = "") -> Counter[CompilerWarning]:
    """Every warning line of ``log``; paths under ``source_root`` made relative."""
    found: Counter[CompilerWarning] = Counter()
    prefix = source_root.rstrip("/") + "/" if source_root else ""
    for line in log.splitlines():
        if m := _WARNING.match(line.strip()):
            path = m["path"]
            if prefix and path.startswith(prefix):
                path = path[len(prefix) :]
            found[CompilerWarning(path, m["text"], m["flag"] or "")] += 1
    return found


Warnings = Counter[CompilerWarning]


def new_warnings(stock: Warnings, patched: Warnings) -> list[CompilerWarning]:
    """The warnings of ``patched`` that ``stock`` does not have (each extra copy once)."""
    return sorted((patched - stock).elements())
