"""One ftpatch process for all modules, or one per module (never a timed test).

A kernel build links hundreds of modules; patches/6.12/0001 rewrites them in
Makefile.modfinal.  This measures the two ways of hooking it on real objects:
``ftpatch rewrite -q M`` once per file (one make rule per module) against one
``ftpatch rewrite -q M1 M2 ...`` (its default -j: one worker per CPU) over
all of them, each on fresh copies, and checks that both leave the same bytes.

Usage: python3 benchmarks/bench_modules.py DIR [--limit N] [--json]

DIR holds the objects (``*.ko`` or ``*.o`` compiled with
-fpatchable-function-entry, searched recursively: a kernel build directory
will do; vmlinux.o and *.mod.o are left out), at most N of them (300).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FTPATCH = [sys.executable, "-m", "ftpatch"]


def objects(root: Path, limit: int) -> list[Path]:
    found = sorted(
        p
        for pattern in ("*.ko", "*.o")
        for p in root.rglob(pattern)
        if p.name != "vmlinux.o" and not p.name.endswith(".mod.o") and p.stat().st_size > 2048
    )
    return found[:limit]


def copies(files: list[Path], dest: Path) -> list[Path]:
    dest.mkdir()
    out = []
    for i, f in enumerate(files):
        out.append(dest / f"{i:04d}-{f.name}")
        shutil.copyfile(f, out[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    files = objects(args.dir, args.limit)
    if not files:
        raise SystemExit(f"{args.dir}: no objects")
    with tempfile.TemporaryDirectory() as tmp:
        each = copies(files, Path(tmp) / "each")
        one = copies(files, Path(tmp) / "one")
        start = time.perf_counter()
        for f in each:
            subprocess.run([*FTPATCH, "rewrite", "-q", str(f)], check=True)
        per_module = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([*FTPATCH, "rewrite", "-q", *map(str, one)], check=True)
        one_process = time.perf_counter() - start
        same = all(a.read_bytes() == b.read_bytes() for a, b in zip(each, one, strict=True))
    result = {
        "objects": len(files),
        "one_per_module_s": round(per_module, 2),
        "one_process_s": round(one_process, 2),
        "ratio": round(per_module / one_process, 1),
        "same_bytes": same,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['objects']} objects: one ftpatch per module {per_module:.2f} s, "
            f"one for all {one_process:.2f} s ({result['ratio']}x); same bytes: {same}"
        )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
