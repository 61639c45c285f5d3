"""A distribution's module tree through ftpatch: rewrite -r, verify -r, scan -r.

Takes a directory of modules as a distribution installs them (signed,
compressed: ``benchmarks/fetch-debian-modules.sh`` downloads and unpacks
Debian's arm64 kernel package and prints its modules directory), and makes
a working copy as they were before ``modules_install``: decompressed, the
signature dropped (with ftpatch's own reader of the trailer,
ftpatch/elf/container.py).  Then, each command in a fresh process under
``/usr/bin/time`` (wall time, and the peak RSS of the largest process:
``-j`` workers included):

- ``rewrite -q -r COPY``, then ``rewrite --check -r COPY`` (idempotent: exit 0);
- ``verify -j N -r COPY`` for each ``--jobs`` (every site must pass: exit 0);
- ``scan -r TREE`` and ``verify -j 2 -r TREE`` on the tree as installed
  (signed, compressed, pristine: verify exits 1 there, by design), and
  ``rewrite -r TREE`` (refused: compressed);

and prints a table (``--json``: one document).  Figures only; it asserts the
exit statuses, never a time.  Targets of the issue it measures: verify -j 2
over Debian's 6.12 tree (4,349 modules) in <= 25 s, its largest process
<= 150 MiB.

Usage: python3 benchmarks/bench_distro.py DIR [--jobs 1 --jobs 2] [--keep COPY] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ftpatch.elf.container import appended_signature, compression_of, decompress  # noqa: E402
from ftpatch.model import Location  # noqa: E402

FTPATCH = [sys.executable, "-m", "ftpatch"]
SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def unwrap(tree: Path, dest: Path) -> int:
    """Copy every module under ``tree`` to ``dest`` (same relative path,
    ``.ko``), decompressed and without its signature; the count."""
    count = 0
    for path in sorted(tree.rglob("*")):
        name = path.name
        if not path.is_file() or not name.endswith(SUFFIXES):
            continue
        data = path.read_bytes()
        where = Location(str(path))
        kind = compression_of(data[:8])
        if kind is not None:
            data = decompress(data, kind, where)
        sig = appended_signature(data, len(data), where)
        if sig is not None:
            data = data[: sig.elf_size]
        rel = path.relative_to(tree)
        out = dest / rel.parent / (name.split(".ko")[0] + ".ko")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        count += 1
    return count


def timed(args: list[str], expect: int) -> dict[str, object]:
    """One ftpatch command under /usr/bin/time: its wall time, peak RSS, status."""
    with tempfile.NamedTemporaryFile("r") as stats:
        proc = subprocess.run(
            ["/usr/bin/time", "-o", stats.name, "-f", "%e %M", *FTPATCH, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        wall, rss = stats.read().split()[-2:]
    if proc.returncode != expect:
        tail = "\n".join(proc.stderr.splitlines()[-5:])
        what = " ".join(args[:3])
        raise SystemExit(f"ftpatch {what}...: exit {proc.returncode}, not {expect}\n{tail}")
    shown = (a if not a.startswith("/") else Path(a).name for a in args)
    return {
        "command": "ftpatch " + " ".join(shown),
        "wall_s": float(wall),
        "peak_rss_mib": round(int(rss) / 1024, 1),
        "exit": proc.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="modules as installed (e.g. lib/modules/VER/kernel)")
    ap.add_argument("--jobs", type=int, action="append", help="verify -j N (repeatable; default 2)")
    ap.add_argument("--keep", type=Path, help="make the working copy here and keep it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("needs /usr/bin/time (apt-get install time)")
    work = Path(tempfile.mkdtemp(prefix="ftpatch-distro-")) if args.keep is None else args.keep
    copy = work / "modules"
    try:
        if copy.exists():
            shutil.rmtree(copy)
        count = unwrap(args.dir, copy)
        if not count:
            raise SystemExit(f"{args.dir}: no modules")
        runs = [
            timed(["rewrite", "-q", "-r", str(copy)], 0),
            timed(["rewrite", "-q", "--check", "-r", str(copy)], 0),
        ]
        for jobs in args.jobs or [2]:
            runs.append(timed(["verify", "-j", str(jobs), "-r", str(copy)], 0))
        runs.append(timed(["scan", "-r", str(args.dir)], 0))
        runs.append(timed(["verify", "-j", "2", "-r", str(args.dir)], 1))
        compressed = any(p.name.endswith(SUFFIXES[1:]) for p in args.dir.rglob("*.ko.*"))
        runs.append(timed(["rewrite", "-q", "-r", str(args.dir)], 2 if compressed else 0))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"modules": count, "loadavg": load, "runs": runs}, indent=2))
        return
    print(f"{count} modules from {args.dir}; load average {load[0]:.2f} {load[1]:.2f}")
    for run in runs:
        print(
            f"  {run['wall_s']:7.2f} s  {run['peak_rss_mib']:7.1f} MiB  exit {run['exit']}  "
            f"{run['command']}"
        )


if __name__ == "__main__":
    main()
