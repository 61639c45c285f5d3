"""A newcomer's first ten minutes (issue 13): the README's commands, the
install on Debian's own Python, the documented command line, the messages,
and files that are not regular files.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, fixture_path, rewritten, sha256
from typer.testing import CliRunner

from ftpatch.cli import app

runner = CliRunner()

# A hang fails the test instead of stalling the suite.
TIMEOUT = 30


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command, from ``cwd``, as a Makefile runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ftpatch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=TIMEOUT,
    )


def _newcomer_env() -> dict[str, str]:
    """The environment of a shell that never set ftpatch up by hand."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }


# -- 1. the README's first command ---------------------------------------------------


@pytest.mark.network
def test_readme_first_command_runs_the_demo_and_it_passes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "    bash scripts/demo.sh " in readme  # the command, exactly as written there
    proc = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows it
        text=True,
        env=_newcomer_env(),
        timeout=900,  # a first run installs the venv
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    assert out.rstrip().endswith("demo: OK")
    # Each part of the tool, shown and checked.
    assert "records in 1 section (8 pristine" in out  # scan before
    assert "would rewrite 8 of 8 sites" in out  # --check
    assert "rewrote 8 of 8 sites" in out  # rewrite
    assert "(0 pristine, 8 rewritten, 0 invalid" in out  # scan after
    assert "unchanged: " in out  # idempotence
    assert "gcc-plain-O2.o: ok: 8 sites" in out  # verify, a passing object
    assert "counterexample, enable (two-slot)" in out  # the counterexample
    assert "pristine/gcc-plain-O2.o: FAIL:" in out
    assert "bad-site.o: bad_func+0x0: expected nop" in out  # bad input refused
    assert "cmp: bad-site.o is byte-identical" in out
    assert "fifo.o: not a regular file (a FIFO)" in out


# -- 2. the install on Debian's own python3 (PEP 668) ------------------------------


def _copy_for_install(dest: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "ftpatch", dest / "ftpatch", ignore=skip)
    (dest / "scripts").mkdir()
    for name in ("install-deps.sh", "test.sh", "demo.sh"):
        shutil.copy(ROOT / "scripts" / name, dest / "scripts" / name)


@pytest.mark.network
def test_install_works_with_debians_externally_managed_python(tmp_path: Path) -> None:
    """Debian's /usr/bin/python3 refuses `pip install` outside a venv; the
    script makes .venv and installs there, and the README's activation works."""
    debian = Path("/usr/bin/python3")
    managed = (
        subprocess.run(
            [str(debian), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
        if debian.exists()
        else ""
    )
    if not managed or not (Path(managed) / "EXTERNALLY-MANAGED").exists():
        if os.environ.get("CI"):
            pytest.fail("CI runs on Debian 12: /usr/bin/python3 must be Debian's (PEP 668)")
        pytest.skip("no externally managed /usr/bin/python3 (PEP 668) here")
    _copy_for_install(tmp_path)
    env = {**_newcomer_env(), "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
    proc = subprocess.run(
        ["bash", "scripts/install-deps.sh", "--runtime"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "externally-managed-environment" not in proc.stderr
    venv_python = tmp_path / ".venv/bin/python"
    base = subprocess.run(
        [str(venv_python), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert base == "/usr", base  # made from Debian's python, not another one on PATH
    # As the README says: activate, then run ftpatch.
    shell = subprocess.run(
        ["bash", "-c", ". .venv/bin/activate && ftpatch --version && command -v ftpatch"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.startswith("ftpatch ")
    assert shell.stdout.splitlines()[1] == str(tmp_path / ".venv/bin/ftpatch")
    # A second run reuses the venv: no pip.
    again = subprocess.run(
        ["bash", "scripts/install-deps.sh", "--runtime"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )
    assert again.returncode == 0 and "pip install" not in again.stdout, again.stdout


# -- 3. the apt lock, and what --quick installs ---------------------------------------

FAKE_APT = """#!/bin/bash
echo "$*" >> "$FAKE_LOG"
if [[ " $* " == *" update "* ]]; then
    n=$(cat "$FAKE_DIR/updates" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$FAKE_DIR/updates"
    if (( n < 1 )); then
        echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2
        exit 100
    fi
fi
if [[ " $* " == *" install "* && " $* " != *"DPkg::Lock::Timeout"* ]]; then
    echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2
    exit 100
fi
exit 0
"""

# A venv whose python does nothing and says so: this test is about apt and
# about which python the scripts run, not about pip.
FAKE_PYTHON3 = """#!/bin/bash
if [[ "$1 $2" == "-m venv" ]]; then
    mkdir -p "$3/bin"
    printf '#!/bin/bash\\necho "venv-python $*" >> "$FAKE_LOG"\\nexit 0\\n' > "$3/bin/python"
    chmod +x "$3/bin/python"
    exit 0
fi
exit 1
"""


def _fake_tools(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name, text in (
        ("apt-get", FAKE_APT),
        ("dpkg-query", "#!/bin/bash\nexit 1\n"),  # nothing is installed
        ("python3", FAKE_PYTHON3),
        ("sudo", '#!/bin/bash\nexec "$@"\n'),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    env = {
        **_newcomer_env(),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "FAKE_DIR": str(tmp_path),
    }
    return log, env


def test_quick_suite_waits_for_the_apt_lock_and_installs_only_what_it_needs(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_for_install(repo)
    log, env = _fake_tools(tmp_path)
    proc = subprocess.run(
        ["bash", "scripts/test.sh", "--quick"],
        cwd=repo, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    apt = [c for c in calls if not c.startswith("venv-python")]
    # The lists lock was held once: the script waited and tried again.
    assert [c for c in apt if " update" in f" {c}"] and len(
        [c for c in apt if " update" in f" {c}"]
    ) == 2, apt
    assert "waiting for the apt lock" in proc.stdout
    assert all("DPkg::Lock::Timeout=600" in c for c in apt), apt
    installs = " ".join(c for c in apt if " install " in f" {c} ")
    for needed in ("gcc-aarch64-linux-gnu", "clang", "lld", "llvm", "qemu-user", "make"):
        assert needed in installs.split(), installs
    for slow_only in ("podman", "debootstrap", "linux-source-6.1", "qemu-system-arm"):
        assert slow_only not in installs.split(), installs
    # Lint, types and tests ran with the venv's python.
    ran = [c for c in calls if c.startswith("venv-python")]
    assert any("-m pytest" in c and "not kernel and not docker" in c for c in ran), ran
    assert any("-m ruff" in c for c in ran) and any("-m mypy" in c for c in ran), ran


def test_full_install_still_installs_the_slow_suites_tools(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_for_install(repo)
    log, env = _fake_tools(tmp_path)
    proc = subprocess.run(
        ["bash", "scripts/install-deps.sh"],
        cwd=repo, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = " ".join(c for c in log.read_text().splitlines() if " install " in f" {c} ")
    for tool in ("podman", "debootstrap", "linux-source-6.1", "qemu-system-arm"):
        assert tool in installs.split(), installs


def test_scripts_run_ftpatch_with_the_venv_python() -> None:
    e2e = (ROOT / "scripts/kernel-e2e.sh").read_text()
    assert ".venv/bin/python" in e2e
    # No test spawns a bare "python3": it may not be the one with ftpatch's deps.
    offenders = [
        f"{p.name}:{n}"
        for p in sorted((ROOT / "tests").glob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"""\[\s*["']python3["']""", line)
    ]
    assert not offenders, offenders


# -- 4. the README documents the command line --------------------------------------


def _section(readme: str, title: str) -> str:
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert m, title
    return m.group(1)


def test_readme_documents_every_command_and_option_help_shows() -> None:
    import typer.main

    readme = (ROOT / "README.md").read_text()
    cli_doc = _section(readme, "Command line")
    group = typer.main.get_command(app)
    assert "ftpatch --version" in cli_doc
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert f"ftpatch {name} " in cli_doc, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-") and opt not in ("-h", "--help"):
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", cli_doc), (name, opt)
    status = _section(readme, "Exit status")
    assert "verify" in status and "--check" in status
    layout = _section(readme, "Code layout")
    assert "verify/" in layout
    model_line = next(line for line in layout.splitlines() if "model.py" in line)
    assert "NamedTuple" in model_line and "frozen dataclasses" not in model_line


def test_two_slot_help_says_pristine_only_and_behaves_so(tmp_path: Path) -> None:
    text = _help("verify")
    assert "must find the counterexample" not in text
    assert "on a pristine input" in text and "reports ok" in text
    pristine = run("verify", "--scheme", "two-slot", fixture_path("obj/gcc-bti.o"), cwd=tmp_path)
    assert pristine.returncode == 1 and "counterexample" in pristine.stdout
    done = run("verify", "--scheme", "two-slot", rewritten(tmp_path, "obj/gcc-bti.o"), cwd=tmp_path)
    assert done.returncode == 0 and ": ok: " in done.stdout


# -- 6. messages ----------------------------------------------------------------------


def test_every_command_names_the_file_as_typed_json_too(tmp_path: Path) -> None:
    (tmp_path / "junk.o").write_bytes(b"not an object at all")
    (tmp_path / "link.o").symlink_to("junk.o")
    for name in ("junk.o", "link.o"):
        for command in (["scan"], ["verify"], ["rewrite"], ["rewrite", "--check"]):
            r = run(*command, name, cwd=tmp_path)
            assert r.returncode == 2, (command, r.stderr)
            assert r.stderr == f"{name}: not an ELF file\n", (command, r.stderr)
            assert str(tmp_path) not in r.stdout + r.stderr
        for command in (["scan", "--json"], ["verify", "--json"], ["rewrite", "--json"]):
            r = run(*command, name, cwd=tmp_path)
            assert f'"error": "{name}: not an ELF file"' in r.stdout, (command, r.stdout)
            assert str(tmp_path) not in r.stdout


def test_rewrite_errors_past_parsing_name_the_file_as_typed(tmp_path: Path) -> None:
    shutil.copyfile(fixture_path("obj/bad-site.o"), tmp_path / "bad.o")
    (tmp_path / "bad.o").chmod(0o644)
    (tmp_path / "link.o").symlink_to("bad.o")
    r = run("rewrite", "link.o", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("link.o: bad_func+0x0: expected nop"), r.stderr
    assert str(tmp_path) not in r.stderr


def test_a_directory_gets_the_same_message_in_every_command(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    shutil.copyfile(fixture_path("obj/gcc-bti.o"), tmp_path / "a.o")
    (tmp_path / "a.o").chmod(0o644)
    for command in ("scan", "verify", "rewrite"):
        r = run(command, "build", "a.o", cwd=tmp_path)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.startswith("build: is a directory"), (command, r.stderr)
        assert "Invalid argument" not in r.stderr
        # ... and, like any bad file, it stops no other.
        assert "a.o" in r.stdout, (command, r.stdout)
    hint = run("rewrite", "build", cwd=tmp_path).stderr
    assert hint == "build: is a directory (use -r to rewrite the objects under it)\n", hint


@pytest.mark.parametrize("command", ["scan", "verify"])
def test_ftpatch_debug_prints_one_traceback(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ftpatch.scan
    import ftpatch.verify

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ftpatch.scan, "scan_file", boom)
    monkeypatch.setattr(ftpatch.verify, "verify_file", boom)
    monkeypatch.setenv("FTPATCH_DEBUG", "1")
    obj = str(fixture_path("obj/gcc-bti.o"))
    for extra in ([], ["--json"]):
        r = runner.invoke(app, [command, *extra, obj])
        assert r.exit_code == 2
        text = r.output  # stdout and stderr, as a terminal shows them
        assert text.count("Traceback (most recent call last)") == 1, text
        assert text.count("internal error: RuntimeError: boom") == 1 + bool(extra), text


def test_rewrite_ftpatch_debug_prints_one_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import ftpatch.rewrite

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ftpatch.rewrite, "rewrite_file", boom)
    monkeypatch.setenv("FTPATCH_DEBUG", "1")
    r = runner.invoke(app, ["rewrite", "-j", "1", str(fixture_path("obj/gcc-bti.o"))])
    assert r.exit_code == 2
    text = r.output  # stdout and stderr, as a terminal shows them
    assert text.count("Traceback (most recent call last)") == 1, text


def _help(*args: str) -> str:
    """``--help`` as one line: the box drawing and the wrapping taken out."""
    r = runner.invoke(app, [*args, "--help"])
    assert r.exit_code == 0
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())


def test_usage_lines_and_option_help_read_well() -> None:
    for command in ("scan", "rewrite", "verify"):
        text = _help(command)
        assert f" {command} [OPTIONS] FILE... " in text, text
        assert "{" not in text, text
    text = _help("rewrite")
    assert "parallel ." not in text
    assert "Files processed in parallel (default: one per CPU this process may use)." in text
    for command in ("scan", "rewrite"):
        assert "--records <auto|section|mcount-loc>" in _help(command)
    r = runner.invoke(app, ["scan", "--records", "bogus", str(fixture_path("obj/gcc-bti.o"))])
    assert r.exit_code == 2
    assert "'auto', 'section', 'mcount-loc'" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())


def test_records_choices_still_reach_the_scanner() -> None:
    r = runner.invoke(app, ["scan", "--records", "mcount-loc", str(fixture_path("obj/gcc-bti.o"))])
    assert r.exit_code == 0 and "8 records" in r.output


# -- 7. FIFOs, sockets, devices -----------------------------------------------------


def _special_files(tmp_path: Path) -> dict[str, str]:
    """name -> kind, each in tmp_path."""
    os.mkfifo(tmp_path / "fifo.o")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.o"))
    sock.close()
    return {"fifo.o": "a FIFO", "sock.o": "a socket", "/dev/null": "a character device"}


@pytest.mark.parametrize(
    "command",
    [["scan"], ["verify"], ["rewrite"], ["rewrite", "--check"], ["rewrite", "--dry-run"],
     ["rewrite", "-o", "out.o"]],
)
def test_a_fifo_socket_or_device_is_refused_at_once(command: list[str], tmp_path: Path) -> None:
    for name, kind in _special_files(tmp_path).items():
        r = run(*command, name, cwd=tmp_path)  # a hang times out: the test fails
        assert r.returncode == 2, (command, name, r.stderr)
        assert r.stderr == f"{name}: not a regular file ({kind})\n", (command, r.stderr)
        assert not (tmp_path / "out.o").exists()
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo.o").st_mode)


def test_rewrite_r_refuses_a_fifo_in_the_tree_and_rewrites_the_rest(tmp_path: Path) -> None:
    tree = tmp_path / "build"
    (tree / "sub").mkdir(parents=True)
    os.mkfifo(tree / "sub" / "x.o")
    shutil.copyfile(fixture_path("obj/gcc-bti.o"), tree / "a.o")
    (tree / "a.o").chmod(0o644)
    before = sha256(tree / "a.o")
    for jobs in ("1", "2"):
        r = run("rewrite", "-r", "-j", jobs, "build", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr == "build/sub/x.o: not a regular file (a FIFO)\n", r.stderr
    assert sha256(tree / "a.o") != before  # the regular object was rewritten
    r = run("rewrite", "-r", "--json", "build", cwd=tmp_path)
    assert '"error": "build/sub/x.o: not a regular file (a FIFO)"' in r.stdout
