"""Two holes verify's proof had, each shown on real bytes.

1. A CALL_OPS object whose symbol-less site (an overridden weak function,
   kept by ``ld -r`` without its symbol) was rewritten the way an
   entry-less classifier would: the MOV on the first prefix NOP, the record
   on the second.  The MOV and NOP words the kernel's old load check looked
   at hold, but the ops literal at ``ALIGN_DOWN(slot - 12, 8)`` is not that
   function's prefix: the first ``ftrace_rec_set_ops()`` would store a
   pointer over whatever lies there.  verify passed it.
2. A record on a ``mov x9, x30 ; nop`` that no caller reaches (dead code
   after a branch, alignment padding inside a function): with no symbol on
   the MOV, verify took the MOV for the entry and its emulation proved
   nothing about the function's real entry.  verify passed it too.
"""

from __future__ import annotations

import json
import struct
import subprocess
from hashlib import sha256
from pathlib import Path

import pytest
from conftest import ftpatch, require

from ftpatch.scan import scan_file

NOP, MOV = 0xD503201F, 0xAA1E03E9


def misrewrite_symbol_less(ko: Path) -> tuple[Path, int, int]:
    """``ko``'s first symbol-less site rewritten wrong (MOV on the first
    prefix NOP, record +4: the old classifier's bytes), the others pristine.
    Returns the bad copy, the record's pristine offset in .text and the
    file offset of .text."""
    with scan_file(str(ko)) as result:
        sites = list(result.sites)
        text_offset = result.elf.sections[sites[0].record.target_index].sh_offset  # type: ignore[index]
    anonymous = [s for s in sites if s.function is None or (s.location.symbol_offset or 0) > 0]
    assert anonymous, "the ld -r object has no symbol-less site"
    site = anonymous[0]
    r = site.record.target_offset  # the first prefix NOP (pristine)
    data = bytearray(ko.read_bytes())
    struct.pack_into("<I", data, text_offset + r, MOV)
    struct.pack_into("<q", data, site.record.value_file_offset, site.record.value + 4)
    bad = ko.with_name("bad.ko")
    bad.write_bytes(data)
    return bad, r, text_offset


@pytest.mark.toolchain
@pytest.mark.parametrize("bti", [False, True], ids=["plain", "bti"])
@pytest.mark.parametrize("compiler", ["clang", "gcc"])
def test_ops_literal_over_code_fails_verify(compiler: str, bti: bool, tmp_path: Path) -> None:
    from test_weak_prefix import build

    ko = build(tmp_path, compiler, bti)
    bad, r, text_offset = misrewrite_symbol_less(ko)
    digest = sha256(bad.read_bytes()).hexdigest()
    v = ftpatch("verify", "--json", bad)
    assert v.returncode == 1, v.stdout + v.stderr
    doc = json.loads(v.stdout)["files"][0]
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    literal = [f for f in errors if f["check"] in ("ops-literal", "prefix-misaligned")]
    assert len(literal) == 1, errors
    message = literal[0]["message"]
    # The literal's place, the words there, and what the kernel would overwrite:
    # the 8 bytes at ALIGN_DOWN(slot - 12, 8), read here from the file.
    at = (r + 4 - 12) // 8 * 8
    words = struct.unpack_from("<2I", bad.read_bytes(), text_offset + at)
    assert words != (NOP, NOP)
    assert all(f"({w:08x})" in message for w in words), message
    assert "ALIGN_DOWN(slot - 12, 8)" in message and "symbol-less entry" in message
    assert "code of user" in message, message
    # rewrite refuses the file as it stands (the site is invalid), writing nothing.
    w = ftpatch("rewrite", bad)
    assert w.returncode == 2 and w.stderr.count("\n") == 1, w.stderr
    assert sha256(bad.read_bytes()).hexdigest() == digest
    # The same object rewritten by ftpatch verifies clean.
    assert ftpatch("rewrite", ko).returncode == 0
    good = ftpatch("verify", ko)
    assert good.returncode == 0, good.stdout


# f's code holds a MOV;NOP pair no caller runs, and a record names its NOP.
DEAD_CODE = {
    "after-branch": "\tb 1f\n\tmov x9, x30\nsite:\tnop\n1:\tadd w0, w0, #1\n\tret\n",
    "padding": "\tadd w0, w0, #1\n\tret\n\t.p2align 4\n\tmov x9, x30\nsite:\tnop\n"
    "\tadd w0, w0, #2\n\tret\n",
}


def dead_code_object(tmp_path: Path, body: str) -> Path:
    require("aarch64-linux-gnu-as")
    src = tmp_path / "dead.s"
    src.write_text(
        "\t.text\n\t.p2align 3\n\t.globl f\n\t.type f, %function\n"
        f"f:\tmov x9, x30\n\tnop\n{body}\t.size f, .-f\n"
        '\t.section __patchable_function_entries,"aw",@progbits\n'
        "\t.p2align 3\n\t.xword f+4\n\t.xword site\n"
    )
    obj = tmp_path / "dead.o"
    subprocess.run(["aarch64-linux-gnu-as", "-o", obj, src], check=True)
    return obj


@pytest.mark.parametrize("where", list(DEAD_CODE))
def test_record_no_caller_reaches_fails(where: str, tmp_path: Path) -> None:
    obj = dead_code_object(tmp_path, DEAD_CODE[where])
    digest = sha256(obj.read_bytes()).hexdigest()
    v = ftpatch("verify", "--json", obj)
    assert v.returncode == 1, v.stdout + v.stderr
    doc = json.loads(v.stdout)["files"][0]
    results = doc["site_results"]
    assert [s["ok"] for s in results] == [True, False], results
    errors = {f["check"] for f in doc["findings"] if f["severity"] == "error"}
    assert "entry-path" in errors, errors
    text = ftpatch("verify", obj).stdout
    assert "callers enter f at .text+0x0" in text, text
    # scan says it is no entry; rewrite refuses, naming the place, and writes nothing.
    s = json.loads(ftpatch("scan", "--json", obj).stdout)["files"][0]["sites"]
    assert [x["state"] for x in s] == ["rewritten", "invalid"]
    w = ftpatch("rewrite", obj)
    assert w.returncode == 2 and "not at a function entry" in w.stderr, w.stderr
    assert sha256(obj.read_bytes()).hexdigest() == digest
