"""Structure-aware mutation of real ELF objects and the oracle every input must pass.

Shared by the quick hypothesis test (``tests/test_fuzz.py``), the long random
campaign (``fuzz/campaign.py``) and the libFuzzer target (``fuzz/atheris_target.py``).

Seeds are the committed real-compiler fixtures (and, when a toolchain is at
hand, images linked from them).  A mutation is a short list of operations,
each a tuple of plain integers so that every driver can produce them:

    (FIELD, field, value)   set one ELF field (header, section or program
                            header, symbol, RELA, dynamic, RELR or record
                            entry, or a code word at a site) to an
                            "interesting" value: 0, 2^32-1, 2^64-8, the file
                            size, another field's value, ...
    (FLIP, position, bit)   flip one bit
    (BYTE, position, value) set one byte
    (TRUNCATE, length)      cut the file
    (APPEND, length)        grow the file with bytes from itself
    (COPY, src, dst, len)   copy a range over another (tables over tables)

The oracle (``check``) runs scan, rewrite (in place, on a private copy) and,
when present, verify, in process, and raises ``Bug`` when any of the promises
of README "Robustness" is broken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from ftpatch import arm64
from ftpatch.elf.reader import (
    EHDR_SIZE,
    PHDR_SIZE,
    RELA_SIZE,
    SHDR_SIZE,
    SHT_DYNAMIC,
    SHT_DYNSYM,
    SHT_RELA,
    SHT_RELR,
    SHT_SYMTAB,
    SYM_SIZE,
    ElfFile,
)
from ftpatch.elf.records import RECORDS_SECTION
from ftpatch.errors import FtpatchError, WriteError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "obj"
REGRESSIONS = ROOT / "tests" / "regressions"

FIELD, FLIP, BYTE, TRUNCATE, APPEND, COPY = range(6)
Op = tuple[int, ...]

# Seconds one input may take through scan + rewrite + rescan (+ verify).
# The seeds take a few milliseconds; a loop driven by a hostile count takes
# forever, so the bound is generous and still catches it.
TIME_LIMIT = 10.0


class Bug(Exception):
    """An input broke a robustness promise."""


class _Timeout(BaseException):
    pass


@dataclass(frozen=True)
class Field:
    file_offset: int
    size: int  # 1, 2, 4 or 8
    name: str
    code: bool = False  # an instruction word (always little-endian)


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: tuple[Field, ...]
    big_endian: bool


# -- seeds and their field maps ------------------------------------------------

_EHDR = (
    (4, 1, "EI_CLASS"),
    (5, 1, "EI_DATA"),
    (6, 1, "EI_VERSION"),
    (16, 2, "e_type"),
    (18, 2, "e_machine"),
    (24, 8, "e_entry"),
    (32, 8, "e_phoff"),
    (40, 8, "e_shoff"),
    (52, 2, "e_ehsize"),
    (54, 2, "e_phentsize"),
    (56, 2, "e_phnum"),
    (58, 2, "e_shentsize"),
    (60, 2, "e_shnum"),
    (62, 2, "e_shstrndx"),
)
_SHDR = (
    (0, 4, "sh_name"),
    (4, 4, "sh_type"),
    (8, 8, "sh_flags"),
    (16, 8, "sh_addr"),
    (24, 8, "sh_offset"),
    (32, 8, "sh_size"),
    (40, 4, "sh_link"),
    (44, 4, "sh_info"),
    (56, 8, "sh_entsize"),
)
_PHDR = (
    (0, 4, "p_type"),
    (4, 4, "p_flags"),
    (8, 8, "p_offset"),
    (16, 8, "p_vaddr"),
    (32, 8, "p_filesz"),
    (40, 8, "p_memsz"),
)
_SYM = ((0, 4, "st_name"), (4, 1, "st_info"), (6, 2, "st_shndx"), (8, 8, "st_value"))
_DYN = ((0, 8, "d_tag"), (8, 8, "d_val"))
# Most entries of a big table are alike: a sample of each keeps the map small.
_PER_TABLE = 48


def _entries(base: int, size: int, entsize: int) -> range:
    count = size // entsize if entsize else 0
    step = max(1, count // _PER_TABLE)
    return range(base, base + count * entsize, entsize * step)


def field_map(data: bytes) -> tuple[tuple[Field, ...], bool]:
    """The fields worth mutating in a well-formed seed, found with ftpatch's reader."""
    elf = ElfFile("seed", data)
    be = elf.big_endian
    out = [Field(o, s, n) for o, s, n in _EHDR]
    for sec in elf.sections:
        base = elf.e_shoff + sec.index * SHDR_SIZE
        out += [Field(base + o, s, f"[{sec.index}].{n}") for o, s, n in _SHDR]
    for i in range(len(elf.segments)):
        base = elf.e_phoff + i * PHDR_SIZE
        out += [Field(base + o, s, f"phdr[{i}].{n}") for o, s, n in _PHDR]
    for sec in elf.sections:
        tag = f"{sec.name}"
        if sec.sh_type in (SHT_SYMTAB, SHT_DYNSYM):
            for at in _entries(sec.sh_offset, sec.sh_size, SYM_SIZE):
                out += [Field(at + o, s, f"{tag}@{at:#x}.{n}") for o, s, n in _SYM]
        elif sec.sh_type == SHT_RELA:
            for at in _entries(sec.sh_offset, sec.sh_size, RELA_SIZE):
                sym_at, type_at = (at + 8, at + 12) if be else (at + 12, at + 8)
                out += [
                    Field(at, 8, f"{tag}@{at:#x}.r_offset"),
                    Field(sym_at, 4, f"{tag}@{at:#x}.r_sym"),
                    Field(type_at, 4, f"{tag}@{at:#x}.r_type"),
                    Field(at + 16, 8, f"{tag}@{at:#x}.r_addend"),
                ]
        elif sec.sh_type == SHT_DYNAMIC:
            for at in _entries(sec.sh_offset, sec.sh_size, 16):
                out += [Field(at + o, s, f"{tag}@{at:#x}.{n}") for o, s, n in _DYN]
        elif sec.sh_type == SHT_RELR or sec.name.startswith(RECORDS_SECTION):
            for at in _entries(sec.sh_offset, sec.sh_size, 8):
                out.append(Field(at, 8, f"{tag}@{at:#x}"))
    # Code words around every site: where scan looks.
    from ftpatch.scan import scan_elf

    with contextlib.suppress(FtpatchError):
        for site in scan_elf(elf)[:_PER_TABLE]:
            if site.mov_file_offset is None:
                continue
            for delta in (-12, -8, -4, 0, 4, 8):
                at = site.mov_file_offset + delta
                if EHDR_SIZE <= at <= len(data) - 4:
                    out.append(Field(at, 4, f"code@{at:#x}", code=True))
    return tuple(out), be


def load_seed(name: str, data: bytes) -> Seed:
    fields, be = field_map(data)
    return Seed(name, data, fields, be)


def fixture_seeds() -> list[Seed]:
    paths = sorted(FIXTURES.glob("*.o")) + sorted(FIXTURES.glob("e2e/*/*.o"))
    return [load_seed(str(p.relative_to(FIXTURES)), p.read_bytes()) for p in paths]


_MCOUNT_LD = (
    "SECTIONS { .rodata.mcount : ALIGN(8) { __start_mcount_loc = .;"
    " KEEP(*(__patchable_function_entries)) __stop_mcount_loc = .; } }"
    " INSERT AFTER .rodata;\n"
)


def linked_seeds(workdir: Path) -> list[Seed]:
    """Small images linked from the e2e objects, one per way of storing records.

    Needs GNU ld and lld; returns what could be built.  No libc: the
    unresolved calls do not matter to ftpatch, and the images stay small.
    """
    import shutil
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    objs = [str(FIXTURES / "e2e" / "gcc-plain" / n) for n in ("arith.o", "recur.o", "table.o")]
    bti = [str(FIXTURES / "e2e" / "gcc-bti" / n) for n in ("arith.o", "recur.o", "table.o")]
    script = workdir / "mcount.ld"
    script.write_text(_MCOUNT_LD)
    common = ["-e", "0", "--unresolved-symbols=ignore-all", "-z", "max-page-size=4096"]
    bfd, lld = "aarch64-linux-gnu-ld", "ld.lld"
    recipes = {
        "ld-r.o": [bfd, "-r", *objs],
        "bfd-static": [bfd, "-static", *common, *objs],
        "bfd-static-bti": [bfd, "-static", *common, *bti],
        "bfd-pie": [bfd, "-pie", "--no-dynamic-linker", *common, *objs],
        "bfd-mcount-loc": [
            bfd,
            "-static",
            "-T",
            str(script),
            "--no-warn-rwx-segments",
            *common,
            *objs,
        ],
        "lld-pie-rela": [lld, "-pie", "--no-dynamic-linker", *common, *objs],
        "lld-pie-relr": [
            lld,
            "-pie",
            "--no-dynamic-linker",
            "--pack-dyn-relocs=relr",
            *common,
            *objs,
        ],
    }
    seeds = []
    for name, cmd in recipes.items():
        if shutil.which(cmd[0]) is None:
            continue
        out = workdir / name
        r = subprocess.run([*cmd, "-o", str(out)], capture_output=True, check=False)
        if r.returncode == 0:
            seeds.append(load_seed(f"linked/{name}", out.read_bytes()))
    return seeds


# -- mutation ------------------------------------------------------------------

_WORDS = (
    arm64.NOP,
    arm64.MOV_X9_X30,
    arm64.BTI_C,
    arm64.BTI_J,
    arm64.BTI_JC,
    arm64.PACIASP,
    arm64.BL_OPCODE,
    arm64.B_OPCODE,
    0,
    0xFFFFFFFF,
)


def interesting(value_index: int, current: int, size: int, file_size: int, other: int) -> int:
    """The ``value_index``-th interesting value for a field of ``size`` bytes."""
    bits = 8 * size
    choices = (
        0,
        1,
        2,
        4,
        8,
        current + 1,
        current - 1,
        current + 4,
        current - 4,
        current + 8,
        current + 24,
        current + 64,
        current ^ (1 << (bits - 1)),
        0x7F,
        0x80,
        0xFF,
        0xFFFF,
        0xFF00,
        0xFFF1,
        0xFFF2,
        0x7FFFFFFF,
        0x80000000,
        0xFFFFFFFF,
        0x100000000,
        0x100000001,
        0x7FFFFFFFFFFFFFFF,
        0x8000000000000000,
        0xFFFFFFFFFFFFFFFF,
        0xFFFFFFFFFFFFFFF8,
        0xFFFFFFFFFFFFFFE8,
        (1 << 64) // 24 + 1,  # count * 24 wraps past 2^64
        (1 << 64) // 64 + 1,
        file_size,
        file_size - 1,
        file_size - 4,
        file_size - 8,
        file_size - 24,
        file_size - 64,
        file_size // 2,
        other,
        other + 4,
        other - 8,
    )
    return choices[value_index % len(choices)] & ((1 << bits) - 1)


def _put(buf: bytearray, f: Field, value: int, big_endian: bool) -> None:
    if f.file_offset + f.size > len(buf):
        return
    order: Literal["big", "little"] = "big" if big_endian and not f.code else "little"
    buf[f.file_offset : f.file_offset + f.size] = value.to_bytes(f.size, order)


def _get(buf: bytes | bytearray, f: Field, big_endian: bool) -> int:
    if f.file_offset + f.size > len(buf):
        return 0
    order: Literal["big", "little"] = "big" if big_endian and not f.code else "little"
    return int.from_bytes(buf[f.file_offset : f.file_offset + f.size], order)


def mutate(seed: Seed, ops: Sequence[Op]) -> bytes:
    """Apply ``ops`` to the seed.  Every integer is reduced modulo what it indexes."""
    buf = bytearray(seed.data)
    for op in ops:
        kind = op[0] % 6
        a = op[1] if len(op) > 1 else 0
        b = op[2] if len(op) > 2 else 0
        c = op[3] if len(op) > 3 else 0
        if kind == FIELD and seed.fields:
            f = seed.fields[a % len(seed.fields)]
            if f.code:
                value = _WORDS[b % len(_WORDS)] if b % 4 else (b >> 2) & 0xFFFFFFFF
            else:
                other = _get(buf, seed.fields[c % len(seed.fields)], seed.big_endian)
                value = interesting(b, _get(buf, f, seed.big_endian), f.size, len(buf), other)
            _put(buf, f, value, seed.big_endian)
        elif kind == FLIP and buf:
            buf[a % len(buf)] ^= 1 << (b % 8)
        elif kind == BYTE and buf:
            buf[a % len(buf)] = b & 0xFF
        elif kind == TRUNCATE:
            del buf[a % (len(buf) + 1) :]
        elif kind == APPEND and buf:
            n = a % 4096
            start = b % len(buf)
            buf += (buf[start:] * (n // max(1, len(buf) - start) + 1))[:n]
        elif kind == COPY and buf:
            src, dst, n = a % len(buf), b % len(buf), c % 512
            chunk = buf[src : src + min(n, len(buf) - dst)]
            buf[dst : dst + len(chunk)] = chunk
    return bytes(buf)


# -- the oracle ----------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Outcome:
    scan: str  # "ok" or the error class
    rewrite: str  # "written", "unchanged" or the error class
    verify: str | None
    seconds: float
    peak_bytes: int | None


def _verify_available() -> bool:
    try:
        from ftpatch.cli import app

        return any(
            (c.name or getattr(c.callback, "__name__", "")) == "verify"
            for c in app.registered_commands
        )
    except Exception:  # pragma: no cover - cli being edited
        return False


VERIFY = _verify_available()


def _one_line(exc: FtpatchError, what: str) -> None:
    text = str(exc)
    if "\n" in text or not text.strip():
        raise Bug(f"{what}: error message is not one line: {text!r}")


def _listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def check(
    data: bytes,
    workdir: Path,
    *,
    verify: bool = VERIFY,
    measure_memory: bool = False,
    time_limit_s: float = TIME_LIMIT,
) -> Outcome:
    """Run scan, rewrite, rescan (and verify) on ``data``; raise Bug on a broken promise."""
    from ftpatch.report import scan_dict, scan_lines
    from ftpatch.rewrite import rewrite_file
    from ftpatch.scan import scan_file

    workdir.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(workdir):
        os.unlink(workdir / name)
    path = workdir / "input.o"
    path.write_bytes(data)
    path.chmod(0o644)
    started = time.perf_counter()
    peak: int | None = None
    if measure_memory:
        tracemalloc.start()
    try:
        with time_limit(time_limit_s):
            scan_state = "ok"
            try:
                with scan_file(str(path)) as result:
                    scan_lines(result)
                    scan_dict(result)
            except FtpatchError as exc:
                _one_line(exc, "scan")
                scan_state = type(exc).__name__
            # The plan, site by site (what --dry-run shows): the rewrite below
            # must write exactly these edits.
            planned: list[tuple[int, bytes]] | None = None
            planned_error: str | None = None
            try:
                dry = rewrite_file(str(path), dry_run=True, detail=True)
                assert dry.plan is not None
                planned = [(e.file_offset, e.new) for e in dry.plan.edits]
            except FtpatchError as exc:
                planned_error = str(exc)
            try:
                rw = rewrite_file(str(path))
            except FtpatchError as exc:
                _one_line(exc, "rewrite")
                rewrite_state = type(exc).__name__
                if path.read_bytes() != data:
                    raise Bug(f"rewrite failed ({exc}) and changed its input") from None
                if planned is not None and not isinstance(exc, WriteError):
                    raise Bug(f"the plan succeeded but the rewrite failed: {exc}") from None
            else:
                after = path.read_bytes()
                rewrite_state = "written" if rw.written else "unchanged"
                if planned is None:
                    raise Bug(f"the rewrite succeeded but its plan failed: {planned_error}")
                _check_result(data, after, rw.written, planned)
                if scan_state != "ok":
                    raise Bug(f"scan failed ({scan_state}) but rewrite succeeded")
                again = rewrite_file(str(path))
                if again.written or again.changes:
                    raise Bug("a second rewrite of the output changes it again")
                if path.read_bytes() != after:
                    raise Bug("a second rewrite touched the output")
            if _listing(workdir) != ["input.o"]:
                raise Bug(f"files left behind: {_listing(workdir)}")
            verify_state = None
            if verify:
                verify_state = _verify(path)
    except _Timeout:
        raise Bug(f"took longer than {time_limit_s} s") from None
    except Bug:
        raise
    except Exception as exc:
        raise Bug(f"{type(exc).__name__}: {exc}") from exc
    finally:
        if measure_memory:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return Outcome(scan_state, rewrite_state, verify_state, time.perf_counter() - started, peak)


def _check_result(
    before: bytes, after: bytes, written: bool, edits: list[tuple[int, bytes]]
) -> None:
    if not written:
        if after != before:
            raise Bug("rewrite said it wrote nothing but the file changed")
        return
    if len(after) != len(before):
        raise Bug(f"output size {len(after)} differs from input size {len(before)}")
    expected = bytearray(before)
    for file_offset, new in edits:
        expected[file_offset : file_offset + len(new)] = new
    if bytes(expected) != after:
        first = next(i for i in range(len(after)) if after[i] != expected[i])
        raise Bug(f"output differs from input + plan at file offset {first:#x}")


def _verify(path: Path) -> str:
    import json

    from ftpatch.verify import verify_file
    from ftpatch.verify.render import finding_lines, report_dict, summary_line

    try:
        report = verify_file(str(path), sites=2)
    except FtpatchError as exc:
        _one_line(exc, "verify")
        return type(exc).__name__
    summary_line(report)
    finding_lines(report)
    json.dumps(report_dict(report))
    return "failed" if report.errors else "ok"


def check_cli(path: Path, *commands: str) -> None:
    """Through the real command layer (in process): exit 0/1/2, one line, no internal error."""
    from typer.testing import CliRunner

    from ftpatch.cli import app

    runner = CliRunner()
    allowed = {"scan": {0, 2}, "rewrite": {0, 2}, "verify": {0, 1, 2}}
    before = path.read_bytes()
    for command in commands:
        r = runner.invoke(app, [command, str(path)])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise Bug(f"{command}: {type(r.exception).__name__}: {r.exception}")
        if r.exit_code not in allowed[command]:
            raise Bug(f"{command}: exit {r.exit_code}: {r.output!r}")
        for bad in ("internal error", "Traceback"):
            if bad in r.output:
                raise Bug(f"{command}: {r.output!r}")
        if r.exit_code == 2:
            lines = r.stderr.strip().splitlines()
            if len(lines) != 1:
                raise Bug(f"{command}: exit 2 with {len(lines)} lines: {r.stderr!r}")
            if command == "rewrite" and path.read_bytes() != before:
                raise Bug("rewrite exited 2 and changed its input")


def describe(ops: Sequence[Op], seed: Seed) -> str:
    """Human-readable ops, for regression notes."""
    names = ("field", "flip", "byte", "truncate", "append", "copy")
    parts = []
    for op in ops:
        kind = op[0] % 6
        if kind == FIELD and seed.fields:
            f = seed.fields[op[1] % len(seed.fields)]
            parts.append(f"set {f.name} (file offset {f.file_offset:#x}) [choice {op[2]}]")
        else:
            parts.append(f"{names[kind]} {tuple(op[1:])}")
    return "; ".join(parts)
