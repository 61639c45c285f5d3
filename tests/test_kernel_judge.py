"""The kernel e2e's judge on real boot logs, without building a kernel.

``scripts/kernel-e2e.sh`` boots again on a known qemu flake and fails on
anything else; the rules that decide are ``scripts/kernel_e2e/rules.py``.
These tests call each rule on the serial logs in ``tests/data/kernel-boots``
(real boots, see its README), each with a log that makes it fire and one
that does not, and on those logs with one real line of another log added,
to show where the rules stop: a flake plus anything else is a failure.
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
from conftest import require
from kernel_e2e import bootlog, rules, w1
from kernel_e2e.__main__ import main
from kernel_e2e.bootlog import BootLog, Outcome
from kernel_e2e.rules import NegativeFailure, Verdict
from kernel_e2e.summary import Summary, note_value

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "tests" / "data" / "kernel-boots"
# ftrace_list_end in the images that wrote {ftpatch,stock}-boot-oops.log (nm).
LIST_END = 0xFFFFFFC0083D8700


def log_text(name: str) -> str:
    return lzma.decompress((LOGS / f"{name}.log.xz").read_bytes()).decode()


@cache
def log(name: str) -> BootLog:
    return bootlog.read(LOGS / f"{name}.log.xz")


def edited(lines: list[str]) -> BootLog:
    return bootlog.parse("\n".join(lines) + "\n")


def judge(boot: BootLog, list_end: int | None = None, qemu_rc: int = 0) -> str:
    return str(rules.judge(boot, qemu_rc, list_end))


def _lines_with(name: str, needle: str) -> list[str]:
    return [line for line in log_text(name).splitlines() if needle in line]


def _with_line(name: str, extra: str, before: str = "") -> BootLog:
    """Log ``name`` with ``extra`` inserted before the first line holding ``before``
    (by default after line 100)."""
    lines = log_text(name).splitlines()
    at = next(i for i, line in enumerate(lines) if before in line) if before else 100
    return edited([*lines[:at], extra, *lines[at:]])


# -- the parser ---------------------------------------------------------------------


def test_a_passing_boot_reads_as_its_lines_say() -> None:
    boot = log("ftpatch-boot-pass")
    assert len(boot.passed) == 9 and not boot.failed and not boot.warnings
    assert boot.ftrace_entries == 9427 and boot.timer_mhz == 62.5
    assert boot.ftrace_init_ms == round(619248 / 62500, 2)
    assert [r.outcome for r in boot.results] == [Outcome.PASS]
    assert boot.function_switches == 30 and boot.graph_switches == 3
    assert boot.live_records == 8824
    assert not boot.kaslr_enabled and boot.kallsyms_stext is None


def test_an_oops_log_reads_its_register_dumps() -> None:
    boot = log("ftpatch-boot-oops")
    assert len(boot.oopses) == 3 and len(boot.dumps) == 3
    assert {d.pc for d in boot.dumps} == {"function_trace_call+0x18/0x100"}
    assert {d.lr for d in boot.dumps} == {"ftrace_call+0x4/0x2c"}
    assert {d.x2 for d in boot.dumps} == {LIST_END}


def test_a_6_12_boot_reads_kaslr_bti_and_the_module_layout() -> None:
    boot = log("stock-boot-module-layout")
    assert boot.kaslr_enabled and boot.kallsyms_stext == 0xFFFFA03CE8610000
    assert rules.BTI in boot.cpu_features
    assert boot.module_calls == "direct (BL in range)"
    assert [r.outcome for r in boot.results] == [Outcome.AGAIN]


# -- judge and its flake rules ------------------------------------------------------


def test_full_boots() -> None:
    assert rules.judge(log("ftpatch-boot-pass"), 0, None).verdict is Verdict.PASS
    assert judge(log("ftpatch-boot-flake")) == "flake:self-test"
    for kernel in ("ftpatch", "stock"):
        oops = log(f"{kernel}-boot-oops")
        assert judge(oops, LIST_END) == "flake:oops-race"
        # Another op in x2 is not that race.
        assert judge(oops, LIST_END + 8).startswith("fail:Oops")
    # A timed-out boot is a failure even after a flake.
    assert judge(log("ftpatch-boot-flake"), qemu_rc=124).startswith("fail:")


def test_oops_race_fires_only_on_the_known_oops() -> None:
    for kernel in ("ftpatch", "stock"):
        assert rules.oops_race(log(f"{kernel}-boot-oops"), LIST_END) is Verdict.FLAKE_OOPS_RACE
        assert rules.oops_race(log(f"{kernel}-boot-oops"), None) is None
    assert rules.oops_race(log("ftpatch-boot-pass"), LIST_END) is None
    # The race plus a self-test failure is not the race.
    failed = _lines_with("unrewritten-ftrace-bug", "Testing tracer function: ")[0]
    assert rules.oops_race(_with_line("ftpatch-boot-oops", failed), LIST_END) is None


def test_the_oops_race_address_moves_with_kaslr() -> None:
    boot = log("stock-boot-module-layout")
    assert boot.kallsyms_stext is not None
    link_stext = boot.kallsyms_stext - 0x1000_0000
    assert rules.kaslr_offset(boot, link_stext) == 0x1000_0000
    assert rules.address_at_boot(0x10, boot, link_stext) == 0x1000_0010
    # 6.1 has no kallsyms line: the link address is the address.
    assert rules.address_at_boot(LIST_END, log("ftpatch-boot-oops"), 0x1234) == LIST_END


STOCK_FLAKES = ["filter", "ops", "recursion", "recursion-safe"]


@pytest.mark.parametrize("kind", STOCK_FLAKES)
def test_each_stock_self_test_flake_is_known(kind: str) -> None:
    boot = log(f"stock-selftest-{kind}")
    assert rules.selftest_flake(boot) is Verdict.FLAKE_SELF_TEST
    # These boots had no init and panicked there: judge does not call a
    # panic a flake, whatever the self-tests did.
    verdict = judge(boot)
    assert verdict.startswith("fail:") and "panic" in verdict


@pytest.mark.parametrize(
    "name", ["stock-selftest-pass", "negative-ftrace-bug", "unrewritten-ftrace-bug"]
)
def test_no_flake_without_exactly_one_known_failure(name: str) -> None:
    boot = log(name)
    assert rules.selftest_flake(boot) is None
    verdict = judge(boot)
    assert verdict.startswith("fail:")
    if "ftrace-bug" in name:
        assert "ftrace bug" in verdict


@pytest.mark.parametrize(
    "extra",
    [
        # a second known failure: two different things went wrong
        ("stock-selftest-recursion", "Testing ftrace recursion: *callback"),
        # an oops on top of the flake
        ("ftpatch-boot-oops", "Internal error: Oops"),
        # an ftrace bug on top of the flake
        ("negative-ftrace-bug", "ftrace bug"),
        # a WARNING from somewhere other than the self-test runner
        ("negative-ftrace-bug", "WARNING: CPU"),
    ],
    ids=["second-failure", "oops", "ftrace-bug", "other-warning"],
)
def test_flake_plus_anything_else_fails(extra: tuple[str, str]) -> None:
    assert judge(log("ftpatch-boot-flake")) == "flake:self-test"
    added = _lines_with(*extra)
    assert added, extra
    # Put the line among the self-test output, where it would appear.
    boot = _with_line("ftpatch-boot-flake", added[0], before="Testing tracer nop")
    assert rules.selftest_flake(boot) is None
    assert judge(boot).startswith("fail:")


def test_an_unknown_self_test_failure_is_no_flake() -> None:
    # The flake log with its one FAILED line swapped for the function tracer
    # self-test failure of the unrewritten kernel (a real line, not a flake).
    (unknown,) = _lines_with("unrewritten-ftrace-bug", "Testing tracer function: ")
    assert "FAILED" in unknown
    lines = log_text("ftpatch-boot-flake").splitlines()
    (at,) = [i for i, line in enumerate(lines) if "filter did not filter" in line]
    lines[at] = unknown
    boot = edited(lines)
    assert rules.selftest_flake(boot) is None
    assert judge(boot).startswith("fail:")


def test_a_module_trace_with_unfiltered_functions_is_the_stale_code_flake() -> None:
    # The init's module check failed, and the trace it printed holds
    # functions outside its filter: BLs the kernel had not enabled ran.
    text = log_text("stock-boot-filter-leak")
    assert rules.filter_leak(log("stock-boot-filter-leak")) is Verdict.FLAKE_FILTER_LEAK
    assert judge(log("stock-boot-filter-leak")) == "flake:filter-leak"
    # The same failure with no function outside the filter in the printed
    # trace (the real log less its tick lines) is a plain failure.
    own = [
        line
        for line in text.splitlines()
        if "tick_handle_periodic" not in line
        and "calc_global_load_tick" not in line
        and not line.endswith("|  }")
    ]
    assert any("FTPATCH-E2E: FAIL" in line for line in own)
    assert rules.filter_leak(edited(own)) is None
    assert judge(edited(own)).startswith("fail:")
    # And the leak with an Oops on top, or after a timeout, is a failure too.
    oops = _lines_with("ftpatch-boot-oops", "Internal error: Oops")[0]
    assert rules.filter_leak(_with_line("stock-boot-filter-leak", oops)) is None
    assert judge(_with_line("stock-boot-filter-leak", oops)).startswith("fail:")
    assert judge(log("stock-boot-filter-leak"), qemu_rc=124).startswith("fail:")
    # A boot that passed has no leak to speak of.
    assert rules.filter_leak(log("ftpatch-boot-pass")) is None


def test_a_boot_whose_module_region_cannot_show_the_path_is_booted_again() -> None:
    # A real boot (6.12 Clang, stock, ftpatch.module_path=plt): its random
    # module region put the module in BL range of ftrace_caller, so the init
    # stopped with AGAIN; the script boots again.
    boot = log("stock-boot-module-layout")
    assert rules.module_layout(boot) is Verdict.AGAIN_MODULE_LAYOUT
    assert judge(boot) == "again:module-layout"
    assert rules.Verdict.AGAIN_MODULE_LAYOUT.boot_again
    # AGAIN after a self-test failure, an Oops, or a timeout is a failure.
    for extra in (
        _lines_with("unrewritten-ftrace-bug", "Testing tracer function: ")[0],
        _lines_with("ftpatch-boot-oops", "Internal error: Oops")[0],
    ):
        assert rules.module_layout(_with_line("stock-boot-module-layout", extra)) is None
        assert judge(_with_line("stock-boot-module-layout", extra)).startswith("fail:")
    assert judge(boot, qemu_rc=124).startswith("fail:")
    # And a FAIL line is never turned into AGAIN.
    failed = log_text("stock-boot-module-layout").replace(
        "FTPATCH-E2E: AGAIN module layout: ", "FTPATCH-E2E: FAIL module layout: "
    )
    assert rules.module_layout(bootlog.parse(failed)) is None
    assert judge(bootlog.parse(failed)).startswith("fail:")
    assert rules.module_layout(log("ftpatch-boot-pass")) is None


def test_sole_result_needs_one_result_and_a_clean_kernel() -> None:
    result = rules.sole_result(log("stock-boot-module-layout"))
    assert result is not None and result.outcome is Outcome.AGAIN
    assert rules.sole_result(log("ftpatch-boot-flake")) is None  # FAILED self-tests
    assert rules.sole_result(log("stock-selftest-pass")) is None  # no init, no result


def test_the_cli_prints_what_the_rules_say(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["judge", str(LOGS / "stock-boot-module-layout.log.xz"), "--rc", "0"]) == 0
    assert capsys.readouterr().out == "again:module-layout\n"
    assert main(["judge", str(LOGS / "stock-boot-module-layout.log.xz"), "--rc", "124"]) == 0
    assert capsys.readouterr().out.startswith("fail:")


# -- the kernels that must fail ------------------------------------------------------


def test_negative_kernel_fails_with_an_ftrace_bug() -> None:
    boot = log("negative-ftrace-bug")
    assert rules.negative_failure(boot) is NegativeFailure.FTRACE_BUG
    assert rules.negative_boot(boot).passed
    assert rules.negative_failure(log("ftpatch-boot-pass")) is None
    assert not rules.negative_boot(log("ftpatch-boot-pass")).passed
    # An Oops elsewhere is not the negative kernel's failure.
    assert rules.negative_failure(log("ftpatch-boot-oops")) is None


def test_unrewritten_kernel_refuses_its_sites() -> None:
    assert rules.unrewritten_boot(log("unrewritten-ftrace-bug")).passed
    judgement = rules.unrewritten_boot(log("ftpatch-boot-pass"))
    assert not judgement.passed and "did not refuse" in str(judgement)
    assert "init reported PASS" in str(judgement)


# -- the passing boots, further ------------------------------------------------------


def test_bti_and_pauth_detected_only_where_the_cpu_has_them() -> None:
    assert rules.bti_check({"stock": log("stock-boot-module-layout")}).passed
    judgement = rules.bti_check({"ftpatch": log("ftpatch-boot-pass")})
    assert judgement.reasons == (
        "boot ftpatch: BTI not detected",
        "boot ftpatch: PAuth not detected",
    )


def test_kaslr_needs_two_different_non_zero_offsets() -> None:
    boot = log("stock-boot-module-layout")
    assert rules.kaslr_check({"ftpatch": (boot, 0x1000), "stock": (boot, 0x2000)}).passed
    same = rules.kaslr_check({"ftpatch": (boot, 0x1000), "stock": (boot, 0x1000)})
    assert not same.passed and "same KASLR offset" in str(same)
    unmoved = rules.kaslr_check({"ftpatch": (log("ftpatch-boot-pass"), None), "stock": (boot, 1)})
    assert not unmoved.passed and 'no "KASLR enabled"' in str(unmoved)


def test_enabled_functions_must_match_the_live_records() -> None:
    # This 6.1 log predates the init's enabled_functions line.
    judgement = rules.enabled_check(log("ftpatch-boot-pass"))
    assert judgement.reasons == ("the function tracer enabled ? functions of 8824 live records",)


def test_two_ftrace_users_only_where_asked() -> None:
    assert rules.ops_check(log("ftpatch-boot-pass"), 0).passed
    judgement = rules.ops_check(log("ftpatch-boot-pass"), 10)
    assert judgement.reasons == ('no "two ftrace users: 10 cycles" line', "no instance burst line")


def test_linked_records_agree_with_the_object_and_the_kernels() -> None:
    # 6.12's figures: 10,352 records in vmlinux.o, 50 zeroed by sorttable.
    linked = {"ftpatch": (10302, 50), "stock": (10302, 50)}
    assert rules.linked_check(10352, linked, {"ftpatch": 10302, "stock": 10302}).passed
    short = rules.linked_check(10352, linked, {"ftpatch": 10301, "stock": 10302})
    assert not short.passed and "the kernel recorded 10301" in str(short)
    lost = rules.linked_check(10353, linked, {"ftpatch": 10302, "stock": 10302})
    assert not lost.passed and "vmlinux.o has 10353 records" in str(lost)


# -- the summary ---------------------------------------------------------------------


def test_the_summary_keeps_each_key_typed(tmp_path: Path) -> None:
    summary = Summary(tmp_path / "summary.json")
    summary.update({"boot_verdict_stock": "pass", "flake_logs_stock": []})
    summary.update({"build_seconds_stock": note_value("build_seconds_stock", "153.2")})
    summary.update({"kernel_version": note_value("kernel_version", "6.12")})
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc == {
        "boot_verdict_stock": "pass",
        "build_seconds_stock": 153.2,
        "flake_logs_stock": [],
        "kernel_version": "6.12",
    }
    with pytest.raises(ValueError):
        note_value("boot_verdict_stock", "pass")  # the judge's, not the shell's
    assert main(["note", str(tmp_path / "summary.json"), "bogus", "1"]) == 1


# -- the 6.12 boots: modules, KASLR, two ftrace users ---------------------------------

# _stext at link time in the images that wrote the 6.12 logs (nm; KASLR moves it).
LINK_STEXT_6_12 = 0xFFFF800080010000
# The in-tree module's sites outside .init.text in that build (ftpatch scan).
INTREE_CORE_SITES = 21


def test_a_6_12_pair_of_boots_passes_every_check() -> None:
    ftpatch, stock = log("ftpatch-6.12-boot-pass"), log("stock-6.12-boot-pass")
    for boot in (ftpatch, stock):
        assert rules.judge(boot, 0, None).passed
        assert rules.enabled_check(boot).passed and boot.enabled_functions == 9654
        assert rules.ops_check(boot, 10).passed
        # The instance traced only its one filtered function.
        assert boot.burst is not None and boot.burst.lines == boot.burst.filtered > 0
    assert rules.module_check(ftpatch, stock, "plt", INTREE_CORE_SITES).passed
    assert rules.module_refusals(ftpatch) == [
        "text+0xc: found 0xd503201f 0xd503201f",
        "text+0x0: found 0x00000000 0xd503201f",
    ]
    offsets = {
        k: rules.kaslr_offset(b, LINK_STEXT_6_12)
        for k, b in (("ftpatch", ftpatch), ("stock", stock))
    }
    assert offsets == {"ftpatch": 0x596212600000, "stock": 0x3C8686600000}
    assert rules.kaslr_check(
        {"ftpatch": (ftpatch, offsets["ftpatch"]), "stock": (stock, offsets["stock"])}
    ).passed
    # A GCC kernel on cortex-a57: no BTI to detect.
    assert not rules.bti_check({"ftpatch": ftpatch}).passed


def test_module_check_fires_on_what_each_boot_lacks() -> None:
    ftpatch, stock = log("ftpatch-6.12-boot-pass"), log("stock-6.12-boot-pass")
    # The path the boot did not take.
    wrong = rules.module_check(ftpatch, stock, "direct", INTREE_CORE_SITES)
    assert wrong.reasons == (
        "boot ftpatch: the module's calls did not go direct",
        "boot stock: the module's calls did not go direct",
    )
    # The kernel listed other than one function per site outside .init.text.
    assert not rules.module_check(ftpatch, stock, "plt", INTREE_CORE_SITES + 1).passed
    # The boots swapped: each kernel's refusals and version magic are its own.
    assert not rules.module_check(stock, ftpatch, "plt", INTREE_CORE_SITES).passed
    # The damaged copy loaded (its refusal gone from the log).
    lines = [
        line
        for line in log_text("ftpatch-6.12-boot-pass").splitlines()
        if "refuse-damaged.ko refused" not in line and "text+0x0: found" not in line
    ]
    damaged = rules.module_check(edited(lines), stock, "plt", INTREE_CORE_SITES)
    assert damaged.reasons == (
        "boot ftpatch: refuse-damaged.ko not refused",
        "boot ftpatch: expected two module refusals by ftpatch_module_check",
    )
    # A 6.1 boot without modules checks none of it.
    assert not rules.module_check(log("ftpatch-boot-pass"), stock, "plt", 21).passed


def test_the_6_12_negative_kernel_oopses_in_ftrace_init_nop() -> None:
    boot = log("negative-6.12-oops")
    assert boot.patch_site_warnings and not boot.ftrace_bugs
    assert rules.negative_failure(boot) is NegativeFailure.OOPS_IN_FTRACE_INIT_NOP
    assert rules.negative_boot(boot).passed
    # The unrewritten kernel's ftrace bug is no Oops in ftrace_init_nop(), and
    # it is what the unrewritten kernel must show.
    unrewritten = log("unrewritten-6.12-ftrace-bug")
    assert rules.negative_failure(unrewritten) is NegativeFailure.FTRACE_BUG
    assert rules.unrewritten_boot(unrewritten).passed
    assert not rules.unrewritten_boot(boot).passed


def test_module_check_on_call_ops_wants_the_literal_refusal() -> None:
    """CALL_OPS kernels also load a module whose symbol-less site is
    rewritten one word off (kernel_e2e misplace-literal): the ftpatch
    kernel must refuse it by the words at its literal.  The pair of boots
    of a run with that module (the same 6.12 GCC build otherwise) passes;
    the earlier pair, without it, does not."""
    ftpatch, stock = log("ftpatch-6.12-literal-boot-pass"), log("stock-6.12-literal-boot-pass")
    assert rules.judge(ftpatch, 0, None).passed and rules.judge(stock, 0, None).passed
    assert rules.literal_refusal(ftpatch) == (
        "at text+0x154: ops literal at site-0xc holds 0xa8c17bfd 0xd65f03c0, "
        "not two NOPs: the kernel would overwrite them"
    )
    assert rules.literal_refusal(stock) is None
    assert rules.module_check(ftpatch, stock, "plt", INTREE_CORE_SITES, call_ops=True).passed
    earlier = log("ftpatch-6.12-boot-pass"), log("stock-6.12-boot-pass")
    lacking = rules.module_check(*earlier, "plt", INTREE_CORE_SITES, call_ops=True)
    assert lacking.reasons == (
        "boot ftpatch: no refusal of the literal-damaged site by its literal",
        "boot ftpatch: refuse-literal-damaged.ko not refused",
    )


# -- W=1: the series adds no compiler warning --------------------------------------

# A source the "series" changes: two lines added above the old warning (so it
# moves), and one new warning of the same kind in a new function.
W1_STOCK = """\
static int helper(int x) { return x + 1; }
int used(int x) { int unused; return helper(x); }
"""
W1_PATCHED = """\
/* two lines
   added */
static int helper(int x) { return x + 1; }
int used(int x) { int unused; return helper(x); }
int added(int x) { int unused_too; return helper(x); }
"""


def _compile_warnings(tmp_path: Path, name: str, source: str) -> str:
    """The stderr of a real compile of ``source`` as ``src/file.c`` with the
    flags W=1 adds that matter here."""
    require("aarch64-linux-gnu-gcc")
    src = tmp_path / name / "src"
    src.mkdir(parents=True)
    (src / "file.c").write_text(source)
    run = subprocess.run(
        [
            "aarch64-linux-gnu-gcc",
            "-c",
            "-Wall",
            "-Wextra",
            "-Wmissing-prototypes",
            str(src / "file.c"),
            "-o",
            str(tmp_path / name / "file.o"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stderr


def test_w1_finds_only_the_warnings_the_series_adds(tmp_path: Path) -> None:
    stock_log = _compile_warnings(tmp_path, "stock", W1_STOCK)
    patched_log = _compile_warnings(tmp_path, "ftpatch", W1_PATCHED)
    stock = w1.parse(stock_log, str(tmp_path / "stock"))
    patched = w1.parse(patched_log, str(tmp_path / "ftpatch"))
    # GCC warned of the unused variable and the missing prototype in both.
    assert {(w.path, w.flag) for w in stock} == {
        ("src/file.c", "-Wunused-variable"),
        ("src/file.c", "-Wmissing-prototypes"),
    }
    # The moved warnings are not new; the added function's two are.
    new = w1.new_warnings(stock, patched)
    assert [w.flag for w in new] == ["-Wmissing-prototypes", "-Wunused-variable"]
    assert "unused_too" in str(new[1]) and "added" in str(new[0])
    assert rules.w1_check(stock, stock).passed
    assert not rules.w1_check(stock, patched).passed
    # The same source compiled twice: nothing new, whatever the tree's path.
    again = w1.parse(_compile_warnings(tmp_path, "again", W1_STOCK), str(tmp_path / "again"))
    assert w1.new_warnings(stock, again) == []


def test_w1_command_writes_its_findings_and_fails(tmp_path: Path) -> None:
    stock_log, patched_log = tmp_path / "w1-stock.log", tmp_path / "w1-ftpatch.log"
    stock_log.write_text(_compile_warnings(tmp_path, "s", W1_STOCK))
    patched_log.write_text(
        _compile_warnings(tmp_path, "s2", W1_PATCHED).replace(
            str(tmp_path / "s2"), str(tmp_path / "s")
        )
    )
    summary = tmp_path / "summary.json"
    args = ["w1", str(summary), "--stock", str(stock_log), "--source", str(tmp_path / "s")]
    assert main([*args, "--ftpatch", str(stock_log)]) == 0
    assert json.loads(summary.read_text())["w1_new_warnings"] == []
    assert main([*args, "--ftpatch", str(patched_log)]) == 1
    doc = json.loads(summary.read_text())
    assert doc["w1_warnings_stock"] == 2 and doc["w1_warnings_ftpatch"] == 4
    assert len(doc["w1_new_warnings"]) == 2


# -- the kernel's direct-call clients (samples/ftrace) ------------------------------

DIRECT_SAMPLES = list(rules.DIRECT_SAMPLES)
DIRECT_PAIR = ("ftpatch-6.12-clang-direct-boot-pass", "stock-6.12-clang-direct-boot-pass")


def _direct_pair() -> dict[str, BootLog]:
    return {"ftpatch": log(DIRECT_PAIR[0]), "stock": log(DIRECT_PAIR[1])}


def test_direct_samples_did_what_they_are_written_to_do_in_both_boots() -> None:
    boots = _direct_pair()
    assert rules.direct_check(boots, DIRECT_SAMPLES).passed
    for boot in boots.values():
        assert rules.judge(boot, 0, None).passed
        samples = {d.name: d for d in boot.direct_samples}
        assert sorted(samples) == sorted(DIRECT_SAMPLES[:4])
        for d in samples.values():
            assert d.direct > 0 and d.with_tracer > 0 and d.traced > 0 and d.after == 0
        for name in ("ftrace-direct-modify", "ftrace-direct-multi-modify"):
            assert samples[name].switches >= rules.MIN_MODIFY_SWITCHES
        assert len(boot.ops_samples) == 2 and len(boot.ops_sample_attempts) == 2
        assert all(run.toggles > 0 for run in boot.ops_samples)
        assert "Attempted 1000000 calls to tracee_relevant" in boot.ops_sample_attempts[0]
        assert boot.ops_sample_miscounts == ()


def test_direct_check_wants_every_sample_in_every_boot() -> None:
    # The 6.12 boots from before the samples: no line, no pass (a boot that
    # skipped them cannot pass for one that ran them).
    older = {"ftpatch": log("ftpatch-6.12-boot-pass"), "stock": log("stock-6.12-boot-pass")}
    judgement = rules.direct_check(older, DIRECT_SAMPLES)
    assert not judgement.passed
    assert "boot ftpatch: no line for the direct sample ftrace-direct" in judgement.reasons
    assert any("ftrace-ops: 0 loads, 0 benchmark lines" in r for r in judgement.reasons)
    # Without samples asked for, nothing is required.
    assert rules.direct_check(older, []).passed


def _direct_edited(name: str, old: str, new: str) -> BootLog:
    text = log_text(name)
    assert old in text
    return bootlog.parse(text.replace(old, new, 1))


def test_direct_check_fires_on_each_thing_a_sample_must_show() -> None:
    ftpatch, stock = DIRECT_PAIR
    modify = next(d for d in log(ftpatch).direct_samples if d.name == "ftrace-direct-modify")
    cases = {
        # the trampoline seen switching only once
        f"({modify.switches} switches)": ("(1 switches)", "1 trampoline switches seen"),
        # the sample printed after its unload
        "unloaded, then 0 direct lines": ("unloaded, then 7 direct lines", "after the unload"),
    }
    for old, (new, reason) in cases.items():
        line = modify.line
        boots = {
            "ftpatch": _direct_edited(ftpatch, line, line.replace(old, new)),
            "stock": log(stock),
        }
        judgement = rules.direct_check(boots, DIRECT_SAMPLES)
        assert not judgement.passed and any(reason in r for r in judgement.reasons), judgement
    # ftrace-ops's check_count complaint, in the format samples/ftrace/ftrace-ops.c prints.
    attempt = log(stock).ops_sample_attempts[1]
    miscount = _direct_edited(
        stock,
        attempt,
        attempt + "\n[  99.000000] ftrace_ops: Counter called 999999 times (expected 1000000)",
    )
    judgement = rules.direct_check({"stock": miscount}, DIRECT_SAMPLES)
    assert not judgement.passed
    assert any("Counter called 999999 times" in r for r in judgement.reasons)
    # A benchmark line missing: the module did not run its calls.
    lost = _direct_edited(stock, attempt, "")
    assert "1 benchmark lines" in str(rules.direct_check({"stock": lost}, DIRECT_SAMPLES))


def test_the_e2e_script_and_the_init_load_the_samples_the_judge_expects() -> None:
    """kernel-e2e.sh names the samples/ftrace modules it builds and puts into
    the initramfs, init.c the ones it loads: both must be rules.DIRECT_SAMPLES,
    in that order (the shell and C cannot import it)."""
    script = (ROOT / "scripts/kernel-e2e.sh").read_text()
    lists = re.findall(r"^\s*DIRECT_SAMPLES=\(([^)]+)\)", script, re.M)
    assert lists == [" ".join(rules.DIRECT_SAMPLES)], lists
    init = (ROOT / "examples/kernel/init.c").read_text()
    loaded = re.findall(r'^\t\{ "(ftrace-direct[a-z-]*)",', init, re.M)
    assert tuple(loaded) == rules.DIRECT_SAMPLES[:4], loaded
    assert f'MODULE_DIR "/sample-{rules.OPS_SAMPLE}.ko"' in init
