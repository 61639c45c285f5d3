"""What verify loads: the engine's contract trampoline without keystone (5 MiB
of peak RSS).  The RSS figures themselves are measured by
benchmarks/bench_verify.py, not asserted here (issue 15: benchmarks, not
timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import rewritten

from ftpatch.verify.emulate import CONTRACT_WORDS, assemble, trampoline_source

ROOT = Path(__file__).resolve().parent.parent


def test_contract_words_are_the_assembled_contract() -> None:
    assert assemble(trampoline_source()) == CONTRACT_WORDS


def test_verify_loads_no_assembler(tmp_path: Path) -> None:
    path = rewritten(tmp_path, "obj/gcc-bti.o")
    code = ("import sys\n"
            "from ftpatch.verify import verify_file\n"
            f"assert verify_file({str(path)!r}).ok\n"
            "print('keystone' in sys.modules, 'unicorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True"]  # it did emulate, without keystone
