"""One qemu serial log of an e2e boot, read once into a typed BootLog.

Three writers share the log: the kernel (lines behind a ``[ seconds]``
stamp), the e2e init (examples/kernel/init.c: ``ftpatch-init: `` progress
lines and one ``FTPATCH-E2E: PASS|FAIL|AGAIN`` result line, at the start of
a line) and the tracer's own output that the init prints (``# tracer:``).
Every rule in rules.py reads this record, never the text again.

A line counts where it contains the words, as ``grep`` would: the kernel's
lines may be cut into by another CPU's, so only the init's own lines are
matched from their start.
"""

from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

INIT = "ftpatch-init: "
RESULT = "FTPATCH-E2E: "

_STAMP = re.compile(r"^\[ *[0-9.]+\] ")
_OOPS = re.compile(r"Oops|Internal error:")
# arm64 __show_regs(): "pc : sym+0x18/0x100", "lr : ...", and x2 in "x3 : ... x2 : ...".
_PC = re.compile(r"\bpc : (\S+)")
_LR = re.compile(r"\blr : (\S+)")
_X2 = re.compile(r"(?<![0-9a-z])x2 : ([0-9a-f]+) ")
_FRAME = re.compile(r" ([A-Za-z0-9_.]+)\+0x[0-9a-f]+/0x[0-9a-f]+")
_OPS_TEST_OPEN = re.compile(r"\] Testing dynamic ftrace ops #[12]: $")
_INSTANCE_BURST = re.compile(
    r"burst of \d+ ms \(function_graph at the top\): (\d+) lines, (\d+) of"
)
_INTREE = re.compile(r"in-tree module (\S+) loaded: (\d+) functions listed for ftrace; unloaded")
_DIRECT_SAMPLE = re.compile(
    r"direct sample (\S+): \d+ rounds in [0-9.]+ s \(tracer on in \d+\): (\d+) direct lines "
    r"\((\d+) with the tracer on\), (\d+) lines of its functions from the tracer, "
    r"trampolines seen \S+ \((\d+) switches\); unloaded, then (\d+) direct lines$"
)
_OPS_SAMPLE = re.compile(
    r"ftrace-ops sample \((.*)\): returned EINVAL after its benchmark, "
    r"function tracer switched (\d+) times meanwhile$"
)
# The function names of a trace: "|  name() {" (function_graph), ": name <-" (function).
_TRACED = re.compile(r"[|] +([A-Za-z0-9_.]+)\(\)|: ([A-Za-z0-9_.]+) <-")


class Outcome(Enum):
    """The word after ``FTPATCH-E2E:`` (examples/kernel/init.c)."""

    PASS = "PASS"
    FAIL = "FAIL"
    AGAIN = "AGAIN"  # this boot's layout cannot show what was asked: boot again
    OTHER = "?"


@dataclass(frozen=True)
class InitResult:
    """One ``FTPATCH-E2E:`` line: its outcome and the words after it."""

    outcome: Outcome
    line: str  # the whole line, "FTPATCH-E2E: FAIL ..."


@dataclass(frozen=True)
class RegisterDump:
    """One register dump of an Oops or a WARNING (arm64 __show_regs)."""

    pc: str  # "function_trace_call+0x18/0x100"
    lr: str
    x2: int | None  # ftrace_call passes the ftrace_ops in x2


@dataclass(frozen=True)
class InstanceBurst:
    """The init's burst of the filtered instance with two ftrace users."""

    line: str  # without "ftpatch-init: "
    lines: int  # trace lines in the burst
    filtered: int  # of them, of the instance's one filtered function


@dataclass(frozen=True)
class DirectSample:
    """The init's line for one samples/ftrace direct-call module."""

    name: str  # "ftrace-direct-modify"
    direct: int  # its trampolines' trace_printk lines over all rounds
    with_tracer: int  # of them, in rounds with the function tracer on
    traced: int  # the function tracer's lines of the sample's functions
    switches: int  # changes of the trampoline seen printing (modify samples)
    after: int  # its lines after the unload
    line: str


@dataclass(frozen=True)
class OpsSample:
    """One load of samples/ftrace/ftrace-ops.ko by the init."""

    params: str  # "check_count=1 nr_ops_relevant=2 ..."
    toggles: int  # function tracer switches while it ran


@dataclass(frozen=True)
class BootLog:
    path: str
    # The start-up self-tests: every line that says PASSED / FAILED, stamp removed.
    passed: tuple[str, ...]
    failed: tuple[str, ...]
    # "Testing dynamic ftrace ops #N: " left open, its result on a later line.
    dynamic_ops_test_open: bool
    graph_init_failed: bool  # "Failed to init function_graph tracer, init returned -19"
    warnings: tuple[str, ...]
    ftrace_bugs: tuple[str, ...]
    oopses: tuple[str, ...]  # "Internal error: Oops" reports
    oops_lines: tuple[str, ...]  # every line naming an Oops or an internal error
    panics: tuple[str, ...]
    dumps: tuple[RegisterDump, ...]
    stack_functions: frozenset[str]  # every "name+0x../0x.." in the log
    ftrace_bug_initializing: bool  # ftrace_bug() from ftrace_init_nop()
    patch_site_warnings: tuple[str, ...]  # 6.12's ftrace_call_adjust() complaints
    results: tuple[InitResult, ...]
    init_lines: tuple[str, ...]  # the init's progress, without "ftpatch-init: "
    last_trace_functions: tuple[str, ...]  # from the init's last printed trace
    # Kernel facts.
    ftrace_entries: int | None  # "ftrace: allocating N entries"
    # patches/*/0003: "ftrace: processed N entries in C counter cycles"
    ftrace_init_cycles: int | None
    timer_mhz: float | None
    kaslr_enabled: bool
    cpu_features: frozenset[str]  # "CPU features: detected: X"
    version_magic: tuple[tuple[str, str], ...]  # (the module's, the kernel's)
    # ftpatch_module_check(): "at text+0x..: found .., expected ..: ..."
    site_refusals: tuple[str, ...]
    # The init's facts.
    kallsyms_stext: int | None
    function_switches: int | None
    graph_switches: int | None
    ops_cycles: int | None
    instance_bursts: tuple[InstanceBurst, ...]
    enabled_functions: int | None
    live_records: int | None
    refused_modules: tuple[tuple[str, str], ...]  # (file name, strerror)
    intree_listed: tuple[tuple[str, int], ...]  # (module, functions listed for ftrace)
    module_reloaded: bool
    module_calls: str | None  # how calls from the module's text reach ftrace_caller
    module_init_calls: str | None  # and from its __init text
    module_path_shown: str | None  # "plt" or "direct", as ftpatch.module_path asked
    module_burst_retries: int
    direct_samples: tuple[DirectSample, ...]
    ops_samples: tuple[OpsSample, ...]
    # samples/ftrace/ftrace-ops.ko's kernel lines: its benchmark's summary,
    # and its check_count complaints ("Counter called N times (expected M)").
    ops_sample_attempts: tuple[str, ...]
    ops_sample_miscounts: tuple[str, ...]

    @property
    def ftrace_init_ms(self) -> float | None:
        """ftrace_process_locs() in ms: its cycle count at the arch timer's rate."""
        if self.ftrace_init_cycles is None or self.timer_mhz is None:
            return None
        return round(self.ftrace_init_cycles / (self.timer_mhz * 1e3), 2)

    @property
    def init_passed(self) -> bool:
        return any(r.outcome is Outcome.PASS for r in self.results)

    @property
    def burst(self) -> InstanceBurst | None:
        return self.instance_bursts[-1] if self.instance_bursts else None


def _first_int(pattern: str, lines: tuple[str, ...] | list[str]) -> int | None:
    regex = re.compile(pattern)
    for line in lines:
        if m := regex.search(line):
            return int(m.group(1))
    return None


def parse(text: str, path: str = "") -> BootLog:
    raw = text.splitlines()
    bare = [_STAMP.sub("", line) for line in raw]

    def having(needle: str) -> tuple[str, ...]:
        return tuple(b for b in bare if needle in b)

    # One dump per "pc :" line; its lr and x2 follow it.
    pcs: list[str] = []
    lrs: dict[int, str] = {}
    x2s: dict[int, int] = {}
    for line in raw:
        if m := _PC.search(line):
            pcs.append(m.group(1))
        elif pcs and (m := _LR.search(line)):
            lrs.setdefault(len(pcs) - 1, m.group(1))
        elif pcs and (m := _X2.search(line)):
            x2s.setdefault(len(pcs) - 1, int(m.group(1), 16))
    dumps = [RegisterDump(pc, lrs.get(i, ""), x2s.get(i)) for i, pc in enumerate(pcs)]

    init = tuple(line[len(INIT) :] for line in raw if line.startswith(INIT))
    results = []
    for line in raw:
        if line.startswith(RESULT):
            word = line[len(RESULT) :].split(" ", 1)[0]
            outcome = next((o for o in Outcome if o.value == word), Outcome.OTHER)
            results.append(InitResult(outcome, line))

    headers = [i for i, line in enumerate(raw) if line.startswith("# tracer: ")]
    traced: list[str] = []
    for line in raw[headers[-1] :] if headers else []:
        traced += [a or b for a, b in _TRACED.findall(line)]

    cycles = re.search(r"ftrace: processed \d+ entries in (\d+) counter cycles", text)
    mhz = re.search(r"arch_timer: cp15 timer\(s\) running at ([0-9.]+)MHz", text)
    stext = re.search(rf"^{INIT}kallsyms: ([0-9a-f]+) [Tt] _stext$", text, re.M)
    bursts = []
    for line in init:
        if m := _INSTANCE_BURST.search(line):
            bursts.append(InstanceBurst(line, int(m.group(1)), int(m.group(2))))

    def init_match(pattern: str) -> re.Match[str] | None:
        regex = re.compile(pattern)
        return next((m for line in init if (m := regex.match(line))), None)

    calls = init_match(r"module: text [a-z_]* at .*calls go (.*)$")
    init_calls = init_match(r"module: init text [a-z_]* at .*calls go (.*)$")
    shown = init_match(r"module: text and init text calls go (\S+) ")
    return BootLog(
        path=path,
        passed=having("PASSED"),
        failed=having("FAILED"),
        dynamic_ops_test_open=any(_OPS_TEST_OPEN.search(line) for line in raw),
        graph_init_failed=bool(having("Failed to init function_graph tracer, init returned -19")),
        warnings=having("WARNING:"),
        ftrace_bugs=having("ftrace bug"),
        oopses=having("Internal error: Oops"),
        oops_lines=tuple(b for b in bare if _OOPS.search(b)),
        panics=having("Kernel panic"),
        dumps=tuple(dumps),
        stack_functions=frozenset(f for line in raw for f in _FRAME.findall(line)),
        ftrace_bug_initializing=bool(having("Initializing ftrace call sites")),
        patch_site_warnings=tuple(
            b for b in bare if "Misaligned patch-site" in b or "unexpected insn in patch-site" in b
        ),
        results=tuple(results),
        init_lines=init,
        last_trace_functions=tuple(traced),
        ftrace_entries=_first_int(r"ftrace: allocating (\d+) entries", bare),
        ftrace_init_cycles=int(cycles.group(1)) if cycles else None,
        timer_mhz=float(mhz.group(1)) if mhz else None,
        kaslr_enabled=bool(having("KASLR enabled")),
        cpu_features=frozenset(
            m.group(1) for b in bare if (m := re.search(r"CPU features: detected: (.*\S)", b))
        ),
        version_magic=tuple(
            (m.group(1), m.group(2))
            for b in bare
            if (m := re.search(r"ftpatch_test: version magic '(.*)' should be '(.*)'", b))
        ),
        site_refusals=tuple(
            m.group(1) for b in bare if (m := re.search(r"ftpatch_test: ftrace site (.*)", b))
        ),
        kallsyms_stext=int(stext.group(1), 16) if stext else None,
        function_switches=_first_int(r"^function tracer switched on and off (\d+) times", init),
        graph_switches=_first_int(r"^function_graph tracer switched on and off (\d+) times", init),
        ops_cycles=_first_int(r"^two ftrace users: (\d+) cycles", init),
        instance_bursts=tuple(bursts),
        enabled_functions=_first_int(
            r"^function tracer on: (\d+) lines in enabled_functions$", init
        ),
        live_records=_first_int(r"^dyn_ftrace_total_info: (\d+) ", init),
        refused_modules=tuple(
            (m.group(1), m.group(2))
            for line in init
            if (m := re.match(r"module (\S+) refused: (.*)", line))
        ),
        intree_listed=tuple(
            (m.group(1), int(m.group(2)))
            for line in init
            if (m := _INTREE.match(line))
        ),
        module_reloaded=any(line.startswith("module: reloaded and traced") for line in init),
        module_calls=calls.group(1) if calls else None,
        module_init_calls=init_calls.group(1) if init_calls else None,
        module_path_shown=shown.group(1) if shown else None,
        module_burst_retries=sum(
            bool(re.match(r"module: [a-z_]* burst [0-9] lacks ", line)) for line in init
        ),
        direct_samples=tuple(
            DirectSample(
                name=m.group(1),
                direct=int(m.group(2)),
                with_tracer=int(m.group(3)),
                traced=int(m.group(4)),
                switches=int(m.group(5)),
                after=int(m.group(6)),
                line=line,
            )
            for line in init
            if (m := _DIRECT_SAMPLE.match(line))
        ),
        ops_samples=tuple(
            OpsSample(m.group(1), int(m.group(2)))
            for line in init
            if (m := _OPS_SAMPLE.match(line))
        ),
        ops_sample_attempts=having("ftrace_ops: Attempted "),
        ops_sample_miscounts=having("ftrace_ops: Counter called "),
    )


def read(path: str | Path) -> BootLog:
    """The log at ``path`` (xz-compressed when it ends in .xz), carriage returns removed."""
    p = Path(path)
    data = lzma.decompress(p.read_bytes()) if p.suffix == ".xz" else p.read_bytes()
    return parse(data.decode(errors="replace").replace("\r", ""), str(p))
