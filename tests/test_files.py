"""Files as a build engineer has them: links, modes, owners, umasks, -o onto links.

README "Files" states the behaviour; tests/test_cli.py covers the basic
cases (mode 0640 kept, a symlink's target rewritten, a hard link's other
name untouched, a read-only file refused).  These cover the rest, through
the real command in a subprocess.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, ftpatch, sha256
from test_crash_safety import temps
from typer.testing import CliRunner

from ftpatch.cli import app


def is_rewritten(path: Path) -> bool:
    return ftpatch("rewrite", "--check", path).returncode == 0


def test_relative_symlink_chain_rewrites_the_final_target(
    copy_fixture: Callable[[str], Path], tmp_path: Path
) -> None:
    real = copy_fixture("obj/gcc-bti.o")
    (tmp_path / "sub").mkdir()
    middle = tmp_path / "sub" / "middle.o"
    middle.symlink_to("../" + real.name)
    outer = tmp_path / "outer.o"
    outer.symlink_to("sub/middle.o")
    r = ftpatch("rewrite", outer)
    assert r.returncode == 0 and r.stdout.startswith(f"{outer}: rewrote"), r.stdout
    assert os.readlink(outer) == "sub/middle.o" and os.readlink(middle) == "../" + real.name
    assert is_rewritten(real)
    assert temps(tmp_path) == [] and temps(tmp_path / "sub") == []


def test_dangling_symlink_is_an_error_and_stays_a_link(tmp_path: Path) -> None:
    link = tmp_path / "gone.o"
    link.symlink_to("missing.o")
    r = ftpatch("rewrite", link)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert link.is_symlink() and not (tmp_path / "missing.o").exists()


def test_symlink_to_a_read_only_file_is_refused(
    copy_fixture: Callable[[str], Path], tmp_path: Path
) -> None:
    real = copy_fixture("obj/gcc-plain-O2.o")
    real.chmod(0o444)
    link = tmp_path / "link.o"
    link.symlink_to(real)
    digest = sha256(real)
    r = ftpatch("rewrite", link)
    assert r.returncode == 2 and "read-only" in r.stderr
    assert sha256(real) == digest and link.is_symlink()
    out = tmp_path / "out.o"
    assert ftpatch("rewrite", link, "-o", out).returncode == 0  # -o is the way out
    assert sha256(real) == digest and is_rewritten(out)


def test_output_onto_a_symlink_writes_its_target_and_keeps_the_link(
    copy_fixture: Callable[[str], Path], tmp_path: Path
) -> None:
    """As ld does with -o LINK, and as an in-place rewrite of a link does."""
    src = copy_fixture("obj/gcc-plain-O2.o")
    target = tmp_path / "build" / "final.o"
    target.parent.mkdir()
    target.write_bytes(b"old contents")
    target.chmod(0o640)
    link = tmp_path / "out.o"
    link.symlink_to(target)
    assert ftpatch("rewrite", src, "-o", link).returncode == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert is_rewritten(target) and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert temps(tmp_path) == [] and temps(target.parent) == []


@pytest.mark.parametrize("mode", [0o755, 0o600, 0o664, 0o2755])
def test_mode_is_kept_whatever_the_umask(copy_fixture: Callable[[str], Path], mode: int) -> None:
    p = copy_fixture("obj/clang-bti.o")
    p.chmod(mode)
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", "rewrite", str(p)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: os.umask(0o077),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert is_rewritten(p)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_root_rewriting_a_users_file_keeps_its_owner(
    copy_fixture: Callable[[str], Path],
) -> None:
    """``sudo make`` in a user's tree must not leave root-owned objects behind."""
    p = copy_fixture("obj/gcc-plain-O2.o")
    os.chown(p, 12345, 23456)
    assert ftpatch("rewrite", p).returncode == 0
    st = p.stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456)
    assert is_rewritten(p)


def test_both_names_of_a_hard_link_rewritten_independently(
    copy_fixture: Callable[[str], Path], tmp_path: Path
) -> None:
    a = copy_fixture("obj/gcc-funcsections.o")
    b = tmp_path / "b.o"
    os.link(a, b)
    assert ftpatch("rewrite", a).returncode == 0
    assert a.stat().st_ino != b.stat().st_ino  # a is a new file; b keeps the old one
    assert not is_rewritten(b)
    assert ftpatch("rewrite", b).returncode == 0
    assert sha256(a) == sha256(b)
    assert temps(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_file_the_user_cannot_write_is_refused(tmp_path: Path) -> None:
    """A root-owned 0644 file in a directory anyone may write: the rename
    would succeed, but the user could not write the file, so ftpatch must not
    replace it either (the mode bits alone say "writable")."""
    shared = Path(tempfile.mkdtemp(prefix="ftpatch-shared-", dir="/tmp"))
    try:
        shared.chmod(0o777)  # no sticky bit: anyone may rename over the file
        obj = shared / "root-owned.o"
        obj.write_bytes((ROOT / "fixtures" / "obj" / "gcc-plain-O2.o").read_bytes())
        obj.chmod(0o644)
        digest = sha256(obj)
        # Load every module the command needs (typer imports lazily, and the
        # interpreter's own files may not be readable by nobody).
        warm = shared / "warm-up.o"
        warm.write_bytes(obj.read_bytes())
        assert CliRunner().invoke(app, ["rewrite", str(warm)]).exit_code == 0
        warm.chmod(0o444)
        assert CliRunner().invoke(app, ["rewrite", str(warm)]).exit_code == 2
        warm.unlink()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become nobody (modules are already loaded)
            code = 99
            try:
                os.close(read_fd)
                os.setegid(65534)
                os.seteuid(65534)
                result = CliRunner().invoke(app, ["rewrite", str(obj)])
                text = f"{result.exit_code}\n{result.output}{result.exception or ''}"
                os.write(write_fd, text.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            report = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, report
        exit_code, output = report.split("\n", 1)
        assert exit_code == "2", report
        assert "not writable" in output and output.count("\n") == 1, report
        assert sha256(obj) == digest and obj.stat().st_uid == 0
        assert sorted(p.name for p in shared.iterdir()) == ["root-owned.o"]
    finally:
        for p in shared.iterdir():
            p.unlink()
        shared.rmdir()
