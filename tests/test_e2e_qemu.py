"""End to end: rewritten objects link with the real linker and run under qemu.

Then, on the linked executable, readelf says every record points at a BL slot
and llvm-objdump says the word before it is ``mov x9, x30``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, MANIFEST, ftpatch, require

VARIANTS = MANIFEST["e2e"]["variants"]
EXPECTED = (FIXTURES / MANIFEST["e2e"]["expected_stdout"]).read_text()


def link_and_run(objs: list[Path], exe: Path) -> str:
    subprocess.run(
        ["aarch64-linux-gnu-gcc", "-static", "-o", str(exe), *map(str, objs)], check=True
    )
    run = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def linked_records(exe: Path) -> list[int]:
    """The 64-bit addresses in the linked __patchable_function_entries (readelf -x)."""
    out = subprocess.run(
        ["aarch64-linux-gnu-readelf", "-x", "__patchable_function_entries", str(exe)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = b""
    for line in out.splitlines():
        m = re.match(r"\s+0x[0-9a-f]+ ((?:[0-9a-f]{8} ?){1,4})", line)
        if m:
            data += bytes.fromhex(m.group(1).replace(" ", ""))
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def disassembly(exe: Path) -> dict[int, str]:
    out = subprocess.run(
        ["llvm-objdump", "-d", "--no-show-raw-insn", str(exe)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", line)
        if m:
            words[int(m.group(1), 16)] = " ".join(m.group(2).split())
    return words


@pytest.mark.toolchain
@pytest.mark.parametrize("variant", VARIANTS)
def test_rewritten_program_runs_and_records_point_at_bl_slots(variant: str, tmp_path: Path) -> None:
    require("aarch64-linux-gnu-gcc", "qemu-aarch64", "llvm-objdump", "aarch64-linux-gnu-readelf")
    src_dir = FIXTURES / "obj" / "e2e" / variant
    objs = []
    for obj in sorted(src_dir.glob("*.o")):
        dest = tmp_path / obj.name
        shutil.copyfile(obj, dest)
        objs.append(dest)
    pristine_out = link_and_run(objs, tmp_path / "pristine")
    assert pristine_out == EXPECTED
    pristine_records = linked_records(tmp_path / "pristine")

    r = ftpatch("rewrite", *objs)
    assert r.returncode == 0, r.stderr
    exe = tmp_path / "rewritten"
    assert link_and_run(objs, exe) == EXPECTED

    records = linked_records(exe)
    assert records, "no records in the linked program"
    assert len(records) == len(pristine_records)
    dis = disassembly(exe)
    for address in records:
        assert dis[address] == "nop", hex(address)
        assert dis[address - 4] == "mov x9, x30", hex(address)
    # Every record moved forward by exactly the distance to its BL slot.
    for before, after in zip(sorted(pristine_records), sorted(records), strict=True):
        assert after - before in (4, 12, 16)
