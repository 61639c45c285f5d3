"""Modules as distributions ship them: signed, compressed, by the thousand in a tree.

Every module here is built by the cross compiler, linked with ``ld -r``,
signed the way scripts/sign-file signs (conftest.sign_module) and compressed
with the tools Kbuild's modules_install runs.  The CLI is run as a Makefile
runs it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    MODULE_SIG_STRING,
    build_module,
    compress,
    ftpatch,
    sha256,
    sign_module,
    signing_key,
)

pytestmark = pytest.mark.toolchain


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One plain module, the same signed, and the key: built once per module."""
    d = tmp_path_factory.mktemp("modules")
    plain = build_module(d / "plain.ko")
    key, cert = signing_key(d)
    signed = d / "signed.ko"
    shutil.copyfile(plain, signed)
    sign_module(signed, key, cert)
    return {"plain": plain, "signed": signed, "key": key, "cert": cert}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    return dest


def _without(text: str, *names: str) -> str:
    for name in names:
        text = text.replace(name, "FILE")
    return text


# -- signed modules -----------------------------------------------------------


def test_signed_module_is_refused_and_left_byte_identical(
    built: dict[str, Path], tmp_path: Path
) -> None:
    m = _copy(built["signed"], tmp_path / "m.ko")
    digest = sha256(m)
    r = ftpatch("rewrite", m)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{m}: signed module")
    assert "would break the signature" in lines[0]
    assert "rewrite before signing" in lines[0] and "--strip-signature" in lines[0]
    assert sha256(m) == digest
    assert sorted(os.listdir(tmp_path)) == ["m.ko"]  # no temporary file left


def test_strip_signature_writes_the_rewritten_elf_part(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """The output is exactly what rewriting the unsigned module gives."""
    expected = tmp_path / "expected.ko"
    assert ftpatch("rewrite", "-o", expected, built["plain"]).returncode == 0
    out = tmp_path / "out.ko"
    r = ftpatch("rewrite", "--strip-signature", "-o", out, built["signed"])
    assert r.returncode == 0, r.stderr
    assert "dropped the module signature" in r.stdout
    assert out.read_bytes() == expected.read_bytes()
    # In place too; the result can be signed again and is then accepted as is.
    m = _copy(built["signed"], tmp_path / "m.ko")
    assert ftpatch("rewrite", "--strip-signature", m).returncode == 0
    assert m.read_bytes() == expected.read_bytes()
    sign_module(m, built["key"], built["cert"])
    digest = sha256(m)
    r = ftpatch("rewrite", m)
    assert r.returncode == 0
    assert "nothing to do (signed module: its signature still holds)" in r.stdout
    assert sha256(m) == digest


def test_strip_signature_of_a_module_already_rewritten_drops_only_the_signature(
    built: dict[str, Path], tmp_path: Path
) -> None:
    m = _copy(built["plain"], tmp_path / "m.ko")
    assert ftpatch("rewrite", m).returncode == 0
    rewritten = m.read_bytes()
    sign_module(m, built["key"], built["cert"])
    assert ftpatch("rewrite", "--check", "--strip-signature", m).returncode == 1
    r = ftpatch("rewrite", "--strip-signature", m)
    assert r.returncode == 0
    assert "already rewritten; dropped the module signature" in r.stdout
    assert m.read_bytes() == rewritten


def test_check_on_a_signed_module_reports_and_changes_nothing(
    built: dict[str, Path], tmp_path: Path
) -> None:
    m = _copy(built["signed"], tmp_path / "m.ko")
    digest = sha256(m)
    r = ftpatch("rewrite", "--check", m)
    assert r.returncode == 1
    assert "would rewrite 2 of 2 sites (signed module: rewrite refuses it" in r.stdout
    assert sha256(m) == digest


def test_scan_and_verify_read_a_signed_module_and_say_it_is_signed(
    built: dict[str, Path], tmp_path: Path
) -> None:
    plain = _copy(built["plain"], tmp_path / "plain.ko")
    signed = _copy(built["signed"], tmp_path / "signed.ko")
    p, s = ftpatch("scan", plain), ftpatch("scan", signed)
    assert p.returncode == s.returncode == 0
    head, *rows = s.stdout.splitlines()
    assert head.startswith(f"{signed}: signed (appended module signature): 2 records")
    assert rows == p.stdout.splitlines()[1:]
    doc = json.loads(ftpatch("scan", "--json", signed).stdout)["files"][0]
    plain_doc = json.loads(ftpatch("scan", "--json", plain).stdout)["files"][0]
    assert doc["signed"] is True and plain_doc["signed"] is False
    assert doc["sites"] == plain_doc["sites"]
    v = ftpatch("verify", signed)
    assert v.returncode == 1  # pristine: the single-slot contract needs the MOV
    assert "(relocatable, signed, single-slot)" in v.stdout
    report = json.loads(ftpatch("verify", "--json", signed).stdout)["files"][0]
    assert report["signed"] is True and report["compression"] is None


def test_a_forged_signature_length_is_one_line_and_exit_2(
    built: dict[str, Path], tmp_path: Path
) -> None:
    data = built["signed"].read_bytes()
    trailer = len(MODULE_SIG_STRING) + 12
    forged = bytearray(data)
    forged[-trailer + 8 : -trailer + 12] = struct.pack(">I", len(data))
    m = tmp_path / "forged.ko"
    m.write_bytes(bytes(forged))
    for command in ("scan", "verify", "rewrite"):
        r = ftpatch(command, m)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.splitlines() == [
            f"{m}: module signature: sig_len {len(data):#x} exceeds the "
            f"{len(data) - trailer:#x} bytes before struct module_signature "
            "(truncated or forged trailer)"
        ]
        assert m.read_bytes() == bytes(forged)
    # The magic alone, without the struct before it, is no signature either.
    m.write_bytes(MODULE_SIG_STRING)
    assert ftpatch("scan", m).returncode == 2


def test_an_unsigned_module_with_another_tail_is_not_taken_for_signed(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """Bytes after the ELF data that are not the kernel's magic (here the
    magic without its newline) leave the file an ordinary ELF file."""
    m = tmp_path / "tail.ko"
    m.write_bytes(built["plain"].read_bytes() + MODULE_SIG_STRING[:-1])
    r = ftpatch("scan", "--json", m)
    assert r.returncode == 0
    assert json.loads(r.stdout)["files"][0]["signed"] is False
    r = ftpatch("rewrite", m)
    assert r.returncode == 0 and "rewrote 2 of 2 sites" in r.stdout
    assert m.read_bytes().endswith(MODULE_SIG_STRING[:-1])


# -- compressed modules -------------------------------------------------------


@pytest.mark.parametrize("tool", ["xz", "gzip", "zstd"])
def test_compressed_module_reads_as_the_plain_one_and_rewrite_refuses_it(
    built: dict[str, Path], tmp_path: Path, tool: str
) -> None:
    plain = _copy(built["plain"], tmp_path / "m.ko")
    packed = compress(plain, tool)
    word = {"xz": "xz", "gzip": "gzip", "zstd": "zstd"}[tool]
    for command in ("scan", "verify"):
        a, b = ftpatch(command, plain), ftpatch(command, packed)
        assert a.returncode == b.returncode, b.stderr
        assert b.stderr == ""
        expected = _without(a.stdout, str(plain))
        got = _without(b.stdout, str(packed)).replace(f", {word}-compressed", "")
        got = got.replace(f"{word}-compressed: ", "")
        # (verify's timings differ from run to run)
        assert _untimed(got) == _untimed(expected)
    doc = json.loads(ftpatch("scan", "--json", packed).stdout)["files"][0]
    assert doc["compression"] == word and doc["signed"] is False
    digest = sha256(packed)
    r = ftpatch("rewrite", packed)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{packed}: {word}-compressed module: rewrite refuses compressed input (it would "
        "have to compress it again); rewrite the .ko before modules_install compresses it, "
        f"or decompress it, rewrite, and compress it again ({word})"
    ]
    assert sha256(packed) == digest
    assert sorted(os.listdir(tmp_path)) == sorted(["m.ko", packed.name])
    assert ftpatch("rewrite", "--check", packed).returncode == 2


def _untimed(text: str) -> str:
    import re

    return re.sub(r"\d+\.\d\ds", "T", text)


def test_a_compressed_signed_module_is_read_with_both_said(
    built: dict[str, Path], tmp_path: Path
) -> None:
    packed = compress(_copy(built["signed"], tmp_path / "m.ko"), "xz")
    r = ftpatch("scan", packed)
    assert r.returncode == 0
    assert r.stdout.startswith(
        f"{packed}: xz-compressed, signed (appended module signature): 2 records"
    )
    doc = json.loads(ftpatch("verify", "--json", packed).stdout)["files"][0]
    assert (doc["compression"], doc["signed"], doc["sites"]) == ("xz", True, 2)


def test_corrupt_and_exploding_compressed_data_are_one_line_errors(
    built: dict[str, Path], tmp_path: Path
) -> None:
    packed = compress(_copy(built["plain"], tmp_path / "m.ko"), "xz")
    cut = tmp_path / "cut.ko.xz"
    cut.write_bytes(packed.read_bytes()[:-40])
    r = ftpatch("scan", cut)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(f"{cut}: xz data: ")
    # 80 MiB of zeros: a 78 KiB file that would expand a thousand times.
    bomb = tmp_path / "bomb.ko.gz"
    with gzip.open(bomb, "wb") as f:
        for _ in range(80):
            f.write(bytes(1 << 20))
    r = ftpatch("verify", bomb)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1
    assert "gzip data expands past" in r.stderr and "refused" in r.stderr


# -- directories of modules -----------------------------------------------------


def _tree(built: dict[str, Path], root: Path) -> list[Path]:
    (root / "b" / "sub").mkdir(parents=True)
    (root / "a").mkdir()
    # In walk order: a directory's files (sorted), then its subdirectories (sorted).
    files = [
        _copy(built["plain"], root / "a" / "one.ko"),
        _copy(built["plain"], root / "b" / "two.ko"),
        _copy(built["plain"], root / "b" / "sub" / "three.o"),
    ]
    (root / "a" / "notes.txt").write_text("not a module\n")
    return files


def test_recursive_takes_ko_and_o_in_sorted_order_for_every_command(
    built: dict[str, Path], tmp_path: Path
) -> None:
    files = _tree(built, tmp_path / "tree")
    scan = ftpatch("scan", "-r", tmp_path / "tree")
    assert scan.returncode == 0
    heads = [line.split(":")[0] for line in scan.stdout.splitlines() if not line.startswith(" ")]
    assert heads == [str(f) for f in files]
    verify = ftpatch("verify", "-r", "--json", tmp_path / "tree")
    assert [d["path"] for d in json.loads(verify.stdout)["files"]] == [str(f) for f in files]
    rewrite = ftpatch("rewrite", "-r", tmp_path / "tree")
    assert rewrite.returncode == 0
    assert rewrite.stdout.splitlines() == [f"{f}: rewrote 2 of 2 sites" for f in files]
    verify = ftpatch("verify", "-r", tmp_path / "tree")
    assert verify.returncode == 0, verify.stdout


def test_recursive_rewrite_counts_compressed_modules_it_cannot_take(
    built: dict[str, Path], tmp_path: Path
) -> None:
    files = _tree(built, tmp_path / "tree")
    packed = compress(files[0], "xz")
    digest = sha256(packed)
    r = ftpatch("rewrite", "-r", tmp_path / "tree")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{tmp_path / 'tree'}: 1 compressed module (*.ko.xz, *.ko.gz, *.ko.zst) under it not "
        "rewritten: rewrite refuses compressed input; rewrite before modules_install "
        "compresses them, or decompress, rewrite and compress again"
    ]
    assert len(r.stdout.splitlines()) == 3  # the others are rewritten
    assert sha256(packed) == digest
    # scan and verify read it with the rest.
    doc = json.loads(ftpatch("scan", "--json", "-r", tmp_path / "tree").stdout)
    assert str(packed) in [d["path"] for d in doc["files"]]


def test_recursive_refuses_a_fifo_named_like_a_module(
    built: dict[str, Path], tmp_path: Path
) -> None:
    _tree(built, tmp_path / "tree")
    fifo = tmp_path / "tree" / "a" / "pipe.ko"
    os.mkfifo(fifo)
    for command in ("scan", "verify", "rewrite"):
        r = ftpatch(command, "-r", tmp_path / "tree")
        assert r.returncode == 2, command
        assert f"{fifo}: not a regular file (a FIFO)" in r.stderr.splitlines()


@pytest.mark.parametrize("command", ["scan", "verify", "rewrite"])
def test_a_directory_with_nothing_to_work_on_says_so(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "README").write_text("no modules here\n")
    r = ftpatch(command, "-r", tmp_path / "empty")
    assert r.returncode == 0
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"{tmp_path / 'empty'}: no *.o")
    assert r.stderr.rstrip().endswith("files under it, nothing to do")
    r = ftpatch(command, "-r", "--json", tmp_path / "empty")
    assert json.loads(r.stdout)["files"] == []


# -- many files in one verify ---------------------------------------------------


def test_verify_says_a_shared_note_once_and_lists_only_failing_files(
    built: dict[str, Path], tmp_path: Path
) -> None:
    good = []
    for i in range(4):
        good.append(_copy(built["plain"], tmp_path / f"good{i}.ko"))
    assert ftpatch("rewrite", *good).returncode == 0
    bad = _copy(built["plain"], tmp_path / "pristine.ko")
    good = [Path(g.name) for g in good]  # short names: the table's rows stay one line each
    bad = Path(bad.name)
    r = ftpatch("verify", "-j", "2", *good, bad, cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    notes = [line for line in lines if "note: [coverage] relocatable object" in line]
    assert notes == [notes[0]] and notes[0].startswith("note: ") and "(5 files)" in notes[0]
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 1 and str(bad) in rows[0] and "FAIL" in rows[0]
    assert lines[-1].startswith("verified 5 file(s): 10 sites")
    assert "1 file(s) failing" in lines[-1]
    verbose = ftpatch("verify", "-v", *good, bad, cwd=tmp_path)
    rows = [line for line in verbose.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 5
    assert sum("note: [coverage] relocatable object" in s for s in verbose.stdout.splitlines()) == 5
    # All ok: no table at all, the totals say it.
    ok = ftpatch("verify", *good, cwd=tmp_path)
    assert ok.returncode == 0
    assert not any(line.startswith("│") for line in ok.stdout.splitlines())
    assert "0 file(s) failing" in ok.stdout.splitlines()[-1]


def test_json_streamed_file_by_file_is_the_one_document(
    built: dict[str, Path], tmp_path: Path
) -> None:
    """Printed as each file finishes, it is still exactly json.dumps(indent=2)
    of the whole, error entries included, whatever -j."""
    a = _copy(built["plain"], tmp_path / "a.ko")
    missing = tmp_path / "missing.ko"
    for command in ("scan", "verify", "rewrite"):
        for jobs in ("1", "2"):
            r = ftpatch(command, "--json", "-j", jobs, a, missing, a)
            assert r.returncode == 2
            doc = json.loads(r.stdout)
            assert r.stdout == json.dumps(doc, indent=2) + "\n"
            assert [d["path"] for d in doc["files"]] == [str(a), str(missing), str(a)]
            assert "error" in doc["files"][1]


def test_the_zstd_decompressor_stays_off_the_rewrite_path(tmp_path: Path) -> None:
    """The rewrite's start-up does not load the zstd binding (lzma and zlib
    come with shutil, which typer imports, whatever ftpatch does)."""
    code = "import sys, ftpatch.cli, ftpatch.rewrite\nprint('backports.zstd' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert out.stdout.strip() == "False", out.stderr
