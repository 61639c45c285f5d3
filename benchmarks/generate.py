"""Make large, realistic inputs with the real cross toolchain.

- ``big.o``: ``aarch64-linux-gnu-ld -r`` of FILES generated C files with
  FUNCS functions each (static and global, leaf and non-leaf, calls between
  them, a few in .init.text and .text.unlikely), compiled with
  ``-O2 -fpatchable-function-entry=2``: a vmlinux.o-like object with
  FILES*FUNCS records in one section.
- ``small/``: BATCH small objects for the many-files benchmark (SMALL_DISTINCT
  distinct compilations, copied to reach BATCH files).

Usage: python3 benchmarks/generate.py [OUTDIR]   (default /var/tmp/ftpatch-bench)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FILES = int(os.environ.get("BENCH_FILES", "300"))
FUNCS = int(os.environ.get("BENCH_FUNCS", "101"))
BATCH = int(os.environ.get("BENCH_BATCH", "2000"))
SMALL_DISTINCT = 40
CC = ["aarch64-linux-gnu-gcc", "-O2", "-g0", "-fpatchable-function-entry=2", "-c"]


def c_source(file_no: int, funcs: int, seed: int) -> str:
    rng = random.Random(seed)
    out = [f"/* generated file {file_no} */", "extern int sink(int);"]
    names = [f"f{file_no}_{i}" for i in range(funcs)]
    for i, name in enumerate(names):
        attrs = ""
        r = rng.random()
        if r < 0.03:
            attrs = '__attribute__((section(".init.text"))) '
        elif r < 0.06:
            attrs = "__attribute__((cold)) "
        storage = "static " if i % 5 == 3 else ""
        if storage:
            attrs += "__attribute__((used, noinline)) "
        body = [f"int x = a * {rng.randint(2, 99)} + {rng.randint(0, 999)};"]
        if i and rng.random() < 0.5:
            body.append(f"x += {names[rng.randrange(i)]}(x & 0xff);")
        if rng.random() < 0.3:
            body.append("for (int k = 0; k < (a & 7); k++) x ^= x << 1;")
        if rng.random() < 0.2:
            body.append("x = sink(x);")
        out.append(f"{storage}{attrs}int {name}(int a) {{ {' '.join(body)} return x; }}")
    return "\n".join(out) + "\n"


def compile_one(src: Path) -> Path:
    obj = src.with_suffix(".o")
    subprocess.run([*CC, str(src), "-o", str(obj)], check=True)
    return obj


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/ftpatch-bench")
    src_dir = out / "src"
    if src_dir.exists():
        shutil.rmtree(src_dir)
    src_dir.mkdir(parents=True)
    sources = []
    for n in range(FILES):
        p = src_dir / f"gen{n:04d}.c"
        p.write_text(c_source(n, FUNCS, seed=n))
        sources.append(p)
    small_sources = []
    for n in range(SMALL_DISTINCT):
        p = src_dir / f"small{n:03d}.c"
        p.write_text(c_source(10_000 + n, 12, seed=10_000 + n))
        small_sources.append(p)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        objs = list(pool.map(compile_one, sources))
        small_objs = list(pool.map(compile_one, small_sources))
    subprocess.run(
        ["aarch64-linux-gnu-ld", "-r", "-o", str(out / "big.o"), *map(str, objs)], check=True
    )
    shutil.copyfile(small_objs[0], out / "one.o")
    batch = out / "small"
    if batch.exists():
        shutil.rmtree(batch)
    batch.mkdir()
    for i in range(BATCH):
        shutil.copyfile(small_objs[i % SMALL_DISTINCT], batch / f"obj{i:05d}.o")
    print(f"{out}/big.o: {(out / 'big.o').stat().st_size} bytes, from {FILES} files")
    print(f"{out}/one.o, {out}/small/: {BATCH} objects")


if __name__ == "__main__":
    main()
