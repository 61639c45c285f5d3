"""``ftpatch verify`` as a Makefile runs it: exit 0 clean, 1 failing site, 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import fixture_path, ftpatch, rewritten


def test_clean_object_exits_0(tmp_path: Path) -> None:
    run = ftpatch("verify", rewritten(tmp_path, "obj/gcc-bti.o"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": ok: 8 sites" in run.stdout
    assert "48 interleavings, 0 violating" in run.stdout


def test_two_slot_counterexample_exits_1_with_a_trace() -> None:
    run = ftpatch("verify", "--scheme", "two-slot", fixture_path("obj/gcc-plain-O2.o"))
    assert run.returncode == 1
    assert "counterexample, enable (two-slot)" in run.stdout
    assert "-- patcher: store [2]" in run.stdout
    assert "nop (d503201f) -> mov x9, x30 (aa1e03e9) is not a permitted" in run.stdout


def test_json_lists_every_finding(tmp_path: Path) -> None:
    run = ftpatch(
        "verify",
        "--json",
        "--scheme",
        "two-slot",
        fixture_path("obj/clang-be-bti.o"),
        rewritten(tmp_path, "obj/clang-be-bti.o"),
    )
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    pristine, clean = doc["files"]
    assert not pristine["ok"] and clean["ok"]
    assert {f["check"] for f in pristine["findings"]} >= {"emulation", "cmodx-pair"}
    assert doc["exit_status"] == 1


def test_worst_status_wins_and_bad_input_is_2(tmp_path: Path) -> None:
    bogus = tmp_path / "not-elf.o"
    bogus.write_text("hello\n")
    run = ftpatch("verify", rewritten(tmp_path, "obj/gcc-bti.o"), bogus)
    assert run.returncode == 2
    assert "not-elf.o" in run.stderr
    assert ftpatch("verify", "--scheme", "three-slot", bogus).returncode == 2
    assert ftpatch("verify", "--sites", "some", bogus).returncode == 2


def test_sites_limits_the_emulation(tmp_path: Path) -> None:
    run = ftpatch("verify", "--sites", "2", rewritten(tmp_path, "obj/gcc-bti.o"))
    assert run.returncode == 0
    assert "2 emulated, 12 interleavings" in run.stdout


def test_trampoline_on_a_relocatable_object_is_said_unchecked(tmp_path: Path) -> None:
    """Issue 15, point 4: --trampoline on a .o was ignored without a word."""
    obj = rewritten(tmp_path, "obj/gcc-bti.o")
    for spec in ("0x400000", "ftrace_caller"):
        r = ftpatch("verify", "--trampoline", spec, obj)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"--trampoline {spec}: a relocatable object has no addresses" in r.stdout
        assert "BL reach (+-128 MiB) was not checked" in r.stdout
    r = ftpatch("verify", obj)
    assert "--trampoline" not in r.stdout


def test_vacuous_emulation_is_a_finding() -> None:
    """Issue 15, point 1: single-slot on a pristine 4,2 object patches a prefix
    NOP no caller runs; the emulation from the entry never fetches it, which
    proves nothing and must say so (it read as '0 of 3 interleavings failing')."""
    r = ftpatch("verify", "--json", fixture_path("obj/gcc-prefix42.o"))
    assert r.returncode == 1
    doc = json.loads(r.stdout)["files"][0]
    vacuous = [f for f in doc["findings"] if "proves nothing" in f["message"]]
    assert len(vacuous) == 8 and all(f["check"] == "emulation" for f in vacuous), vacuous
    assert all(f["message"].startswith("enable, disable, retarget:") for f in vacuous)
    # A plain object's record is on its entry, which every path fetches: no such finding.
    plain = ftpatch("verify", "--json", fixture_path("obj/gcc-plain-O2.o"))
    assert "proves nothing" not in plain.stdout


def test_relocatable_object_says_the_branch_is_decided_at_load(tmp_path: Path) -> None:
    # A module (.ko) has no ftrace_caller and no addresses: verify checks
    # everything else and says, in text and --json, what it could not.
    obj = rewritten(tmp_path, "obj/gcc-plain-O2.o")
    run = ftpatch("verify", obj)
    assert run.returncode == 0, run.stderr
    assert "relocatable object: no addresses" in run.stdout + run.stderr
    assert "module's ftrace PLT" in run.stdout + run.stderr
    report = json.loads(ftpatch("verify", "--json", obj).stdout)
    notes = [n for f in report["files"] for n in f["findings"] if n["check"] == "coverage"]
    assert any("decided when it is linked or loaded" in n["message"] for n in notes), notes
