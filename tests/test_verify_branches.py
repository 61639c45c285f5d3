"""Branches into a site past its entry, resolved by the assembler or the linker (issue 15, point 2).

No relocation rewrites such a branch, so the relocation check never saw it:
a ``bl target+4`` to a static function in the same section is resolved by
GNU as (no .rela.text entry), and every branch is resolved in a linked image.
Built with the real compiler and linker; the inline asm stands in for code no
compiler writes on its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import ftpatch, require

pytestmark = pytest.mark.toolchain

SOURCE = """\
static int __attribute__((noinline)) target(int x) { return x * 3 + 1; }
int caller(int x) {
    int r;
    /* A call that skips target's entry: into its BL slot, past the MOV. */
    asm volatile("mov w0, %w1\\n\\tbl target+4\\n\\tmov %w0, w0"
                 : "=r"(r) : "r"(x) : "x0", "x9", "x30", "memory");
    return r + target(x); /* and an ordinary call, to the entry */
}
"""


def build(tmp: Path) -> tuple[Path, Path]:
    require("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld")
    (tmp / "br.c").write_text(SOURCE)
    obj = tmp / "br.o"
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-O2", "-fpatchable-function-entry=2", "-c", "-o", obj,
         tmp / "br.c"],
        check=True,
    )
    relocs = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-r", obj], capture_output=True, text=True, check=True
    ).stdout
    assert ".rela.text" not in relocs, "the assembler was meant to resolve both BLs itself"
    image = tmp / "br.elf"
    subprocess.run(["aarch64-linux-gnu-ld", "-e", "caller", "-o", image, obj], check=True)
    return obj, image


def test_branch_into_the_slot_fails_verify(tmp_path: Path) -> None:
    obj, image = build(tmp_path)
    for path in (obj, image):
        assert ftpatch("rewrite", path).returncode == 0
        r = ftpatch("verify", "--json", "--trampoline", "0x400000", path)
        assert r.returncode == 1, r.stdout + r.stderr
        findings = [
            f for f in json.loads(r.stdout)["files"][0]["findings"] if f["severity"] == "error"
        ]
        # Exactly one: the bl into target's slot; the ordinary call to its
        # entry, and caller's own entry, are fine.
        assert [(f["check"], f["symbol"], f["symbol_offset"]) for f in findings] == [
            ("branch-into-site", "target", 4)
        ], findings
        assert "branches to the BL slot of target" in findings[0]["message"]
