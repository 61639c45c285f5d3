"""Throughput of ``ftpatch verify`` on a large object from the real cross compiler.

Generates FUNCS C functions (global and static, leaf and calling, half of
them taking a BTI landing pad under -mbranch-protection=standard), compiles
them with ``aarch64-linux-gnu-gcc -O2 -fpatchable-function-entry=2``,
rewrites the object with ftpatch, then times verify: static checks only, the
full single-slot proof, and the two-slot counterexample search on the
pristine object.  Prints figures; asserts only that the results are right.

With ``--file PATH`` (repeatable) it times files you have instead (a kernel
vmlinux.o or vmlinux, ``benchmarks/generate.py``'s big.o, rewritten): each
run in a fresh process, so that its peak RSS is its own, split into the
scan, the static checks (FileChecker) and the emulation, with how many
emulations ran and how many transitions reused one (emulate.py, "Sharing").
Times are medians of --repeat runs, with CPU time (user + sys, the figure to
compare on a busy machine); the load average is printed with them.  With
``--jobs N`` (repeatable) all the files are also verified in one ``-j N``
command.  Issue 15's bounds: peak RSS <= 100 MiB for one file.

Usage: python3 benchmarks/bench_verify.py [--funcs 3000] [--bti] [--repeat 3] [--keep DIR]
       python3 benchmarks/bench_verify.py --file vmlinux.o --file vmlinux [--repeat 3]
           [--jobs 1 --jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
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
    times = []
    report: VerifyReport | None = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = run()
        times.append(time.perf_counter() - t0)
    assert report is not None
    median = statistics.median(times)
    sites = len(report.sites)
    inter = report.interleavings
    rate_i = f"{inter / median:10.0f} interleavings/s" if inter else ""
    print(f"{label:<34} {sites:6d} sites {inter:7d} interleavings {median:7.3f}s "
          f"{sites / median:9.0f} sites/s {rate_i}")
    return report, median


def phases(path: str) -> dict[str, object]:
    """One file, in this process: scan, static checks, emulation, and the
    whole of verify_file in a second pass (the figure a user sees)."""
    import gc

    from ftpatch.scan import scan_file
    from ftpatch.verify.core import resolve_trampoline
    from ftpatch.verify.static import FileChecker

    engine = Engine()
    gc.disable()  # as verify_file does
    t0 = time.perf_counter()
    with scan_file(path) as result:
        t1 = time.perf_counter()
        checker = FileChecker(result, Scheme.SINGLE_SLOT, resolve_trampoline(result, None))
        plans = [checker.check_site(site, i) for i, site in enumerate(result.sites)]
        t2 = time.perf_counter()
        for i, plan in enumerate(plans):
            for case in plan.cases:
                engine.explore(case, trace=False, origin=(path, i))
        t3 = time.perf_counter()
    del plans
    gc.enable()
    gc.collect()
    engine = Engine()
    t4 = time.perf_counter()
    report = verify_file(path, engine=engine)
    t5 = time.perf_counter()
    return {
        "sites": len(report.sites),
        "ok": report.ok,
        "scan": t1 - t0,
        "static": t2 - t1,
        "emulation": t3 - t2,
        "verify_file": t5 - t4,
        "emulations": engine.emulations,
        "reused": engine.reused,
        "runs": engine.runs,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def whole(*args: str) -> tuple[float, int, float, float]:
    """``ftpatch verify ARGS`` as a user runs it: wall time, exit status, that
    process's own peak RSS in MiB and its CPU time (user + sys; os.wait4
    gives its rusage alone).  CPU time is the figure to compare on a busy
    machine; with -j N the workers are its children, whose CPU time and
    peak RSS wait4 does not include (see bench_jobs)."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "ftpatch", "verify", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, child.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def bench_jobs(paths: list[str], repeat: int, jobs: list[int]) -> None:
    """All ``paths`` in one ``ftpatch verify -j N`` (the parallelism is per
    file): wall time, and CPU time and the largest peak RSS of the command
    and its workers together, from a wrapper process's RUSAGE_CHILDREN."""
    for n in jobs:
        walls, cpus, peaks = [], [], []
        for _ in range(repeat):
            code = ("import resource, subprocess, sys, time\n"
                    "t0 = time.perf_counter()\n"
                    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                    "stderr=subprocess.DEVNULL)\n"
                    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                    "print(time.perf_counter() - t0, u.ru_utime + u.ru_stime, u.ru_maxrss)")
            out = subprocess.run(
                [sys.executable, "-c", code, sys.executable, "-m", "ftpatch", "verify",
                 "-j", str(n), *paths], cwd=ROOT, capture_output=True, text=True, check=True)
            wall, cpu, peak = out.stdout.split()
            walls.append(float(wall))
            cpus.append(float(cpu))
            peaks.append(int(peak) / 1024)
        print(f"verify -j {n} over {len(paths)} file(s): {statistics.median(walls):7.3f}s wall, "
              f"{statistics.median(cpus):7.3f}s CPU (all processes), largest peak RSS "
              f"{max(peaks):6.1f} MiB; load {os.getloadavg()[0]:.1f}")


def bench_files(paths: list[str], repeat: int) -> int:
    status = 0
    for path in paths:
        runs = []
        walls = []
        cpus = []
        rss = 0.0
        for _ in range(repeat):
            child = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--phases", path],
                cwd=ROOT, capture_output=True, text=True, check=True)
            runs.append(json.loads(child.stdout))
            wall, exit_status, peak, cpu = whole(path)
            walls.append(wall)
            cpus.append(cpu)
            rss = max(rss, peak)
            status = max(status, exit_status)
        med = {k: statistics.median(float(r[k]) for r in runs)
               for k in ("scan", "static", "emulation", "verify_file", "rss_mib")}
        first = runs[0]
        wall = statistics.median(walls)
        print(f"{path}: {first['sites']} sites, ok={first['ok']}, median of {repeat}, "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"  ftpatch verify (whole command)   {wall:7.3f}s wall, "
              f"{statistics.median(cpus):7.3f}s CPU, peak RSS {rss:6.1f} MiB")
        print(f"  verify_file                      {med['verify_file']:7.3f}s "
              f"({int(first['sites']) / med['verify_file']:.0f} sites/s)")
        total = med["scan"] + med["static"] + med["emulation"]
        for name in ("scan", "static", "emulation"):
            print(f"    {name:<30} {med[name]:7.3f}s  {100 * med[name] / total:5.1f}%")
        print(f"  emulations run {first['emulations']}, transitions that reused one "
              f"{first['reused']}, emulator runs {first['runs']}; phases process peak RSS "
              f"{med['rss_mib']:.1f} MiB")
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--funcs", type=int, default=3000)
    ap.add_argument("--bti", action="store_true", help="compile with -mbranch-protection=standard")
    ap.add_argument("--repeat", type=int, default=3, help="median of N runs")
    ap.add_argument("--keep", type=Path, help="build here and keep the files")
    ap.add_argument("--file", action="append", default=[],
                    help="time this file (repeatable) instead of building one")
    ap.add_argument("--jobs", type=int, action="append", default=[],
                    help="with --file: also time all the files in one verify -j N (repeatable)")
    ap.add_argument("--phases", help=argparse.SUPPRESS)  # child process of --file
    args = ap.parse_args()
    if args.phases:
        print(json.dumps(phases(args.phases)))
        return 0
    if args.file:
        status = bench_files(args.file, args.repeat)
        if args.jobs:
            bench_jobs(args.file, args.repeat, args.jobs)
        return status
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
              f"{compiled:.1f}s, rewritten in {rewrote:.3f}s; median of {args.repeat}")
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
        print(f"engine: {engine.runs} emulator runs over {engine.cases} cases, "
              f"{engine.emulations} emulations run, {engine.reused} reused")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
