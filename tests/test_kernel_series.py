"""The kernel patch series in patches/<version>/ is what a maintainer can take.

Each series (made by ``scripts/make-series.sh`` with ``git format-patch
--cover-letter``) is checked without building a kernel:

* every patch passes ``scripts/checkpatch.pl --strict`` of its own kernel
  tree (Debian's ``/usr/src/linux-source-<version>.tar.xz``) with nothing
  reported but the missing Signed-off-by (the person who sends the series
  adds theirs);
* a patch that adds a file names it in MAINTAINERS (an F: line of FUNCTION
  HOOKS (FTRACE), whose reviewer is arm64 ftrace's), so checkpatch has no
  "does MAINTAINERS need updating?" and get_maintainer.pl finds it;
* ``git am`` applies the series, then its test-only patches, to a git tree
  of the pristine files it touches, taken from the same tarball;
* the mail form: a role identity under ``.invalid``, the fixed date, no
  Signed-off-by, kernel-style subjects of at most 75 characters, a cover
  letter that was written (not git's placeholders).

Only the few files these need are unpacked from the tarball (one pass over
it per version, 10-20 s of CPU).  Without the tarball the tests that need it
skip: ``scripts/install-deps.sh`` installs it, ``--quick`` and the container
image do not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("6.1", "6.12")
IDENTITY = "ftpatch maintainers <ftpatch@maintainers.invalid>"
# What checkpatch needs beside itself (it reads them from its own directory).
CHECKPATCH_FILES = (
    "scripts/checkpatch.pl",
    "scripts/spelling.txt",
    "scripts/const_structs.checkpatch",
)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "ftpatch test",
    "GIT_AUTHOR_EMAIL": "test@ftpatch.invalid",
    "GIT_COMMITTER_NAME": "ftpatch test",
    "GIT_COMMITTER_EMAIL": "test@ftpatch.invalid",
}


def series_dir(version: str) -> Path:
    return ROOT / "patches" / version


def cover_letter(version: str) -> Path:
    return series_dir(version) / "0000-cover-letter.patch"


def series(version: str) -> list[Path]:
    """The patches a user applies, in order (the cover letter apart)."""
    return sorted(p for p in series_dir(version).glob("0*.patch") if p != cover_letter(version))


def e2e_patches(version: str) -> list[Path]:
    """The test-only patches the kernel e2e applies on top."""
    return sorted((series_dir(version) / "test").glob("*.patch"))


ALL_PATCHES = [(v, p) for v in VERSIONS for p in series(v) + e2e_patches(v)]


def patch_id(param: object) -> str:
    return str(param.relative_to(ROOT / "patches")) if isinstance(param, Path) else str(param)


def touched(patches: list[Path]) -> tuple[set[str], set[str]]:
    """(files the patches change that exist before them, files they add)."""
    changed: set[str] = set()
    added: set[str] = set()
    for patch in patches:
        current = None
        for line in patch.read_text().splitlines():
            m = re.match(r"diff --git a/(\S+) b/\S+$", line)
            if m:
                current = m.group(1)
                changed.add(current)
            elif line.startswith("new file mode") and current:
                added.add(current)
    return changed - added, added


def tarball(version: str) -> Path:
    """Debian's kernel source, or skip: scripts/install-deps.sh installs it
    (not with --quick), so the full suite and CI run these tests; the
    container's suite (CI=1, no kernel source in the image) skips them."""
    path = Path(f"/usr/src/linux-source-{version}.tar.xz")
    if not path.is_file():
        pytest.skip(f"needs {path} (scripts/install-deps.sh installs linux-source-{version})")
    return path


@pytest.fixture(scope="module")
def kernel_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """version -> a directory holding checkpatch, MAINTAINERS and the pristine
    files the series and its test patches change, unpacked once."""
    done: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in done:
            tar = tarball(version)
            top = f"linux-source-{version}"
            out = tmp_path_factory.mktemp(f"linux-{version}")
            existing, _ = touched(series(version) + e2e_patches(version))
            wanted = dict.fromkeys((*CHECKPATCH_FILES, "MAINTAINERS", *sorted(existing)))
            members = [f"{top}/{f}" for f in wanted]
            subprocess.run(
                ["tar", "-xf", tar, "-C", out, "--strip-components=1", *members],
                check=True,
                capture_output=True,
            )
            done[version] = out
        return done[version]

    return get


@pytest.mark.parametrize(("version", "patch"), ALL_PATCHES, ids=patch_id)
def test_checkpatch_strict(version: str, patch: Path, kernel_files: Callable[[str], Path]) -> None:
    tree = kernel_files(version)
    proc = subprocess.run(
        [
            "perl",
            tree / "scripts/checkpatch.pl",
            "--strict",
            "--no-tree",
            "--terse",
            "--show-types",
            patch,
        ],
        capture_output=True,
        text=True,
        cwd=tree,  # not this repository: checkpatch looks for a .git where it runs
    )
    output = proc.stdout + proc.stderr
    assert re.search(
        r"^total: \d+ errors, \d+ warnings, \d+ checks, \d+ lines checked$", output, re.M
    ), output
    unexpected = [
        m.group(0)
        for m in re.finditer(r"^\S+:\d+: (ERROR|WARNING|CHECK):(\w+):.*$", output, re.M)
        if m.group(2) != "MISSING_SIGN_OFF"
    ]
    assert not unexpected, "\n".join(unexpected)
    assert "MISSING_SIGN_OFF" in output, (
        "a series patch has no Signed-off-by: checkpatch must say so"
    )


@pytest.mark.parametrize(("version", "patch"), ALL_PATCHES, ids=patch_id)
def test_a_new_file_comes_with_its_maintainers_line(version: str, patch: Path) -> None:
    _, added = touched([patch])
    text = patch.read_text()
    section = text.split("diff --git a/MAINTAINERS b/MAINTAINERS\n", 1)
    lines = section[1].split("\ndiff --git ", 1)[0].splitlines() if len(section) == 2 else []
    named = {line[len("+F:\t") :] for line in lines if line.startswith("+F:\t")}
    assert named == set(added), (patch.name, sorted(added), sorted(named))
    if added:
        # In FUNCTION HOOKS (FTRACE): the hunk's context is that section's.
        assert any("linux-trace" in line for line in lines), lines


@pytest.mark.parametrize("version", VERSIONS)
def test_git_am_applies_series_then_e2e_patches(
    version: str, kernel_files: Callable[[str], Path], tmp_path: Path
) -> None:
    if not shutil.which("git"):
        pytest.skip("needs git")
    existing, _ = touched(series(version) + e2e_patches(version))
    tree = tmp_path / "tree"
    for f in existing:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(kernel_files(version) / f, tree / f)
    env = {**os.environ, **GIT_ENV}

    def git(*args: str | Path) -> str:
        proc = subprocess.run(
            ["git", "-C", tree, *map(str, args)], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, f"git {' '.join(map(str, args))}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    git("init", "-q")
    git("add", "-A")
    git(
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        f"pristine files of linux-source-{version}",
    )
    git("am", "-q", *series(version))
    git("am", "-q", *e2e_patches(version))
    applied = series(version) + e2e_patches(version)
    subjects = git("log", "--format=%s", "--reverse", f"HEAD~{len(applied)}..")
    assert subjects.splitlines() == [subject(p) for p in applied]
    authors = set(git("log", "--format=%an <%ae>", "HEAD~1..").splitlines())
    assert authors == {IDENTITY}


def headers(patch: Path) -> dict[str, str]:
    """The mail headers of a format-patch file (folded lines joined)."""
    out: dict[str, str] = {}
    last = None
    for line in patch.read_text().splitlines()[1:]:
        if not line:
            break
        if line[0] in " \t" and last:
            out[last] += " " + line.strip()
            continue
        name, _, value = line.partition(": ")
        out[name] = value
        last = name
    return out


def subject(patch: Path) -> str:
    return re.sub(r"^\[PATCH[^]]*\]\s*", "", headers(patch)["Subject"])


@pytest.mark.parametrize("version", VERSIONS)
def test_series_mail_form(version: str) -> None:
    patches = series(version)
    assert len(patches) >= 2 and e2e_patches(version), "series and test patches present"
    n = len(patches)
    for i, patch in enumerate([cover_letter(version), *patches]):
        text = patch.read_text()
        h = headers(patch)
        assert text.startswith("From 0000000000000000000000000000000000000000 "), patch
        assert h["From"] == IDENTITY, patch
        assert h["Date"] == "Tue, 1 Dec 2026 00:00:00 +0000", patch
        assert h["Subject"].startswith(f"[PATCH {i}/{n}] "), patch
        assert not re.search(r"^Signed-off-by:", text, re.M), (
            f"{patch}: the sender adds the Signed-off-by"
        )
    for number, patch in [*enumerate(patches, 1), *enumerate(e2e_patches(version), 1)]:
        assert patch.name.startswith(f"{number:04d}-"), patch
        assert "diff --git " in patch.read_text(), f"{patch}: not made by git"
        s = subject(patch)
        assert len(s) <= 75, f"{patch}: subject of {len(s)} characters: {s}"
        assert re.match(r"[a-z0-9_.-]+(: [a-z0-9_.-]+)*: \S", s), (
            f"{patch}: not a kernel-style subject: {s}"
        )
    cover = " ".join(cover_letter(version).read_text().split())
    assert "***" not in cover, "the cover letter still has git's placeholders"
    for needed in (
        "Signed-off-by",
        "Concurrent modification and execution",
        "Testing",
        "make-series.sh",
    ):
        assert needed in cover, f"cover letter lacks {needed!r}"
