"""Counterexample traces name addresses after the function: ``func+0x4`` in
the function, ``func-0x8`` in its prefix words.  Which of the two a region is
was carried as a '-prefix' suffix on the name and stripped again, so a
function whose own name ends in '-prefix' had its entry shown as
'odd-0x10000'.  Built with the real compiler; the symbol is quoted in its
assembly (GCC writes 'odd-prefix' unquoted, which GNU as cannot parse)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import require

from ftpatch.verify import Scheme, verify_file
from ftpatch.verify.render import finding_lines

pytestmark = pytest.mark.toolchain

SOURCE = 'int odd(int x) __asm__("odd-prefix");\nint odd(int x) { return x + 1; }\n'


def test_function_named_like_a_prefix_keeps_its_name(tmp_path: Path) -> None:
    require("aarch64-linux-gnu-gcc")
    (tmp_path / "odd.c").write_text(SOURCE)
    asm = tmp_path / "odd.s"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-fpatchable-function-entry=2", "-S",
                    "-o", asm, tmp_path / "odd.c"], check=True)
    text = asm.read_text()
    text = text.replace("@progbits,odd-prefix", "@progbits,.text")  # the link-order symbol
    asm.write_text(text.replace("odd-prefix", '"odd-prefix"'))
    obj = tmp_path / "odd.o"
    subprocess.run(["aarch64-linux-gnu-gcc", "-c", "-o", obj, asm], check=True)
    report = verify_file(str(obj), scheme=Scheme.TWO_SLOT)  # pristine: a counterexample
    lines = "\n".join(finding_lines(report, limit=1000))
    assert "[1] odd-prefix+0x0: nop (d503201f) -> mov x9, x30" in lines, lines
    assert "bl odd-prefix+0x0" in lines
    assert "odd-0x" not in lines
