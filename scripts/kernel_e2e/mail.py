"""The parts of a patch mail that scripts/make-series.sh needs.

A patch from ``git format-patch`` is mail headers (``Subject:`` possibly
folded, ``[PATCH n/m]`` to strip), a blank line, the description, a line
``---``, maybe a diffstat, and the diff from its first ``diff --git`` or
``--- a/`` line.  A cover letter has the same headers, its text, and then
git's shortlog (``AUTHOR (N):``).

    python -m kernel_e2e.mail split PATCH DIR    DIR/msg (subject, blank, description), DIR/diff
    python -m kernel_e2e.mail cover PATCH AUTHOR the cover letter's subject, blank, text
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def headers(lines: list[str]) -> tuple[str, list[str]]:
    """The unfolded subject without its ``[PATCH ...]`` tag, and the lines after the headers."""
    i, subject = 0, ""
    while i < len(lines) and lines[i] != "":
        if lines[i].startswith("Subject: "):
            subject = lines[i][len("Subject: ") :]
            while i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t"):
                i += 1
                subject += " " + lines[i].strip()
        i += 1
    return re.sub(r"^\[PATCH[^]]*\]\s*", "", subject), lines[i + 1 :]


def split(patch: Path, out: Path) -> None:
    subject, rest = headers(patch.read_text(encoding="utf-8").split("\n"))
    if not subject:
        sys.exit(f"{patch}: no Subject: header")
    cut = rest.index("---")
    body = "\n".join(rest[:cut]).strip("\n")
    tail = rest[cut + 1 :]
    start = next(
        n
        for n, line in enumerate(tail)
        if line.startswith("diff --git ") or re.match(r"--- (a/|/dev/null)", line)
    )
    (out / "msg").write_text(subject + "\n\n" + body + "\n", encoding="utf-8")
    (out / "diff").write_text("\n".join(tail[start:]), encoding="utf-8")


def cover(patch: Path, author: str) -> str:
    subject, rest = headers(patch.read_text(encoding="utf-8").split("\n"))
    if not subject or "SUBJECT HERE" in subject:
        sys.exit(f"{patch}: no subject")
    shortlog = re.compile(re.escape(author) + r" \(\d+\):$")
    end = next((n for n, line in enumerate(rest) if shortlog.match(line)), len(rest))
    return subject + "\n\n" + "\n".join(rest[:end]).strip("\n")


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "split":
        split(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 3 and argv[0] == "cover":
        print(cover(Path(argv[1]), argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
