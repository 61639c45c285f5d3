"""Throughput of ``ftpatch verify`` on a large object from the real cross compiler.

Generates FUNCS C functions (global and static, leaf and calling, half of
them taking a BTI landing pad under -mbranch-protection=standard), compiles
them with ``aarch64-linux-gnu-gcc -O2 -fpatchable-function-entry=2``,
rewrites the object with ftpatch, then times verify: static checks only, the
full single-slot proof, and the two-slot counterexample search on the
pristine object.  Prints figures; asserts only that the results are right.

Usage: python3 benchmarks/bench_verify.py [--funcs 3000] [--bti] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.generate import c_source  # noqa: E402  (the one generator of test C)
from ftpatch.rewrite import rewrite_file  # noqa: E402
from ftpatch.verify import Scheme, VerifyReport, verify_file  # noqa: E402
from ftpatch.verify.emulate import Engine  # noqa: E402

CC = "aarch64-linux-gnu-gcc"


def build(workdir: Path, funcs: int, bti: bool) -> Path:
    src = workdir / "bench.c"
    src.write_text(c_source(0, funcs, seed=1))
    obj = workdir / "bench.o"
    flags = ["-O2", "-g0", "-fpatchable-function-entry=2", "-c"]
    if bti:
        flags.append("-mbranch-protection=standard")
    subprocess.run([CC, *flags, str(src), "-o", str(obj)], check=True)
    return obj


def timed(label: str, repeat: int, run: object) -> tuple[VerifyReport, float]:
    assert callable(run)
    best = float("inf")
    report: VerifyReport | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = run()
        best = min(best, time.perf_counter() - t0)
    assert report is not None
    sites = len(report.sites)
    inter = report.interleavings
    rate_i = f"{inter / best:10.0f} interleavings/s" if inter else ""
    print(f"{label:<34} {sites:6d} sites {inter:7d} interleavings {best:7.3f}s "
          f"{sites / best:9.0f} sites/s {rate_i}")
    return report, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--funcs", type=int, default=3000)
    ap.add_argument("--bti", action="store_true", help="compile with -mbranch-protection=standard")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--keep", type=Path, help="build here and keep the files")
    args = ap.parse_args()
    if shutil.which(CC) is None:
        print(f"bench_verify: {CC} not found", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ftpatch-bench-verify-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        pristine = build(workdir, args.funcs, args.bti)
        compiled = time.perf_counter() - t0
        rewritten = workdir / "bench-rewritten.o"
        shutil.copyfile(pristine, rewritten)
        t0 = time.perf_counter()
        rewrite_file(str(rewritten))
        rewrote = time.perf_counter() - t0
        print(f"{args.funcs} functions{' (BTI)' if args.bti else ''}: compiled in "
              f"{compiled:.1f}s, rewritten in {rewrote:.3f}s; best of {args.repeat}")
        engine = Engine()  # one emulator for every run, as the CLI does

        static, _ = timed("static checks only (--sites 0)", args.repeat,
                          lambda: verify_file(str(rewritten), sites=0))
        full, _ = timed("single-slot, rewritten (all sites)", args.repeat,
                        lambda: verify_file(str(rewritten), engine=engine))
        two, _ = timed("two-slot, pristine (all sites)", args.repeat,
                       lambda: verify_file(str(pristine), scheme=Scheme.TWO_SLOT, engine=engine))
        assert static.ok and full.ok and full.violations == 0, "rewritten object must verify"
        assert len(full.sites) >= args.funcs * 0.9, "most functions must be patch sites"
        assert not two.ok and two.violations >= len(two.sites), "two-slot must fail every site"
        print(f"engine: {engine.runs} emulator runs over {engine.cases} cases")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
