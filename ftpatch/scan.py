"""Records -> Sites: what each record's function entry is, for scan, --json and verify.

Each record is mapped to its code section and offset (elf/records.py for
objects, elf/image.py for linked images) and judged by ``classify``, the one
classifier the rewrite's columnar path asks too; this module only turns its
verdicts into ``Site`` objects for the commands that show them.
"""

from __future__ import annotations

from types import TracebackType

from ftpatch.classify import Code, Verdict, classify, code_of
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

    __slots__ = ("elf", "path", "sites")

    def __init__(self, path: str, elf: ElfFile, sites: tuple[Site, ...]) -> None:
        self.path = path
        self.elf = elf
        self.sites = sites

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
        return ScanResult(path, elf, scan_elf(elf, records_mode))
    except BaseException:
        elf.close()
        raise


def scan_elf(elf: ElfFile, records_mode: RecordsMode = "auto") -> tuple[Site, ...]:
    if elf.e_type == ET_REL:
        raw = object_records(elf)
        kind = RecordKind.RELA_ADDEND
    else:
        from ftpatch.elf.image import image_records  # linked images only

        raw, kind, _area = image_records(elf, records_mode)
    classifier = _Classifier(elf)
    sites = [classifier.site(r, kind) for r in raw]
    if any(s.problem is Problem.PREFIX_UNKNOWN for s in sites):
        # Records with no function symbol whose words fit more than one
        # prefix length (classify.py, rule 2): the prefix every pristine
        # site with a function symbol has decides, if they agree.
        prefixes = {
            s.layout.prefix_nops
            for s in sites
            if s.state is State.PRISTINE and s.entry_offset is not None and s.layout is not None
        }
        if len(prefixes) == 1 and None not in prefixes:
            classifier.prefix = prefixes.pop()
            sites = [
                classifier.site(r, kind) if s.problem is Problem.PREFIX_UNKNOWN else s
                for r, s in zip(raw, sites, strict=True)
            ]
    return tuple(sites)


class _Classifier:
    """Sites of one file's records, each judged by ``classify``."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.linked = elf.e_type != ET_REL
        self._codes: dict[int, Code] = {}
        self.prefix: int | None = None  # Code.prefix, once scan_elf knows it

    def site(self, raw: RawRecord, kind: RecordKind) -> Site:
        elf = self.elf
        sec = raw.target
        target_name = sec.name if sec is not None else "?"
        address = raw.target_offset + sec.sh_addr if (sec is not None and self.linked) else None
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
        )
        if raw.problem is not None or sec is None:
            where = Location(elf.path, raw.section.name, raw.index * 8)
            if raw.zero:
                return Site(record, where, None, None, State.SKIPPED, ZERO_RECORD)
            return Site(
                record, where, None, None, State.INVALID, raw.problem, problem=Problem.OTHER
            )
        code = self._codes.get(sec.index)
        if code is None or code.prefix != self.prefix:
            code = self._codes[sec.index] = code_of(elf, sec)._replace(prefix=self.prefix)
        return site_of(elf.path, sec, code, record, classify(code, raw.target_offset), self.linked)


def site_of(
    path: str, sec: Section, code: Code, record: Record, v: Verdict, linked: bool
) -> Site:
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
    )


