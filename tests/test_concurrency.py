"""Concurrent runs on one file (a parallel make mishap): serialised, one rewrite.

Every run must exit 0; exactly one says it rewrote the sites, the others find
them rewritten; the file is the single correct rewrite; nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, fixture_path, ftpatch, sha256
from test_crash_safety import big_object, reset, temps  # noqa: F401  (fixture)

from ftpatch.elf.writer import locked
from ftpatch.rewrite import rewrite_file

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ftpatch", "rewrite", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (out, err)
        assert err == "", err
        lines.append(out.strip())
    return lines


def reference(path: Path, tmp: Path) -> bytes:
    ref = tmp / "reference.o"
    shutil.copyfile(path, ref)
    assert rewrite_file(str(ref)).written
    return ref.read_bytes()


@pytest.mark.toolchain
def test_eight_runs_on_one_large_object_rewrite_it_once(
    big_object: tuple[bytes, bytes],  # noqa: F811
    tmp_path: Path,
) -> None:
    original, rewritten = big_object
    path = tmp_path / "big.o"
    link = tmp_path / "via-symlink.o"
    link.symlink_to(path.name)
    for _round in range(4):
        reset(path, original)
        # Half through a symlink: it resolves to the same file and lock.
        procs = [start(path if i % 2 else link) for i in range(8)]
        lines = finish(procs)
        wrote = [line for line in lines if "rewrote 3000 of 3000 sites" in line]
        assert len(wrote) == 1, lines
        assert sum("nothing to do" in line for line in lines) == 7, lines
        assert path.read_bytes() == rewritten
        assert link.is_symlink()
        assert temps(tmp_path) == []


def test_concurrent_runs_on_small_objects(tmp_path: Path) -> None:
    for name in ("obj/gcc-funcsections.o", "obj/clang-be-prefix42.o"):
        path = tmp_path / Path(name).name
        shutil.copyfile(fixture_path(name), path)
        path.chmod(0o644)
        expected = reference(path, tmp_path)
        lines = finish([start(path) for _ in range(6)])
        assert sum("rewrote" in line for line in lines) == 1, lines
        assert path.read_bytes() == expected
        assert temps(tmp_path) == []


def test_one_command_naming_a_file_many_times_with_jobs(tmp_path: Path) -> None:
    """``rewrite -j4 a.o a.o a.o a.o``: the pool's workers contend for the lock."""
    path = tmp_path / "a.o"
    shutil.copyfile(fixture_path("obj/gcc-sections.o"), path)
    path.chmod(0o644)
    expected = reference(path, tmp_path)
    r = ftpatch("rewrite", "-j", "4", path, path, path, path)
    assert r.returncode == 0, r.stderr
    assert sum("rewrote" in line for line in r.stdout.splitlines()) == 1, r.stdout
    assert path.read_bytes() == expected
    assert temps(tmp_path) == []


def test_waiters_follow_the_file_to_its_new_inode(tmp_path: Path) -> None:
    """Runs that queued on the old inode wake after a rename and must re-lock the new one.

    The test holds the lock, lets four runs queue behind it, then replaces the
    file by rename (as a winning ftpatch run does) with its rewrite: every
    queued run must see the new file, and none may write.
    """
    path = tmp_path / "a.o"
    shutil.copyfile(fixture_path("obj/gcc-bti.o"), path)
    path.chmod(0o644)
    expected = reference(path, tmp_path)
    with locked(str(path)):
        before = os.stat(path).st_ino
        procs = [start(path) for _ in range(4)]
        time.sleep(1.5)  # let them start and block in flock
        assert all(p.poll() is None for p in procs), "a run did not wait for the lock"
        fresh = tmp_path / "fresh.o"
        fresh.write_bytes(expected)
        os.replace(fresh, path)
    lines = finish(procs)
    assert all("nothing to do" in line for line in lines), lines
    assert path.read_bytes() == expected
    assert os.stat(path).st_ino != before
    assert temps(tmp_path) == []


def test_many_files_in_chunks_keep_input_order_and_worst_status(tmp_path: Path) -> None:
    """-j 2 over 120 files sends them to the workers in chunks (cli._run_many):
    the output still follows the input order, a bad file in the middle is
    left byte-identical, every other file is rewritten, and the status is 2."""
    names = []
    for i in range(120):
        src = "bad-site.o" if i == 57 else "gcc-plain-O2.o"
        dest = tmp_path / f"f{i:03d}.o"
        shutil.copyfile(fixture_path(f"obj/{src}"), dest)
        names.append(dest)
    bad_digest = sha256(names[57])
    r = ftpatch("rewrite", "-j", "2", *names)
    assert r.returncode == 2
    good = [n for i, n in enumerate(names) if i != 57]
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(n) for n in good]
    assert all("rewrote" in line for line in lines)
    assert r.stderr.count("\n") == 1 and str(names[57]) in r.stderr
    assert sha256(names[57]) == bad_digest
    again = ftpatch("rewrite", "--check", "-q", "-j", "2", *good)
    assert again.returncode == 0 and again.stdout == ""
