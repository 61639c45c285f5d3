"""scan, rewrite --check and verify judge every file alike.

One classifier (ftpatch/classify.py) decides what a site is, but scan (Sites
from records mapped one by one) and the rewrite's planner (records mapped in
columns, plan.py) reach it by different roads.  For the fixtures (pristine
and rewritten), the regression corpus and fuzzed mutants of the fixtures,
each input goes through scan, rewrite --check (as a build runs it) and
verify, and:
- a file one command refuses as malformed, every command refuses, with the
  same message;
- rewrite --check refuses the file exactly when scan finds an invalid site,
  naming that site, and otherwise counts scan's pristine and rewritten sites.
(verify reads scan's Sites, so their states cannot differ: what each site's
geometry is, is checked against an independent reader in test_geometry.py.)
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, GOOD_OBJECTS, OBJECTS, fixture_path

from ftpatch.errors import FtpatchError
from ftpatch.model import State
from ftpatch.rewrite import rewrite_file
from ftpatch.scan import scan_file
from ftpatch.verify import verify_file

REGRESSIONS = sorted((FIXTURES.parent / "tests" / "regressions").glob("*.elf"))
MUTANTS = 60  # fuzzed inputs, derandomized


def judged_alike(path: Path) -> str:
    """Run the three commands on ``path``; assert they agree; say how it went."""
    p = str(path)
    try:
        with scan_file(p) as result:
            states = [s.state for s in result.sites]
            first_invalid = next((s for s in result.sites if s.state is State.INVALID), None)
    except FtpatchError as exc:
        message = str(exc)
        for name, run in (
            ("rewrite --check", lambda: rewrite_file(p, check=True)),
            ("verify", lambda: verify_file(p, sites=0)),
        ):
            with pytest.raises(FtpatchError) as caught:
                run()
            assert str(caught.value) == message, f"{name} refuses it otherwise than scan"
        return "refused"

    try:
        r = rewrite_file(p, check=True)
    except FtpatchError as exc:
        assert first_invalid is not None, f"rewrite refuses a file scan finds valid: {exc}"
        assert str(exc) == f"{first_invalid.location}: {first_invalid.reason}"
        return "invalid"
    assert first_invalid is None, "rewrite accepts a file with an invalid site"
    assert (r.pristine, r.rewritten) == (
        states.count(State.PRISTINE),
        states.count(State.REWRITTEN),
    )
    return "ok"


@pytest.mark.parametrize("name", OBJECTS)
def test_fixture(name: str) -> None:
    judged_alike(fixture_path(name))


@pytest.mark.parametrize("name", GOOD_OBJECTS)
def test_rewritten_fixture(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    shutil.copyfile(fixture_path(name), out)
    out.chmod(0o644)
    rewrite_file(str(out))
    judged_alike(out)


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regression_corpus(path: Path) -> None:
    judged_alike(path)


def test_fuzzed_mutants(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(FIXTURES.parent / "fuzz"))
    import ftfuzz

    rng = random.Random(14)
    seeds = ftfuzz.fixture_seeds()
    seen: dict[str, int] = {}
    for n in range(MUTANTS):
        seed = rng.choice(seeds)
        ops = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(rng.randint(1, 3))]
        path = tmp_path / f"mutant{n}.o"
        path.write_bytes(ftfuzz.mutate(seed, ops))
        outcome = judged_alike(path)
        seen[outcome] = seen.get(outcome, 0) + 1
    # The mutants must exercise more than one outcome, or this compares nothing.
    assert len(seen) >= 2, seen
