"""libFuzzer target (atheris): coverage-guided fuzzing of scan, rewrite and verify.

    pip install atheris
    mkdir -p fuzz/corpus && python3 fuzz/atheris_target.py --make-corpus fuzz/corpus
    python3 fuzz/atheris_target.py fuzz/corpus -max_total_time=3600 -rss_limit_mb=4096 \
        -timeout=10 -artifact_prefix=fuzz/crashes/

Each input is a whole ELF file.  libFuzzer's own byte-level mutations are
mixed with ftfuzz's structure-aware ones (field values near 2^32 and 2^64,
table copies) through a custom mutator; coverage of ftpatch steers both.
A broken promise raises ftfuzz.Bug, which libFuzzer reports as a crash and
saves under -artifact_prefix.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["ftpatch"]):
    import ftpatch.elf.image
    import ftpatch.elf.reader
    import ftpatch.elf.records
    import ftpatch.plan
    import ftpatch.rewrite
    import ftpatch.scan  # noqa: F401

import ftfuzz

_WORK = Path(tempfile.mkdtemp(prefix="ftpatch-atheris-"))
_SEEDS: list[ftfuzz.Seed] = []


def _seeds() -> list[ftfuzz.Seed]:
    if not _SEEDS:
        _SEEDS.extend(ftfuzz.fixture_seeds())
        _SEEDS.extend(ftfuzz.linked_seeds(_WORK / "linked"))
    return _SEEDS


def test_one_input(data: bytes) -> None:
    # verify is slow (unicorn); the campaign flag FTPATCH_ATHERIS_VERIFY=1 adds it.
    ftfuzz.check(data, _WORK / "w", verify=_VERIFY, time_limit_s=10.0)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5 or len(data) < 64:
        return bytes(atheris.Mutate(data, max_size))
    try:
        base = ftfuzz.load_seed("input", data)  # the fields of this (valid enough) input
    except Exception:
        base = rng.choice(_seeds())
    ops = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(rng.randint(1, 3))]
    return ftfuzz.mutate(base, ops)[:max_size]


def make_corpus(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for seed in _seeds():
        (out / seed.name.replace("/", "_")).write_bytes(seed.data)
    for path in sorted(ftfuzz.REGRESSIONS.glob("*.elf")):
        (out / path.name).write_bytes(path.read_bytes())


_VERIFY = False

if __name__ == "__main__":
    import os

    _VERIFY = ftfuzz.VERIFY and os.environ.get("FTPATCH_ATHERIS_VERIFY") == "1"
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(Path(sys.argv[2]))
        sys.exit(0)
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
