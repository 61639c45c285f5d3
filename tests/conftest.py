"""Shared helpers: the committed real-compiler fixtures and the CLI runners."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())

OBJECTS = sorted(str(Path(e["path"])) for e in MANIFEST["objects"] if "/e2e/" not in e["path"])
# Objects whose every record is a well-formed pristine site.
BAD = {"obj/bad-site.o", "obj/bad-site-aw.o"}
GOOD_OBJECTS = [o for o in OBJECTS if o not in BAD]


def fixture_path(name: str) -> Path:
    return FIXTURES / name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


needs_toolchain = pytest.mark.toolchain


def require(*tools: str) -> None:
    """Fail (not skip) under CI when a tool the suite installs is missing."""
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have {', '.join(missing)} (scripts/install-deps.sh installs it)")
        pytest.skip(f"needs {', '.join(missing)} (run scripts/install-deps.sh)")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def ftpatch(*args: str | Path, cwd: Path | None = None) -> Run:
    """Run the real command in a subprocess, as a Makefile would."""
    proc = subprocess.run(
        [sys.executable, "-m", "ftpatch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def anonymous_site_object(tmp_path: Path) -> Path:
    """An object whose only record has no function symbol and sits on four
    NOPs: nothing in the file says how many are a prefix.  Hand-written (no
    compiler leaves such a file), assembled by the real assembler."""
    require("aarch64-linux-gnu-as")
    src = tmp_path / "anon.s"
    src.write_text(
        "\t.text\n\t.p2align 3\n\tnop\n\tnop\n\tnop\n\tnop\n"
        "\tsub w0, w0, #3\n\tret\n"
        '\t.section __patchable_function_entries,"aw",@progbits\n'
        "\t.p2align 3\n\t.xword .text\n"
    )
    obj = tmp_path / "anon.o"
    subprocess.run(["aarch64-linux-gnu-as", "-o", obj, src], check=True)
    return obj


def rewritten(tmp_path: Path, name: str) -> Path:
    """A copy of fixture ``name`` in ``tmp_path``, rewritten by ftpatch in-process."""
    from ftpatch.rewrite import rewrite_file

    dest = tmp_path / Path(name).name
    shutil.copyfile(fixture_path(name), dest)
    dest.chmod(0o644)
    rewrite_file(str(dest))
    return dest


@pytest.fixture
def copy_fixture(tmp_path: Path):  # type: ignore[no-untyped-def]
    def copy(name: str) -> Path:
        dest = tmp_path / Path(name).name
        shutil.copyfile(fixture_path(name), dest)
        dest.chmod(0o644)
        return dest

    return copy


# -- modules as distributions install them: signed, compressed ---------------

MODULE_SIG_STRING = b"~Module signature appended~\n"

MODULE_SOURCE = """\
int twice(int x) { return 2 * x; }
static int helper(int x) { return x ^ 5; }
int add3(int x) { return helper(x) + 3; }
"""


def build_module(dest: Path, flags: tuple[str, ...] = ("-fpatchable-function-entry=2",)) -> Path:
    """A module as its final link makes it: aarch64-linux-gnu-gcc -O2, then
    ``ld -r`` (Kbuild's modpost/modfinal link is an ``ld -r`` too)."""
    require("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld")
    src = dest.with_suffix(".c")
    src.write_text(MODULE_SOURCE)
    obj = dest.with_suffix(".tmp.o")
    subprocess.run(["aarch64-linux-gnu-gcc", "-c", "-O2", *flags, "-o", obj, src], check=True)
    subprocess.run(["aarch64-linux-gnu-ld", "-r", "-o", dest, obj], check=True)
    obj.unlink()
    src.unlink()
    return dest


def signing_key(directory: Path) -> tuple[Path, Path]:
    """A throwaway RSA key and its self-signed certificate (openssl req)."""
    require("openssl")
    key, cert = directory / "signing_key.pem", directory / "signing_key.x509.pem"
    if not key.exists():
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=ftpatch throwaway test key",
                "-keyout",
                key,
                "-out",
                cert,
            ],
            check=True,
            capture_output=True,
        )
    return key, cert


def sign_module(module: Path, key: Path, cert: Path) -> None:
    """Sign ``module`` in place exactly as the kernel's scripts/sign-file does
    (``sign-file sha256 KEY CERT MODULE``): a detached CMS SignedData over
    the file, DER, no certificates, no signed attributes, no S/MIME
    capabilities (CMS_NOCERTS | CMS_BINARY | CMS_NOSMIMECAP | CMS_NOATTR),
    then ``struct module_signature`` (id_type PKEY_ID_PKCS7, sig_len
    big-endian) and the magic.  Checked byte for byte against sign-file
    built from Linux 6.12's scripts/sign-file.c (RSA PKCS#1 v1.5 signing is
    deterministic)."""
    sig = module.with_suffix(".p7s")
    subprocess.run(
        [
            "openssl",
            "cms",
            "-sign",
            "-binary",
            "-noattr",
            "-nocerts",
            "-nosmimecap",
            "-md",
            "sha256",
            "-outform",
            "DER",
            "-in",
            module,
            "-signer",
            cert,
            "-inkey",
            key,
            "-out",
            sig,
        ],
        check=True,
    )
    pkcs7 = sig.read_bytes()
    sig.unlink()
    info = struct.pack(">BBBBB3sI", 0, 0, 2, 0, 0, b"\0\0\0", len(pkcs7))
    with module.open("ab") as f:
        f.write(pkcs7 + info + MODULE_SIG_STRING)


def compress(path: Path, tool: str) -> Path:
    """``path`` compressed as Kbuild's modules_install does (Makefile.modinst):
    ``xz --check=crc32 --lzma2=dict=1MiB``, ``gzip -n``, ``zstd``; the input kept."""
    require(tool)
    argv = {
        "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-k", "-f"],
        "gzip": ["gzip", "-n", "-k", "-f"],
        "zstd": ["zstd", "-q", "-k", "-f"],
    }[tool]
    subprocess.run([*argv, path], check=True)
    return path.with_name(path.name + {"xz": ".xz", "gzip": ".gz", "zstd": ".zst"}[tool])
