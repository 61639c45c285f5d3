"""The kernel e2e judge on real boot logs, without building a kernel.

``scripts/kernel-e2e.sh`` boots again on a known qemu flake of the stock 6.1
kernel and fails on anything else.  These tests run its ``judge`` and
``selftest_flake`` functions (the script, sourced, only defines them) on the
serial logs in ``tests/data/kernel-boots`` (real boots, see its README), and
on those logs with one real line of another log added, to show where the
rules stop: a flake plus anything else is a failure.
"""

from __future__ import annotations

import lzma
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kernel-e2e.sh"
LOGS = ROOT / "tests" / "data" / "kernel-boots"
# ftrace_list_end in the images that wrote {ftpatch,stock}-boot-oops.log (nm).
LIST_END = "ffffffc0083d8700"


def log_text(name: str) -> str:
    return lzma.decompress((LOGS / f"{name}.log.xz").read_bytes()).decode()


def write_log(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "boot.log"
    path.write_text(text)
    return path


def run(function: str, *args: str, boot_rc: int = 0) -> subprocess.CompletedProcess[str]:
    # $0 is not the script, so sourcing it defines functions and runs nothing.
    command = f'source "$1"; shift; set +e; BOOT_RC={boot_rc}; {function} "$@"'
    return subprocess.run(
        ["bash", "-c", command, "judge-test", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def judge(path: Path, list_end: str = "", boot_rc: int = 0) -> str:
    done = run("judge", str(path), "ftpatch", list_end, boot_rc=boot_rc)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def selftest_flake(path: Path) -> bool:
    done = run("selftest_flake", str(path))
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


STOCK_FLAKES = ["filter", "ops", "recursion", "recursion-safe"]


@pytest.mark.parametrize("kind", STOCK_FLAKES)
def test_each_stock_self_test_flake_is_known(tmp_path: Path, kind: str) -> None:
    path = write_log(tmp_path, log_text(f"stock-selftest-{kind}"))
    assert selftest_flake(path)
    # These boots had no init and panicked there: judge does not call a
    # panic a flake, whatever the self-tests did.
    verdict = judge(path)
    assert verdict.startswith("fail:") and "panic" in verdict


@pytest.mark.parametrize(
    "name", ["stock-selftest-pass", "negative-ftrace-bug", "unrewritten-ftrace-bug"]
)
def test_no_flake_without_exactly_one_known_failure(tmp_path: Path, name: str) -> None:
    path = write_log(tmp_path, log_text(name))
    assert not selftest_flake(path)
    verdict = judge(path)
    assert verdict.startswith("fail:")
    if "ftrace-bug" in name:
        assert "ftrace bug" in verdict


def test_full_boots(tmp_path: Path) -> None:
    assert judge(write_log(tmp_path, log_text("ftpatch-boot-pass"))) == "pass"
    assert judge(write_log(tmp_path, log_text("ftpatch-boot-flake"))) == "flake:self-test"
    for kernel in ("ftpatch", "stock"):
        oops = write_log(tmp_path, log_text(f"{kernel}-boot-oops"))
        assert judge(oops, LIST_END) == "flake:oops-race"
        # Another op in x2 is not that race.
        assert judge(oops, "ffffffc0083d8708").startswith("fail:Oops")
    # A timed-out boot is a failure even after a flake.
    flake = write_log(tmp_path, log_text("ftpatch-boot-flake"))
    assert judge(flake, boot_rc=124).startswith("fail:")


def _lines_with(name: str, needle: str) -> list[str]:
    return [line for line in log_text(name).splitlines() if needle in line]


@pytest.mark.parametrize(
    "extra",
    [
        # a second known failure: two different things went wrong
        ("stock-selftest-recursion", "Testing ftrace recursion: *callback"),
        # an oops on top of the flake
        ("ftpatch-boot-oops", "Internal error: Oops"),
        # an ftrace bug on top of the flake
        ("negative-ftrace-bug", "ftrace bug"),
        # a WARNING from somewhere other than the self-test runner
        ("negative-ftrace-bug", "WARNING: CPU"),
    ],
    ids=["second-failure", "oops", "ftrace-bug", "other-warning"],
)
def test_flake_plus_anything_else_fails(tmp_path: Path, extra: tuple[str, str]) -> None:
    base = log_text("ftpatch-boot-flake")
    path = write_log(tmp_path, base)
    assert judge(path) == "flake:self-test"
    added = _lines_with(*extra)
    assert added, extra
    lines = base.splitlines()
    # Put the line among the self-test output, where it would appear.
    at = next(i for i, line in enumerate(lines) if "Testing tracer nop" in line)
    path = write_log(tmp_path, "\n".join(lines[:at] + added[:1] + lines[at:]) + "\n")
    assert not selftest_flake(path)
    assert judge(path).startswith("fail:")


def test_an_unknown_self_test_failure_is_no_flake(tmp_path: Path) -> None:
    # The flake log with its one FAILED line swapped for the function tracer
    # self-test failure of the unrewritten kernel (a real line, not a flake).
    (unknown,) = _lines_with("unrewritten-ftrace-bug", "Testing tracer function: ")
    assert "FAILED" in unknown
    lines = log_text("ftpatch-boot-flake").splitlines()
    (at,) = [i for i, line in enumerate(lines) if "filter did not filter" in line]
    lines[at] = unknown
    path = write_log(tmp_path, "\n".join(lines) + "\n")
    assert not selftest_flake(path)
    assert judge(path).startswith("fail:")


def test_a_module_trace_with_unfiltered_functions_is_the_stale_code_flake(tmp_path: Path) -> None:
    # The init's module check failed, and the trace it printed holds
    # functions outside its filter: BLs the kernel had not enabled ran.
    text = log_text("stock-boot-filter-leak")
    assert judge(write_log(tmp_path, text)) == "flake:filter-leak"
    # The same failure with no function outside the filter in the printed
    # trace (the real log less its tick lines) is a plain failure.
    own = [line for line in text.splitlines() if "tick_handle_periodic" not in line
           and "calc_global_load_tick" not in line and not line.endswith("|  }")]
    assert any("FTPATCH-E2E: FAIL" in line for line in own)
    assert judge(write_log(tmp_path, "\n".join(own) + "\n")).startswith("fail:")
    # And the leak with an Oops on top, or after a timeout, is a failure too.
    (oops,) = _lines_with("ftpatch-boot-oops", "Internal error: Oops")[:1]
    lines = text.splitlines()
    path = write_log(tmp_path, "\n".join([*lines[:100], oops, *lines[100:]]) + "\n")
    assert judge(path).startswith("fail:")
    assert judge(write_log(tmp_path, text), boot_rc=124).startswith("fail:")


def test_a_boot_whose_module_region_cannot_show_the_path_is_booted_again(tmp_path: Path) -> None:
    # A real boot (6.12 Clang, stock, ftpatch.module_path=plt): its random
    # module region put the module in BL range of ftrace_caller, so the init
    # stopped with AGAIN; the script boots again.
    text = log_text("stock-boot-module-layout")
    assert "FTPATCH-E2E: AGAIN module layout: " in text
    assert judge(write_log(tmp_path, text)) == "again:module-layout"
    # AGAIN after a self-test failure, an Oops, or a timeout is a failure.
    lines = text.splitlines()
    for extra in (
        _lines_with("unrewritten-ftrace-bug", "Testing tracer function: ")[:1],
        _lines_with("ftpatch-boot-oops", "Internal error: Oops")[:1],
    ):
        assert extra
        path = write_log(tmp_path, "\n".join([*lines[:100], *extra, *lines[100:]]) + "\n")
        assert judge(path).startswith("fail:")
    assert judge(write_log(tmp_path, text), boot_rc=124).startswith("fail:")
    # And a FAIL line is never turned into AGAIN.
    failed = text.replace("FTPATCH-E2E: AGAIN module layout: ", "FTPATCH-E2E: FAIL module layout: ")
    assert judge(write_log(tmp_path, failed)).startswith("fail:")
