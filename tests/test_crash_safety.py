"""Crash safety: SIGKILL at any moment, a full disk: the original or the whole rewrite.

The large object is built here from generated C (``benchmarks/generate.py``'s
generator) with the real cross compiler and ``ld -r``: 3000 records.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, fixture_path, ftpatch, require

from ftpatch.elf.writer import TMP_SUFFIX, temp_path
from ftpatch.rewrite import rewrite_file

BIG_FILES, BIG_FUNCS = 6, 500  # 3000 records, ~540 KB


def build_big_object(out_dir: Path) -> Path:
    """``ld -r`` of BIG_FILES generated C files of BIG_FUNCS functions each."""
    require("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld")
    big = out_dir / "big.o"
    if big.exists():
        return big
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import generate
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    objs = []
    for n in range(BIG_FILES):
        src = out_dir / f"gen{n}.c"
        src.write_text(generate.c_source(n, BIG_FUNCS, seed=n))
        obj = src.with_suffix(".o")
        procs.append(subprocess.Popen([*generate.CC, str(src), "-o", str(obj)]))
        objs.append(str(obj))
    assert all(p.wait() == 0 for p in procs)
    subprocess.run(["aarch64-linux-gnu-ld", "-r", "-o", str(big), *objs], check=True)
    return big


@pytest.fixture(scope="session")
def big_object(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """(original bytes, bytes of its complete rewrite) of the large object."""
    big = build_big_object(tmp_path_factory.getbasetemp() / "big-object")
    work = tmp_path_factory.mktemp("reference") / "big.o"
    shutil.copyfile(big, work)
    result = rewrite_file(str(work))
    assert result.written and result.pristine == BIG_FILES * BIG_FUNCS
    return big.read_bytes(), work.read_bytes()


def temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(TMP_SUFFIX))


def reset(path: Path, data: bytes) -> None:
    """Put the original back as a build would: a new file renamed over the name."""
    fresh = path.with_name(path.name + ".fresh")
    fresh.write_bytes(data)
    fresh.chmod(0o644)
    os.replace(fresh, path)


# -- SIGKILL between any two system calls of the rewrite ----------------------

# What rewrite_file can call in os: every call is a moment to die at, just
# before and just after it.
HOOKED = (
    "open", "close", "fstat", "stat", "write", "pwrite", "pread", "copy_file_range",
    "fchmod", "fsync", "replace", "rename", "unlink", "ftruncate",
)  # fmt: skip


def _die_at(step: int) -> None:
    """In a forked child: SIGKILL ourselves at the ``step``-th hooked moment."""
    seen = 0

    def hook(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal seen
            seen += 1
            if seen == step:
                os.kill(os.getpid(), signal.SIGKILL)
            out = fn(*args, **kwargs)
            seen += 1
            if seen == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        return wrapper

    for name in HOOKED:
        if hasattr(os, name):
            setattr(os, name, hook(getattr(os, name)))


def _rewrite_in_child(path: Path, step: int) -> int:
    """Fork, die at ``step`` in the child's rewrite; return the child's wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 3
        try:
            _die_at(step)
            rewrite_file(str(path))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.toolchain
def test_sigkill_at_every_system_call_leaves_the_original_or_the_rewrite(
    big_object: tuple[bytes, bytes], tmp_path: Path
) -> None:
    original, rewritten = big_object
    path = tmp_path / "big.o"
    outcomes: Counter[str] = Counter()
    step = 0
    while True:
        step += 1
        reset(path, original)
        status = _rewrite_in_child(path, step)
        data = path.read_bytes()
        assert data in (original, rewritten), f"step {step}: a torn file"
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0
            assert data == rewritten and temps(tmp_path) == []
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        outcomes["original" if data == original else "rewritten"] += 1
        if temps(tmp_path):
            outcomes["stale temporary left"] += 1
            assert temps(tmp_path) == [Path(temp_path(str(path))).name]
        # The next run finishes the job, and clears a stale temporary file.
        result = rewrite_file(str(path))
        assert path.read_bytes() == rewritten
        assert result.written == (data == original)
        assert temps(tmp_path) == [], f"step {step}: stale temporary kept"
        assert step < 500
    print(f"\nkilled at {step - 1} moments: {dict(outcomes)}")
    assert outcomes["original"] and outcomes["rewritten"] and outcomes["stale temporary left"]


@pytest.mark.toolchain
def test_sigkill_of_the_command_at_many_moments(
    big_object: tuple[bytes, bytes], tmp_path: Path
) -> None:
    """The real process, killed from outside at 40 moments spread over its run."""
    original, rewritten = big_object
    path = tmp_path / "big.o"
    cmd = [sys.executable, "-m", "ftpatch", "rewrite", "-q", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reset(path, original)
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    whole = time.perf_counter() - started
    outcomes: Counter[str] = Counter()
    kills = 40
    for k in range(kills):
        reset(path, original)
        proc = subprocess.Popen(cmd, env=env)
        # Most of a run is Python starting up: aim most kills at its end.
        time.sleep(whole * (0.1 + 1.1 * (k / kills) ** 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = path.read_bytes()
        assert data in (original, rewritten), f"kill {k}: a torn file"
        outcomes["original" if data == original else "rewritten"] += 1
        outcomes["stale temporary"] += bool(temps(tmp_path))
    r = ftpatch("rewrite", path)
    assert r.returncode == 0 and path.read_bytes() == rewritten
    assert temps(tmp_path) == []
    print(f"\n{kills} kills over {whole:.2f} s: {dict(outcomes)}")
    assert outcomes["original"] and outcomes["rewritten"]


# -- a full disk ------------------------------------------------------------------


def _limited(limit: int) -> Callable[[], None]:
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_file_size_limit_gives_a_clear_error_and_leaves_no_trace(
    copy_fixture: Callable[[str], Path], fraction: float
) -> None:
    p = copy_fixture("obj/gcc-funcsections.o")
    original = p.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "rewrite", str(p)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_limited(int(len(original) * fraction)),
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"{p}: cannot write: File too large; input left unchanged\n"
    assert p.read_bytes() == original
    assert temps(p.parent) == []


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_gives_a_clear_error_and_leaves_no_trace(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        p = disk / "obj.o"
        shutil.copyfile(fixture_path("obj/clangxx-comdat.o"), p)
        original = p.read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - len(original) // 2))
        r = ftpatch("rewrite", p)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr == f"{p}: cannot write: No space left on device; input left unchanged\n"
        assert p.read_bytes() == original
        assert temps(disk) == []
        (disk / "filler").unlink()
        assert ftpatch("rewrite", p).returncode == 0  # room again: it works
