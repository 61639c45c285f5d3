"""The judge's rules: a BootLog (and qemu's exit status) -> a Verdict.

``judge`` decides one boot the e2e expects to pass: pass, a known flake to
boot again (each form its own Verdict, each seen on stock kernels too), a
module layout that cannot show what was asked (boot again, reported apart),
or a failure with its reasons.  The checks after the boots (negative and
unrewritten kernels, modules, KASLR, BTI, ...) return a Judgement the same
way.  Nothing here reads a file: the caller parses the log (bootlog.py) and
passes every other input, qemu's exit status included, as an argument.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from .bootlog import BootLog, InitResult, Outcome
from .w1 import CompilerWarning, new_warnings


class Verdict(Enum):
    PASS = "pass"
    # The known flakes of qemu (TCG, -smp 4), on stock kernels as on ftpatch ones.
    FLAKE_SELF_TEST = "flake:self-test"
    FLAKE_OOPS_RACE = "flake:oops-race"
    FLAKE_FILTER_LEAK = "flake:filter-leak"
    # This boot's random module region cannot show the module path asked for.
    AGAIN_MODULE_LAYOUT = "again:module-layout"
    FAIL = "fail"

    @property
    def boot_again(self) -> bool:
        return self.value.startswith(("flake:", "again:"))


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        """As the e2e prints it: ``pass``, ``flake:self-test``, ``fail:r1;r2``."""
        if self.verdict is Verdict.FAIL:
            return "fail:" + ";".join(self.reasons)
        return str(self.verdict.value)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS


PASSED = Judgement(Verdict.PASS)


def judged(reasons: list[str]) -> Judgement:
    """PASS without reasons, else FAIL with them."""
    return Judgement(Verdict.FAIL, tuple(reasons)) if reasons else PASSED


# -- one boot expected to pass -------------------------------------------------

# The self-tests' PASSED lines of a boot that ran them all (6.1 prints 9, 6.12 14).
MIN_SELF_TESTS_PASSED = 5


def failures(log: BootLog, qemu_rc: int) -> list[str]:
    """What went wrong in a boot that should have passed; empty if nothing."""
    reasons = []
    if len(log.passed) < MIN_SELF_TESTS_PASSED:
        reasons.append(f"only {len(log.passed)} self-test PASSED lines")
    if log.failed:
        reasons.append(f"{len(log.failed)} self-test FAILED")
    if log.ftrace_bugs:
        reasons.append("ftrace bug")
    if log.warnings:
        reasons.append(f"{len(log.warnings)} WARNING")
    if log.oops_lines:
        reasons.append("Oops")
    if log.panics:
        reasons.append("panic")
    if not log.init_passed:
        reasons.append("init did not report PASS")
    if qemu_rc != 0:
        reasons.append(f"qemu exit {qemu_rc} (124 = timeout)")
    return reasons


def judge(log: BootLog, qemu_rc: int, list_end: int | None) -> Judgement:
    """One boot expected to pass.  ``qemu_rc`` is qemu's exit status (124:
    killed at the timeout); ``list_end`` is ftrace_list_end's address in the
    image as it ran (see ``address_at_boot``), None when unknown."""
    reasons = failures(log, qemu_rc)
    if not reasons:
        return PASSED
    # A flake or a layout is only that when the boot ended by itself: a
    # timeout after one is a failure.  The init cannot select the function
    # tracer once its self-test has disabled it, so the init's FAIL is part
    # of the self-test flake; a panic is not.
    ended = qemu_rc == 0
    if ended and module_layout(log):
        return Judgement(Verdict.AGAIN_MODULE_LAYOUT)
    if ended and not log.panics and selftest_flake(log):
        return Judgement(Verdict.FLAKE_SELF_TEST)
    if oops_race(log, list_end):
        return Judgement(Verdict.FLAKE_OOPS_RACE)
    if ended and filter_leak(log):
        return Judgement(Verdict.FLAKE_FILTER_LEAK)
    return Judgement(Verdict.FAIL, tuple(reasons))


def oops_race(log: BootLog, list_end: int | None) -> Verdict | None:
    """FLAKE_OOPS_RACE when the log shows exactly the known qemu oops and
    nothing else: every oops is function_trace_call+0x18 called from
    ftrace_call with op (x2) = &ftrace_list_end, the ops of "no tracer", on
    the worker CPUs at once, while the function tracer is switched.  Seen
    on stock kernels as on rewritten ones: what running an already-replaced
    "bl" gives (examples/kernel/README.md)."""
    n = len(log.oopses)
    if list_end is None or n == 0 or len(log.dumps) != n:
        return None
    for dump in log.dumps:
        if not dump.pc.startswith("function_trace_call+0x18/"):
            return None
        if not dump.lr.startswith("ftrace_call+0x4/") or dump.x2 != list_end:
            return None
    if log.ftrace_bugs or log.panics or log.warnings or log.failed:
        return None
    return Verdict.FLAKE_OOPS_RACE


# The known flakes of the stock 6.1 function tracer start-up self-tests
# under qemu (TCG, -smp 4): a callback registered for one filtered function
# (DYN_FTRACE_TEST_NAME) is also called from other functions.  Each test
# reports it its own way.  All four were seen on the stock kernel: in 300
# boots to the end of the self-tests, in 45% of stock boots and 53% of
# ftpatch ones; in none of 200 with one TCG thread for all vCPUs
# (examples/kernel/README.md).
SELFTEST_FLAKES = re.compile(
    r"Testing dynamic ftrace: \.\. filter did not filter \.\. FAILED!"
    r"|\([0-9]+( [0-9]+){4}\) FAILED!"  # after "Testing dynamic ftrace ops #1/#2: "
    r"|Testing ftrace recursion: \*callback not called once \(or twice\) \([0-9]+\)\* FAILED!"
    r"|Testing ftrace recursion safe: \*callback not called expected 2 times \([0-9]+\)\* FAILED!"
)
BARE_FAILED = "FAILED!"
SELFTEST_WARNERS = re.compile(r" (run_tracer_selftest|init_trace_selftests)\+")


def selftest_flake(log: BootLog) -> Verdict | None:
    """FLAKE_SELF_TEST when the self-test failures are exactly one known
    flake (SELFTEST_FLAKES) and what follows from it, nothing else: the
    failed function tracer is disabled ("tracer: function failed selftest,
    disabling", a WARNING from init_trace_selftests), the function_graph
    self-test then fails to init (-19, a bare "FAILED!"), every WARNING
    comes from run_tracer_selftest or init_trace_selftests, and there is no
    ftrace bug and no oops.  Whether the boot went on well is judge's."""
    primary = [line for line in log.failed if line != BARE_FAILED]
    if len(primary) != 1 or not SELFTEST_FLAKES.fullmatch(primary[0]):
        return None
    if primary[0].startswith("(") and not log.dynamic_ops_test_open:
        return None
    bare = len(log.failed) - 1
    if bare > 1 or (bare == 1 and not log.graph_init_failed):
        return None
    if len(log.warnings) > bare + 2:
        return None
    if not all(SELFTEST_WARNERS.search(w) for w in log.warnings):
        return None
    if log.ftrace_bugs or log.oops_lines:
        return None
    return Verdict.FLAKE_SELF_TEST


def sole_result(log: BootLog) -> InitResult | None:
    """The init's one FTPATCH-E2E line when the kernel reported nothing
    wrong (no FAILED, ftrace bug, Oops, WARNING or panic); else None."""
    if len(log.results) != 1:
        return None
    if log.failed or log.ftrace_bugs or log.oops_lines or log.warnings or log.panics:
        return None
    return log.results[0]


def module_layout(log: BootLog) -> Verdict | None:
    """AGAIN_MODULE_LAYOUT when the init stopped because this boot's module
    region cannot show the module path asked for (ftpatch.module_path; the
    kernel picks the region once per boot, examples/kernel/init.c) and
    nothing had gone wrong before."""
    result = sole_result(log)
    if result and result.outcome is Outcome.AGAIN and result.line.startswith(
        "FTPATCH-E2E: AGAIN module layout: "
    ):
        return Verdict.AGAIN_MODULE_LAYOUT
    return None


MODULE_TRACE_MISS = re.compile(
    r"FTPATCH-E2E: FAIL (function|function_graph): no ftpatch_test_[a-z_]+ "
    r"in the module's trace \([0-9]+ calls\)"
)
MODULE_FILTER = re.compile(r"ftpatch_test_[A-Za-z0-9_.]*|__arm64_sys_getppid")


def filter_leak(log: BootLog) -> Verdict | None:
    """FLAKE_FILTER_LEAK when the boot failed only in the init's module trace
    check (a module function missing from a burst of the tracer filtered to
    the module) and that trace shows functions the filter does not hold:
    the kernel ran BLs it had not enabled, the stale-code flake of the
    self-tests met later in the boot.  Seen on the stock 6.1 kernel."""
    result = sole_result(log)
    if result is None or not MODULE_TRACE_MISS.fullmatch(result.line):
        return None
    if all(MODULE_FILTER.fullmatch(f) for f in log.last_trace_functions):
        return None
    return Verdict.FLAKE_FILTER_LEAK


def kaslr_offset(log: BootLog, link_stext: int | None) -> int | None:
    """How far the boot moved _stext from its link address (the init's
    kallsyms line); None without the line or the symbol."""
    if log.kallsyms_stext is None or link_stext is None:
        return None
    return log.kallsyms_stext - link_stext


def address_at_boot(link_address: int | None, log: BootLog, link_stext: int | None) -> int | None:
    """A link-time address as it was in the boot that wrote ``log``."""
    if link_address is None:
        return None
    return (link_address + (kaslr_offset(log, link_stext) or 0)) % (1 << 64)


# -- the kernels that must fail --------------------------------------------------


class NegativeFailure(Enum):
    """How the negative kernel (rewritten vmlinux.o, stock arm64 ftrace) fails."""

    FTRACE_BUG = "ftrace bug"
    # With MODULES (EXECMEM) patch_map() BUGs while ftrace_init_nop() writes
    # the ops literal at the doubly moved address.
    OOPS_IN_FTRACE_INIT_NOP = "oops in ftrace_init_nop"


def negative_failure(log: BootLog) -> NegativeFailure | None:
    """The stock ftrace_call_adjust() moves the records a second time and
    ftrace_init_nop() fails on them; None if the kernel did not fail so."""
    if log.ftrace_bugs:
        return NegativeFailure.FTRACE_BUG
    if log.oopses and {"ftrace_init_nop", "ftrace_process_locs"} <= log.stack_functions:
        return NegativeFailure.OOPS_IN_FTRACE_INIT_NOP
    return None


def negative_boot(log: BootLog) -> Judgement:
    reasons = []
    if negative_failure(log) is None:
        reasons.append(
            "negative kernel (rewritten vmlinux.o, stock arm64 ftrace) did not fail in its "
            "ftrace init: the checks are not real"
        )
    if log.init_passed:
        reasons.append("negative kernel's init reported PASS")
    return judged(reasons)


def unrewritten_boot(log: BootLog) -> Judgement:
    """The patched ftrace_init_nop() must refuse a vmlinux.o left
    unrewritten: ftrace_bug() while "Initializing ftrace call sites"."""
    reasons = []
    if not (log.ftrace_bugs and log.ftrace_bug_initializing):
        reasons.append(
            "unrewritten kernel (patched ftrace_init_nop, vmlinux.o not rewritten) "
            "did not refuse the sites"
        )
    if log.init_passed:
        reasons.append("unrewritten kernel's init reported PASS")
    return judged(reasons)


# -- the passing boots, further -----------------------------------------------------

NOT_REWRITTEN = "not rewritten by ftpatch"
DAMAGED_SITE = re.compile(
    r"at (init_)?text\+0x[0-9a-f]+: found 0xd503201f 0xd503201f, "
    r"expected 0xaa1e03e9 0xd503201f: not rewritten by ftpatch"
)
REFUSED = "Exec format error"  # ENOEXEC
# CALL_OPS: the literal-damaged module refused by the words at its literal
# (the MOV and the NOP around its record are what the kernel expects).
LITERAL_REFUSAL = re.compile(
    r"at text\+0x[0-9a-f]+: ops literal at site-0xc holds 0x[0-9a-f]{8} 0x[0-9a-f]{8}, "
    r"not two NOPs: the kernel would overwrite them"
)


def _magic(log: BootLog, have: str, want: str) -> bool:
    return any(h.endswith(have) and w.endswith(want) for h, w in log.version_magic)


def module_refusals(log: BootLog) -> list[str]:
    """Where ftpatch_module_check() refused sites, and the words it found."""
    places = []
    for text in log.site_refusals:
        if m := re.match(r"([^:]*): found 0x[0-9a-f]* 0x[0-9a-f]*", text):
            places.append(m.group(0).removeprefix("at "))
    return places


def literal_refusal(log: BootLog) -> str | None:
    """The kernel's refusal of the literal-damaged module, as it said it."""
    for text in log.site_refusals:
        if m := LITERAL_REFUSAL.search(text):
            return m.group(0)
    return None


def module_check(
    ftpatch: BootLog,
    stock: BootLog,
    module_path: str,
    intree_core_sites: int | None,
    call_ops: bool = False,
) -> Judgement:
    """The passing boots refused each refuse-*.ko for the reason it was made
    for (with CALL_OPS, the literal-damaged one by its literal's words), and
    loaded, traced, unloaded and reloaded the test module along the module
    path asked for; the in-tree module listed one function per site outside
    .init.text."""
    reasons = []
    refused = dict(ftpatch.refused_modules)
    kinds = ("foreign", "unrewritten", "damaged") + (("literal-damaged",) if call_ops else ())
    if call_ops and literal_refusal(ftpatch) is None:
        reasons.append("boot ftpatch: no refusal of the literal-damaged site by its literal")
    for kind in kinds:
        if refused.get(f"refuse-{kind}.ko") != REFUSED:
            reasons.append(f"boot ftpatch: refuse-{kind}.ko not refused")
    if dict(stock.refused_modules).get("refuse-foreign.ko") != REFUSED:
        reasons.append("boot stock: the rewritten module was not refused")
    if not _magic(stock, " aarch64 ftpatch", " aarch64"):
        reasons.append("boot stock: no version magic message for the rewritten module")
    if not _magic(ftpatch, " aarch64", " aarch64 ftpatch"):
        reasons.append("boot ftpatch: no version magic message for the stock module")
    # The unrewritten module at its first site, the damaged one at the site
    # the e2e changed (NOP where the MOV was).
    if sum(NOT_REWRITTEN in text for text in ftpatch.site_refusals) != 2:
        reasons.append("boot ftpatch: expected two module refusals by ftpatch_module_check")
    if not any(DAMAGED_SITE.search(text) for text in ftpatch.site_refusals):
        reasons.append("boot ftpatch: no refusal of the damaged site")
    listed = dict(ftpatch.intree_listed).get("trace_events_sample")
    if not listed:
        reasons.append("boot ftpatch: the in-tree module did not load with its functions listed")
    elif listed != intree_core_sites:
        reasons.append(
            f"boot ftpatch: the in-tree module has {intree_core_sites} sites outside "
            f".init.text, the kernel listed {listed} functions"
        )
    for kind, log in (("ftpatch", ftpatch), ("stock", stock)):
        if not log.module_reloaded:
            reasons.append(f"boot {kind}: the module checks did not finish")
        if log.module_path_shown != module_path:
            reasons.append(f"boot {kind}: the module's calls did not go {module_path}")
    return judged(reasons)


def ops_check(log: BootLog, cycles: int) -> Judgement:
    """With two ftrace users (cycles > 0) the boot ran them ``cycles`` times
    and printed its instance's burst."""
    if cycles == 0:
        return PASSED
    reasons = []
    if log.ops_cycles != cycles:
        reasons.append(f'no "two ftrace users: {cycles} cycles" line')
    if log.burst is None:
        reasons.append("no instance burst line")
    return judged(reasons)


def enabled_check(log: BootLog) -> Judgement:
    """With the function tracer on for the first time, enabled_functions
    listed every live record (dyn_ftrace_total_info: the records the kernel
    keeps once the init text is freed)."""
    enabled, live = log.enabled_functions, log.live_records
    if enabled is not None and enabled == live:
        return PASSED
    return judged(
        [
            f"the function tracer enabled {'?' if enabled is None else enabled} functions "
            f"of {'?' if live is None else live} live records"
        ]
    )


def kaslr_check(boots: dict[str, tuple[BootLog, int | None]]) -> Judgement:
    """Both passing boots were randomized, each its own way: the kernel said
    "KASLR enabled" and _stext moved by a non-zero offset that differs
    between the boots (qemu -M virt gives each boot a kaslr-seed).
    ``boots`` maps a kernel to its log and offset (kaslr_offset)."""
    reasons = []
    for kind, (log, offset) in boots.items():
        if not log.kaslr_enabled:
            reasons.append(f'boot {kind}: no "KASLR enabled"')
        if not offset:
            reasons.append(f"boot {kind}: _stext not moved (offset {offset})")
    offsets = [offset for _, offset in boots.values()]
    if not reasons and len(set(offsets)) != len(offsets):
        reasons.append(f"the boots have the same KASLR offset {offsets[0]:#x}")
    return judged(reasons)


BTI = "Branch Target Identification"
PAUTH = "Address authentication"


def bti_check(boots: dict[str, BootLog]) -> Judgement:
    """The boots ran with BTI and PAuth detected."""
    reasons = []
    for kind, log in boots.items():
        if BTI not in log.cpu_features:
            reasons.append(f"boot {kind}: BTI not detected")
        if not any(f.startswith(PAUTH) for f in log.cpu_features):
            reasons.append(f"boot {kind}: PAuth not detected")
    return judged(reasons)



# Trampoline switches a modify sample must show: it calls
# modify_ftrace_direct() every 2 s, and the init watches it for 24 rounds.
MIN_MODIFY_SWITCHES = 3
OPS_SAMPLE = "ftrace-ops"
# The samples/ftrace modules the 6.12 e2e builds and may boot, in the order
# the init loads them (kernel-e2e.sh's DIRECT_SAMPLES and init.c's direct_samples name the
# same, which tests/test_kernel_judge.py checks).
DIRECT_SAMPLES = (
    "ftrace-direct",
    "ftrace-direct-multi",
    "ftrace-direct-modify",
    "ftrace-direct-multi-modify",
    OPS_SAMPLE,
)
# The init loads ftrace-ops twice: one ftrace_ops on its function (in the
# site's literal), then three (the list ops).
OPS_SAMPLE_LOADS = 2


def direct_check(boots: dict[str, BootLog], samples: list[str]) -> Judgement:
    """The kernel's direct-call clients (samples/ftrace) did in each boot
    what they are written to do while the function tracer switched over the
    same functions: every trampoline printed, with the tracer on too, the
    tracer traced the functions, the modify samples were seen switching
    trampolines, nothing printed after the unload; ftrace-ops ran its
    benchmark each time, and each of its ftrace_ops saw every call."""
    reasons = []
    for kind, log in boots.items():
        seen = {d.name: d for d in log.direct_samples}
        for name in samples:
            if name == OPS_SAMPLE:
                continue
            d = seen.get(name)
            if d is None:
                reasons.append(f"boot {kind}: no line for the direct sample {name}")
                continue
            if d.direct < 1 or d.with_tracer < 1 or d.traced < 1:
                reasons.append(
                    f"boot {kind}: {name}: {d.direct} direct lines, {d.with_tracer} with the "
                    f"tracer on, {d.traced} traced by it"
                )
            if name.endswith("-modify") and d.switches < MIN_MODIFY_SWITCHES:
                reasons.append(
                    f"boot {kind}: {name}: {d.switches} trampoline switches seen, "
                    f"not >= {MIN_MODIFY_SWITCHES}"
                )
            if d.after:
                reasons.append(f"boot {kind}: {name}: {d.after} direct lines after the unload")
        if OPS_SAMPLE in samples:
            runs, attempts = len(log.ops_samples), len(log.ops_sample_attempts)
            if runs != OPS_SAMPLE_LOADS or attempts != runs:
                reasons.append(
                    f"boot {kind}: {OPS_SAMPLE}: {runs} loads, {attempts} benchmark lines; "
                    f"expected {OPS_SAMPLE_LOADS} of each"
                )
            if any(run.toggles < 1 for run in log.ops_samples):
                reasons.append(f"boot {kind}: {OPS_SAMPLE}: a load without a tracer switch")
            reasons += [f"boot {kind}: {line}" for line in log.ops_sample_miscounts]
    return judged(reasons)


def w1_check(stock: Counter[CompilerWarning], patched: Counter[CompilerWarning]) -> Judgement:
    """A W=1 build of the files the series touches warns of nothing that
    the same files of the stock kernel, built in the same run, do not."""
    return judged([f"new W=1 warning: {w}" for w in new_warnings(stock, patched)])


def linked_check(
    object_sites: int,
    linked: dict[str, tuple[int, int]],
    kernel_entries: dict[str, int | None],
) -> Judgement:
    """The records of vmlinux.o, of the linked images and of the kernels
    that booted agree.  ``linked`` maps a kernel to its image's (non-zero
    records, zero words), ``kernel_entries`` to its boot's "ftrace:
    allocating N entries".  The kernel skips zero words (the records
    scripts/sorttable zeroes for overridden weak functions: 6.12, not 6.1)."""
    reasons = []
    for kind, (records, zero_words) in linked.items():
        if records + zero_words != object_sites:
            reasons.append(
                f"vmlinux.o has {object_sites} records, vmlinux-{kind} {records} "
                f"and {zero_words} zero words"
            )
        if kernel_entries.get(kind) != records:
            reasons.append(
                f"vmlinux-{kind} has {records} non-zero records but the kernel recorded "
                f"{kernel_entries.get(kind)}"
            )
    if len(set(kernel_entries.values())) != 1:
        reasons.append(f"the kernels record different entry counts: {kernel_entries}")
    return judged(reasons)
