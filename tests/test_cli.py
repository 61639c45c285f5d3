"""The command line, driven in-process through typer's CliRunner."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import sha256
from typer.testing import CliRunner

from ftpatch.cli import app

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for command in ("scan", "rewrite"):
        assert command in r.output
    r = runner.invoke(app, ["rewrite", "--help"])
    assert r.exit_code == 0
    assert "--check" in r.output and "--dry-run" in r.output


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("ftpatch ")


def test_check_then_rewrite_then_check(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-bti.o")
    digest = sha256(p)
    r = runner.invoke(app, ["rewrite", "--check", str(p)])
    assert r.exit_code == 1
    assert "would rewrite 8 of 8 sites" in r.output
    assert sha256(p) == digest
    r = runner.invoke(app, ["rewrite", str(p)])
    assert r.exit_code == 0 and "rewrote 8 of 8 sites" in r.output
    assert sha256(p) != digest
    r = runner.invoke(app, ["rewrite", "--check", str(p)])
    assert r.exit_code == 0


def test_dry_run_prints_the_plan_and_writes_nothing(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    digest = sha256(p)
    r = runner.invoke(app, ["rewrite", "--dry-run", str(p)])
    assert r.exit_code == 0
    assert sha256(p) == digest
    movs = [line for line in r.output.splitlines() if ": mov x9, x30: 1f2003d5 -> e9031eaa" in line]
    records = [line for line in r.output.splitlines() if ": record +0x4 -> " in line]
    assert len(movs) == len(records) == 8


def test_scan_json_is_complete(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-prefix42-bti.o")
    r = runner.invoke(app, ["scan", "--json", str(p)])
    assert r.exit_code == 0
    doc = json.loads(r.output)["files"][0]
    assert doc["counts"] == {"pristine": 8, "rewritten": 0, "invalid": 0, "skipped": 0}
    for site in doc["sites"]:
        assert site["prefix_nops"] == 2
        assert site["location"].endswith("-0x8")
        assert site["slot_offset"] - site["target_offset"] == (16 if site["bti"] else 12)


def test_output_file_leaves_input_alone(copy_fixture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/clang-plain-O2.o")
    digest = sha256(p)
    out = tmp_path / "sub" / "out.o"
    out.parent.mkdir()
    r = runner.invoke(app, ["rewrite", str(p), "-o", str(out)])
    assert r.exit_code == 0
    assert sha256(p) == digest and out.exists()


def test_output_with_several_inputs_is_refused(copy_fixture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = copy_fixture("obj/gcc-plain-O2.o")
    b = copy_fixture("obj/gcc-bti.o")
    r = runner.invoke(app, ["rewrite", str(a), str(b), "-o", str(tmp_path / "x.o")])
    assert r.exit_code == 2


def test_mode_is_kept(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    p.chmod(0o640)
    assert runner.invoke(app, ["rewrite", str(p)]).exit_code == 0
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_symlink_target_is_rewritten_and_link_kept(copy_fixture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    real = copy_fixture("obj/gcc-plain-O2.o")
    link = tmp_path / "link.o"
    link.symlink_to(real)
    assert runner.invoke(app, ["rewrite", str(link)]).exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert runner.invoke(app, ["rewrite", "--check", str(real)]).exit_code == 0


def test_hard_link_keeps_the_other_name_pristine(copy_fixture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A ccache-style hard link must not see the rewrite (the file is replaced)."""
    p = copy_fixture("obj/gcc-plain-O2.o")
    other = tmp_path / "cache-copy.o"
    os.link(p, other)
    digest = sha256(other)
    assert runner.invoke(app, ["rewrite", str(p)]).exit_code == 0
    assert sha256(other) == digest
    assert runner.invoke(app, ["rewrite", "--check", str(p)]).exit_code == 0


def test_read_only_file_is_refused_in_place(copy_fixture) -> None:  # type: ignore[no-untyped-def]
    p = copy_fixture("obj/gcc-plain-O2.o")
    p.chmod(0o444)
    digest = sha256(p)
    r = runner.invoke(app, ["rewrite", str(p)])
    assert r.exit_code == 2
    assert "read-only" in r.output
    assert sha256(p) == digest


def test_path_with_colon_space_keeps_places_whole(tmp_path: Path) -> None:
    """Location.place is built from fields: a path holding ': ' once cut the
    place out of the path's text ("b.o: add3+0x0" for add3+0x0)."""
    import shutil

    from conftest import fixture_path

    p = tmp_path / "a: b.o"
    shutil.copyfile(fixture_path("obj/gcc-plain-O2.o"), p)
    p.chmod(0o644)
    r = runner.invoke(app, ["scan", "--json", str(p)])
    assert r.exit_code == 0
    places = {s["location"] for s in json.loads(r.output)["files"][0]["sites"]}
    assert "add3+0x0" in places and not any(": " in x for x in places)
    r = runner.invoke(app, ["rewrite", "--dry-run", "--json", str(p)])
    assert r.exit_code == 0, r.output
    edits = json.loads(r.output)["files"][0]["edits"]
    assert {e["location"] for e in edits} >= {"add3+0x0"}
