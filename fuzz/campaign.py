"""The long fuzzing campaign: structure-aware random mutation of the seeds.

    python3 fuzz/campaign.py --inputs 200000 --jobs 4 [--seed 1] [--out fuzz/crashes]
    python3 fuzz/campaign.py --minutes 30

Each worker draws a seed and 1-4 mutations (see ftfuzz.py), runs the oracle
on it and, for every new kind of failure, writes the input and a note to
``--out``.  The totals are printed at the end (and every minute).  Not run
by the test suite; its quick sibling is tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ftfuzz


def _signature(message: str) -> str:
    """A failure's kind: its message without numbers, so one bug is saved once."""
    return "".join("#" if ch.isdigit() else ch for ch in message)[:100]


Found = dict[str, tuple[str, str, bytes, int]]


def worker(args: tuple[int, int, float, bool]) -> tuple[int, collections.Counter[str], Found]:
    worker_seed, count, deadline, verify = args
    # A size field that escaped its check shows up as MemoryError, not as a
    # machine brought to its knees.
    # (unicorn, under verify, reserves a 1 GiB translation buffer per engine.)
    limit = (32 if verify else 4) << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    rng = random.Random(worker_seed)
    seeds = ftfuzz.fixture_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        seeds += ftfuzz.linked_seeds(Path(tmp) / "linked")
        workdir = Path(tmp) / "work"
        outcomes: collections.Counter[str] = collections.Counter()
        found: dict[str, tuple[str, str, bytes, int]] = {}
        done = 0
        while done < count and time.time() < deadline:
            seed = rng.choice(seeds)
            ops = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(rng.randint(1, 4))]
            data = ftfuzz.mutate(seed, ops)
            done += 1
            try:
                o = ftfuzz.check(data, workdir, verify=verify, measure_memory=done % 50 == 0)
                outcomes[f"scan={o.scan} rewrite={o.rewrite} verify={o.verify}"] += 1
                if o.peak_bytes is not None and o.peak_bytes > 64 * len(data) + (16 << 20):
                    raise ftfuzz.Bug(f"peak memory {o.peak_bytes} for a {len(data)}-byte input")
            except ftfuzz.Bug as bug:
                sig = _signature(str(bug))
                outcomes["BUG " + sig] += 1
                if sig not in found:
                    found[sig] = (seed.name, ftfuzz.describe(ops, seed), data, worker_seed)
        return done, outcomes, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this long (0: no limit)")
    ap.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "crashes")
    ap.add_argument("--no-verify", action="store_true", help="skip verify even when available")
    a = ap.parse_args()
    deadline = time.time() + a.minutes * 60 if a.minutes else float("inf")
    chunk = 2000
    tasks: list[tuple[int, int, float, bool]] = []
    n = 0
    while n < a.inputs:
        tasks.append(
            (
                a.seed * 1_000_003 + len(tasks),
                min(chunk, a.inputs - n),
                deadline,
                ftfuzz.VERIFY and not a.no_verify,
            )
        )
        n += chunk
    started = time.time()
    total = 0
    outcomes: collections.Counter[str] = collections.Counter()
    found: dict[str, tuple[str, str, bytes, int]] = {}
    with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
        for done, counts, bugs in pool.imap_unordered(worker, tasks):
            total += done
            outcomes.update(counts)
            for sig, item in bugs.items():
                if sig not in found:
                    found[sig] = item
                    a.out.mkdir(parents=True, exist_ok=True)
                    stem = f"crash-{len(found):03d}"
                    (a.out / f"{stem}.elf").write_bytes(item[2])
                    (a.out / f"{stem}.txt").write_text(
                        f"bug: {sig}\nseed: {item[0]}\nops: {item[1]}\n"
                        f"found by: fuzz/campaign.py --seed {a.seed} (worker seed {item[3]})\n"
                    )
                    print(f"NEW {stem}: {sig} ({item[0]})", flush=True)
            print(
                f"{total} inputs, {time.time() - started:.0f} s, {len(found)} bug kinds", flush=True
            )
    print(f"\n{total} inputs in {time.time() - started:.0f} s (seed {a.seed})")
    for key, count in outcomes.most_common():
        print(f"{count:8d}  {key}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
