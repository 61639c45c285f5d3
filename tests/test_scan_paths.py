"""The fast path of site classification agrees with the general one.

``scan._Classifier`` judges the three common layouts in a few word reads and
hands everything else to the general path; on every fixture, pristine and
rewritten, both must give the same sites.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import GOOD_OBJECTS, OBJECTS, fixture_path, ftpatch

from ftpatch.elf.reader import open_elf
from ftpatch.scan import scan_elf


def both(path: Path) -> None:
    elf = open_elf(str(path))
    fast = scan_elf(elf, fast=True)
    slow = scan_elf(elf, fast=False)
    assert fast == slow


@pytest.mark.parametrize("name", OBJECTS)
def test_pristine(name: str) -> None:
    both(fixture_path(name))


@pytest.mark.parametrize("name", GOOD_OBJECTS)
def test_rewritten(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    assert ftpatch("rewrite", fixture_path(name), "-o", out).returncode == 0
    both(out)
