"""What the verifier found: frozen data, rendered by ``render.py``, never printed here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ftpatch.elf.container import Compression
from ftpatch.model import Location, Site
from ftpatch.verify.data import Counterexample, Emulation, Store


class Scheme(enum.Enum):
    """How the runtime patches a site.

    ``single-slot``: ftpatch's contract; the MOV is in the file and the
    runtime changes only the BL slot.  ``two-slot``: what the runtime must do
    without the build-time rewrite (write MOV, then BL), kept as the
    counterexample the verifier must reject.
    """

    SINGLE_SLOT = "single-slot"
    TWO_SLOT = "two-slot"


class Severity(enum.Enum):
    ERROR = "error"  # the file fails verification (exit 1)
    NOTE = "note"  # said for completeness, does not fail


# Check names, stable for --json consumers.
CHECK_SCAN = "scan"  # the site could not be classified at all
CHECK_MOV = "mov-missing"  # the word before the BL slot is not mov x9, x30
CHECK_RECORD_ON_MOV = "record-on-mov"
CHECK_RECORD = "record-position"
CHECK_SLOT_ALIGN = "slot-misaligned"
CHECK_SLOT_WORD = "slot-not-nop"
CHECK_PREFIX_ALIGN = "prefix-misaligned"
# CALL_OPS: the 8 bytes the kernel stores the ops pointer at are not the
# site's own two prefix NOPs.
CHECK_LITERAL = "ops-literal"
CHECK_RELOCATION = "relocation"
CHECK_CMODX_WORDS = "cmodx-words"  # a transition changes more than one aligned word
CHECK_CMODX_PAIR = "cmodx-pair"  # a transition outside the permitted set
CHECK_RANGE = "range"  # BL from the slot cannot reach the trampoline
CHECK_EMULATION = "emulation"
CHECK_BRANCH = "branch-into-site"  # a resolved branch enters a site past its entry
CHECK_ENTRY_PATH = "entry-path"  # the patched word is not where callers' path puts the slot
CHECK_SKIPPED = "skipped"  # a zero record, skipped as the kernel does (notes)
CHECK_COVERAGE = "coverage"  # something was not checked (notes)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    location: Location
    message: str
    severity: Severity = Severity.ERROR
    site: int | None = None  # index into VerifyReport.sites
    counterexample: Counterexample | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        return f"{self.location}: {self.severity.value}: [{self.check}] {self.message}"


@dataclass(frozen=True)
class Trampoline:
    """The trampoline the runtime's BL words call (``--trampoline``)."""

    name: str | None
    address: int | None  # virtual address in a linked image; None when unknown

    def __str__(self) -> str:
        if self.name and self.address is not None:
            return f"{self.name} ({self.address:#x})"
        if self.address is not None:
            return f"{self.address:#x}"
        return self.name or "unknown"


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """One runtime transition of one site and what its emulation explored."""

    name: str  # enable, disable, retarget
    stores: tuple[Store, ...]  # in the patcher's order
    interleavings: int = 0
    failing: int = 0
    truncated: bool = False
    # The emulation that covered it: its own run, or one whose recorded bytes
    # this transition matches (emulate.py, "Sharing").
    emulation: Emulation | None = None


@dataclass(frozen=True, slots=True)
class SiteResult:
    index: int
    site: Site
    entry_address: int | None  # emulated address of the function symbol
    slot_address: int | None  # emulated address of the word the runtime patches
    transitions: tuple[TransitionResult, ...]
    findings: tuple[Finding, ...]
    emulated: bool

    @property
    def interleavings(self) -> int:
        return sum(t.interleavings for t in self.transitions)

    @property
    def ok(self) -> bool:
        return not any(f.is_error for f in self.findings)


@dataclass(frozen=True)
class VerifyReport:
    path: str
    kind: str  # relocatable, executable, shared
    scheme: Scheme
    trampoline: Trampoline | None
    sites: tuple[SiteResult, ...]
    findings: tuple[Finding, ...] = field(default=())  # file-level
    seconds: float = 0.0
    prefix_words: int = 0  # NOPs before each function symbol (2 for 4,2)
    synthetic_addresses: bool = True  # relocatable: addresses are section offsets + a base
    signed: bool = False  # the file ends in an appended module signature (not verified)
    compression: Compression | None = None  # the file on disk is compressed

    @property
    def all_findings(self) -> tuple[Finding, ...]:
        out = list(self.findings)
        for s in self.sites:
            out.extend(s.findings)
        return tuple(out)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.all_findings if f.is_error)

    @property
    def interleavings(self) -> int:
        return sum(s.interleavings for s in self.sites)

    @property
    def emulated(self) -> int:
        return sum(1 for s in self.sites if s.emulated)

    @property
    def emulations(self) -> int:
        """Emulations run for this file; the other emulated transitions reused one."""
        return sum(
            1
            for s in self.sites
            for t in s.transitions
            if t.emulation is not None and not t.emulation.reused
        )

    @property
    def failing_sites(self) -> int:
        return sum(1 for s in self.sites if not s.ok)

    @property
    def violations(self) -> int:
        """Failing interleavings, over every site and transition."""
        return sum(t.failing for s in self.sites for t in s.transitions)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1
