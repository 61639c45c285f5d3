"""Records -> Sites: what each record's function entry is, for scan, --json and verify.

Each record is mapped to its code section and offset (elf/records.py for
objects, elf/image.py for linked images) and judged by
``classify.classify_file``, as the rewrite's planner judges it too; this
module only turns the verdicts into ``Site`` objects for the commands that
show them.
"""

from __future__ import annotations

from types import TracebackType

from ftpatch.classify import Code, Verdict, classify_file, code_of
from ftpatch.elf.reader import ET_REL, ElfFile, Section, open_elf
from ftpatch.elf.records import RawRecord, object_records
from ftpatch.model import Location, Problem, Record, RecordKind, RecordsMode, Site, State

# What every command says of a zero record in a linked image (State.SKIPPED).
ZERO_RECORD = "zero record, skipped as the kernel's ftrace_process_locs() does"


def zero_records_note(count: int) -> str:
    """One line for a file's zero records, said alike by rewrite and verify."""
    return f"{count} zero record{'s' if count != 1 else ''} left alone, as the kernel's " + (
        "ftrace_process_locs() skips them"
    )


class ScanResult:
    """The sites of one file, and the open file they came from.

    (A plain class: ``dataclasses`` stays off the rewrite's start-up, which
    imports this module for its messages.)"""

    __slots__ = ("elf", "path", "prefix", "sites")

    def __init__(
        self, path: str, elf: ElfFile, sites: tuple[Site, ...], prefix: int | None = None
    ) -> None:
        self.path = path
        self.elf = elf
        self.sites = sites
        # NOP words before each function symbol, as classify.PrefixVote
        # decided them (2 under CALL_OPS); None: nothing says.
        self.prefix = prefix

    @property
    def linked(self) -> bool:
        """A linked image (ET_EXEC, ET_DYN): addresses are real."""
        return bool(self.elf.e_type != ET_REL)

    @property
    def kind(self) -> str:
        return {1: "relocatable", 2: "executable", 3: "shared"}.get(self.elf.e_type, "other")

    def read(self, file_offset: int, size: int) -> bytes:
        self.elf.check_range(file_offset, size, "read")
        return bytes(self.elf.data[file_offset : file_offset + size])

    def symbol_address(self, name: str) -> int | None:
        return self.elf.symbol_values(name).get(name)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for site in self.sites:
            out[site.state.value] += 1
        return out

    def close(self) -> None:
        self.elf.close()

    def __enter__(self) -> ScanResult:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def scan_file(path: str, records_mode: RecordsMode = "auto") -> ScanResult:
    elf = open_elf(path)
    try:
        sites, prefix = scan_sites(elf, records_mode)
        return ScanResult(path, elf, sites, prefix)
    except BaseException:
        elf.close()
        raise


def scan_elf(elf: ElfFile, records_mode: RecordsMode = "auto") -> tuple[Site, ...]:
    return scan_sites(elf, records_mode)[0]


def raw_records(elf: ElfFile, records_mode: RecordsMode) -> tuple[list[RawRecord], RecordKind]:
    """The file's records, mapped to code: RELA addends in an object, the
    records table of a linked image."""
    if elf.e_type == ET_REL:
        return object_records(elf), RecordKind.RELA_ADDEND
    from ftpatch.elf.image import image_records  # linked images only

    raw, kind, _area = image_records(elf, records_mode)
    return raw, kind


def record_codes(elf: ElfFile, raw: list[RawRecord]) -> list[Code | None]:
    """The classifier's view of the code section each record points into
    (None where the record is not mapped to code: its problem, or a zero
    record), one ``Code`` per section."""
    codes: dict[int, Code] = {}
    out: list[Code | None] = []
    for r in raw:
        sec = r.target
        if r.problem is not None or sec is None:
            out.append(None)
            continue
        code = codes.get(sec.index)
        if code is None:
            code = codes[sec.index] = code_of(elf, sec)
        out.append(code)
    return out


def scan_sites(
    elf: ElfFile, records_mode: RecordsMode = "auto"
) -> tuple[tuple[Site, ...], int | None]:
    """Every record's Site, and the file's prefix (classify.PrefixVote)."""
    raw, kind = raw_records(elf, records_mode)
    codes = record_codes(elf, raw)
    judged = classify_file(codes, [r.target_offset for r in raw])
    linked = elf.e_type != ET_REL
    sites = tuple(
        _site(elf, r, kind, code, v, linked)
        for r, code, v in zip(raw, codes, judged.verdicts, strict=True)
    )
    return sites, judged.prefix


def _site(
    elf: ElfFile,
    raw: RawRecord,
    kind: RecordKind,
    code: Code | None,
    v: Verdict | None,
    linked: bool,
) -> Site:
    sec = raw.target
    target_name = sec.name if sec is not None else "?"
    address = raw.target_offset + sec.sh_addr if (sec is not None and linked) else None
    record = Record(
        raw.section.name,
        raw.section.index,
        raw.index,
        kind,
        raw.value_file_offset,
        raw.value,
        target_name,
        raw.target_offset,
        address,
        raw.mirror_file_offset,
        sec.index if sec is not None else None,
    )
    if code is None or v is None or sec is None:
        where = Location(elf.path, raw.section.name, raw.index * 8)
        if raw.zero:
            return Site(record, where, None, None, State.SKIPPED, ZERO_RECORD)
        return Site(record, where, None, None, State.INVALID, raw.problem, problem=Problem.OTHER)
    return site_of(elf.path, sec, code, record, v, linked)


def site_of(path: str, sec: Section, code: Code, record: Record, v: Verdict, linked: bool) -> Site:
    """The Site a verdict describes (for scan, --json, --dry-run, verify, messages)."""
    name = code.function(v.owner)
    if name is not None:
        location = Location(path, sec.name, v.where, name, v.where - code.starts[v.owner])
    else:
        location = Location(path, sec.name, v.where)
    mov, slot, base = v.mov, v.slot, sec.sh_offset
    return Site(
        record,
        location,
        name,
        v.layout,
        v.state,
        v.reason,
        mov,
        slot,
        None if mov is None else base + mov,
        None if slot is None else base + slot,
        (sec.sh_addr + slot) if linked and slot is not None else None,
        v.entry,
        v.problem,
        v.literal,
    )
