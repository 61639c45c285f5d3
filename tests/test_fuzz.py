"""Fuzzing, quick version: mutated real objects never crash, hang or half-write.

The mutations and the oracle live in ``fuzz/ftfuzz.py`` (shared with the long
campaign, ``fuzz/campaign.py``, and the libFuzzer target).  For every input:
no exception but FtpatchError, a one-line message, the input byte-identical
when rewrite fails, the output exactly input + plan when it succeeds and
left alone by a second run, no file left behind, and a time bound.

``FTPATCH_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py`` runs a long
hypothesis campaign with the same tests.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, ftpatch, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(ROOT / "fuzz"))
import ftfuzz

EXAMPLES = int(os.environ.get("FTPATCH_FUZZ_EXAMPLES", "0"))
SEEDS = ftfuzz.fixture_seeds()
REGRESSIONS = sorted(ftfuzz.REGRESSIONS.glob("*.elf"))
# verify runs in the fuzz tests whenever its emulator (unicorn, keystone) is
# installed; FTPATCH_FUZZ_VERIFY=0 leaves it out.
FUZZ_VERIFY = ftfuzz.VERIFY and os.environ.get("FTPATCH_FUZZ_VERIFY") != "0"
# Inputs of bugs found and not yet fixed: their regression tests are xfail.
KNOWN_UNFIXED: set[str] = set()
# Seeds take milliseconds; a 3 s budget still catches a loop over a hostile count.
LIMIT = 3.0

ops = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    min_size=1,
    max_size=4,
)


def fuzz_settings(quick: int) -> settings:
    # Under CI (CI set, as by .ci/run and the Dockerfile) the same inputs every
    # run, so a red CI is reproducible; elsewhere new inputs each run.
    return settings(
        max_examples=EXAMPLES or quick,
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ftpatch-fuzz-"))


def run_oracle(
    seed: ftfuzz.Seed, op_list: list[tuple[int, ...]], workdir: Path, **kw: object
) -> None:
    data = ftfuzz.mutate(seed, op_list)
    try:
        ftfuzz.check(data, workdir / "w", time_limit_s=LIMIT, **kw)  # type: ignore[arg-type]
    except ftfuzz.Bug as bug:
        keep = workdir / f"crash-{hashlib.sha256(data).hexdigest()[:12]}.elf"
        keep.write_bytes(data)
        pytest.fail(
            f"{bug}\n  seed {seed.name}: {ftfuzz.describe(op_list, seed)}\n  input kept: {keep}"
            "\n  (copy it to tests/regressions/ named after the symptom)"
        )


@fuzz_settings(3000)
@given(seed=st.sampled_from(SEEDS), op_list=ops)
def test_fuzz_objects(seed: ftfuzz.Seed, op_list: list[tuple[int, ...]], workdir: Path) -> None:
    run_oracle(seed, op_list, workdir, verify=False)


@pytest.fixture(scope="module")
def linked_seeds(workdir: Path) -> list[ftfuzz.Seed]:
    require("aarch64-linux-gnu-ld", "ld.lld")
    seeds = ftfuzz.linked_seeds(workdir / "linked")
    assert len(seeds) == 7, [s.name for s in seeds]
    return seeds


@pytest.mark.toolchain
@fuzz_settings(1000)
@given(data=st.data(), op_list=ops)
def test_fuzz_linked_images(
    data: st.DataObject,
    op_list: list[tuple[int, ...]],
    linked_seeds: list[ftfuzz.Seed],
    workdir: Path,
) -> None:
    seed = data.draw(st.sampled_from(linked_seeds))
    run_oracle(seed, op_list, workdir, verify=False)


@pytest.mark.skipif(not FUZZ_VERIFY, reason="unicorn/keystone missing or FTPATCH_FUZZ_VERIFY=0")
@fuzz_settings(100)
@given(seed=st.sampled_from(SEEDS), op_list=ops)
def test_fuzz_verify(seed: ftfuzz.Seed, op_list: list[tuple[int, ...]], workdir: Path) -> None:
    run_oracle(seed, op_list, workdir, verify=True)


@fuzz_settings(300)
@given(seed=st.sampled_from(SEEDS), op_list=ops)
def test_fuzz_through_the_cli(
    seed: ftfuzz.Seed, op_list: list[tuple[int, ...]], workdir: Path
) -> None:
    """The command layer: exit 0 or 2 (1 for verify), one line, never 'internal error'."""
    path = workdir / "cli" / "input.o"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(ftfuzz.mutate(seed, op_list))
    commands = ("scan", "rewrite", "verify") if FUZZ_VERIFY else ("scan", "rewrite")
    try:
        ftfuzz.check_cli(path, *commands)
    except ftfuzz.Bug as bug:
        pytest.fail(f"{bug}\n  seed {seed.name}: {ftfuzz.describe(op_list, seed)}")


# -- regressions: every input a fuzzer found -----------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            id=p.stem,
            marks=[pytest.mark.xfail(reason="known bug, reported", raises=ftfuzz.Bug)]
            if p.name in KNOWN_UNFIXED
            else [],
        )
        for p in REGRESSIONS
    ],
)
def test_regression_input(path: Path, tmp_path: Path) -> None:
    ftfuzz.check(path.read_bytes(), tmp_path / "w", time_limit_s=LIMIT, verify=ftfuzz.VERIFY)
    copy = tmp_path / "cli" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    ftfuzz.check_cli(copy, "scan", "rewrite", *(("verify",) if ftfuzz.VERIFY else ()))


def test_regressions_are_documented() -> None:
    readme = (ftfuzz.REGRESSIONS / "README.md").read_text()
    assert REGRESSIONS
    for path in REGRESSIONS:
        assert f"`{path.name}`" in readme, f"{path.name} has no note in tests/regressions/README.md"


def _regression(name: str, tmp_path: Path) -> Path:
    p = tmp_path / "input.o"
    p.write_bytes((ftfuzz.REGRESSIONS / name).read_bytes())
    return p


def test_nop_run_without_symbol_is_rewritten_once(tmp_path: Path) -> None:
    p = _regression("nop-run-without-symbol-rewritten-again.elf", tmp_path)
    assert ftpatch("rewrite", p).returncode == 0
    r = ftpatch("rewrite", p)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "name",
    [
        "symbol-at-bl-slot-refuses-own-output.elf",
        "bti-site-symbol-moved-refuses-own-output.elf",
        "relr-image-symbol-at-bl-slot.elf",
        "rewritten-site-read-as-prefix-again.elf",
    ],
)
def test_symbol_at_bl_slot_does_not_make_ftpatch_refuse_its_own_output(
    name: str, tmp_path: Path
) -> None:
    p = _regression(name, tmp_path)
    assert ftpatch("rewrite", p).returncode == 0
    r = ftpatch("rewrite", "--check", p)
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_site_ending_its_section_is_still_accepted_after_rewrite(tmp_path: Path) -> None:
    p = _regression("site-at-end-of-section-refused-after-rewrite.elf", tmp_path)
    assert ftpatch("rewrite", p).returncode == 0
    r = ftpatch("rewrite", "--check", p)
    assert r.returncode == 0, (r.stdout, r.stderr)


def test_newline_in_a_symbol_name_keeps_the_message_on_one_line(tmp_path: Path) -> None:
    p = _regression("newline-in-symbol-name-breaks-one-line-message.elf", tmp_path)
    r = ftpatch("rewrite", p)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "\\n" in r.stderr, r.stderr


def test_string_table_offset_past_2_63_is_an_error_not_overflowerror(tmp_path: Path) -> None:
    p = _regression("string-table-offset-past-2-63-overflowerror.elf", tmp_path)
    r = ftpatch("scan", p)
    assert r.returncode == 2 and "internal error" not in r.stderr
    assert "string table" in r.stderr and "outside the file" in r.stderr


def test_nobits_records_section_with_huge_size_is_refused_at_once(tmp_path: Path) -> None:
    p = _regression("nobits-records-section-huge-count-hangs.elf", tmp_path)
    r = ftpatch("rewrite", p)  # conftest's runner times out after 120 s
    assert r.returncode == 2 and "outside the file" in r.stderr, r.stderr


# -- hostile counts and sizes: time and memory stay proportional to the file ---

HOSTILE = (
    0xFFFFFFFF,
    0x100000000,
    0x7FFFFFFFFFFFFFFF,
    0xFFFFFFFFFFFFFFFF,
    0xFFFFFFFFFFFFFFF8,
    (1 << 64) // 24 + 1,
    (1 << 64) // 64 + 1,
)
SIZE_FIELDS = (
    "sh_offset",
    "sh_size",
    "sh_entsize",
    "sh_link",
    "sh_info",
    "sh_name",
    "e_shoff",
    "e_shnum",
    "e_shstrndx",
    "e_phoff",
    "e_phnum",
    "e_shentsize",
    "p_offset",
    "p_filesz",
    "st_name",
    "st_shndx",
    "r_sym",
    "r_offset",
)


def _size_fields(seed: ftfuzz.Seed) -> list[int]:
    """Every header and section header size field; those of 3 entries per table."""
    out = []
    per_table: dict[str, int] = {}
    for i, f in enumerate(seed.fields):
        table, _, name = f.name.rpartition(".")
        if name not in SIZE_FIELDS:
            continue
        if "@" in table:  # a symbol or RELA entry: "table@0x..."
            key = table.split("@")[0] + name
            per_table[key] = per_table.get(key, 0) + 1
            if per_table[key] > 3:
                continue
        out.append(i)
    return out


@pytest.mark.parametrize("seed_name", ["gcc-funcsections.o", "clang-be-prefix42.o"])
def test_hostile_counts_allocate_in_proportion_to_the_file(seed_name: str, tmp_path: Path) -> None:
    """Every size, count, offset and index field at 2^32, 2^63, 2^64-1...: quick, small."""
    seed = next(s for s in SEEDS if s.name == seed_name)
    worst = 0
    tried = 0
    for index in _size_fields(seed):
        field = seed.fields[index]
        order = "big" if seed.big_endian else "little"
        for value in sorted({v & ((1 << field.size * 8) - 1) for v in HOSTILE}):
            data = bytearray(seed.data)
            data[field.file_offset : field.file_offset + field.size] = value.to_bytes(
                field.size, order
            )
            out = ftfuzz.check(
                bytes(data), tmp_path / "w", verify=False, measure_memory=True, time_limit_s=LIMIT
            )
            assert out.peak_bytes is not None
            worst = max(worst, out.peak_bytes)
            tried += 1
    assert tried > 100
    # The seeds are 3-8 KiB: a few MiB of Python objects at most, never a
    # table sized by a field.
    assert worst < 8 << 20, worst


def test_hostile_header_under_an_address_space_limit(tmp_path: Path) -> None:
    """The real command with RLIMIT_AS near its baseline: hostile sizes must not need more."""
    seed = next(s for s in SEEDS if s.name == "gcc-funcsections.o")
    files = []
    for index in _size_fields(seed)[:60]:
        field = seed.fields[index]
        data = bytearray(seed.data)
        data[field.file_offset : field.file_offset + field.size] = b"\xff" * field.size
        p = tmp_path / f"h{index}.o"
        p.write_bytes(bytes(data))
        files.append(str(p))
    for regression in REGRESSIONS:
        p = tmp_path / regression.name
        p.write_bytes(regression.read_bytes())
        files.append(str(p))
    code = (
        "import resource, sys\n"
        "from ftpatch import cli, scan, rewrite, report\n"
        "from ftpatch.elf import image\n"
        "import mmap\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * mmap.PAGESIZE\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), resource.RLIM_INFINITY))\n"
        "sys.argv = ['ftpatch', 'rewrite', '-j', '1', *sys.argv[1:]]\n"
        "cli.main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *files],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (60, 60)),
    )
    assert proc.returncode in (0, 2), proc.stderr
    assert "MemoryError" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
