"""The command line scripts/kernel-e2e.sh calls: the only place that prints.

Every command prints its findings as ``E2E key=value`` (the value as JSON),
adds them to the summary file when given one, and ends with status 1 and
an ``E2E FAIL ...`` line when its check does not hold.

    python -m kernel_e2e judge LOG --rc N [--vmlinux V]
    python -m kernel_e2e boot SUMMARY KERNEL LOG --rc N --seconds S --vmlinux V
                         [--flake-log L ...] [--layout-log L ...] [--ops-cycles N]
    python -m kernel_e2e must-fail SUMMARY negative|unrewritten LOG --rc N --seconds S --vmlinux V
    python -m kernel_e2e boots-check SUMMARY --out OUT --module-path P [--kaslr] [--bti]
                                     [--call-ops]
    python -m kernel_e2e records IMAGE --expect pristine|rewritten [--call-ops]
                         [--objdump CMD] [--scan JSON] [--summary S --key K]
    python -m kernel_e2e scan SUMMARY SCAN_JSON [--counts K] [--core-sites K] [--sites K --states K]
    python -m kernel_e2e note SUMMARY KEY VALUE
    python -m kernel_e2e damage KO OUT
    python -m kernel_e2e misplace-literal KO OUT
    python -m kernel_e2e final SUMMARY [--deferred-fail MESSAGE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

from . import bootlog, records, rules, w1
from .summary import BootSummary, Summary, Value, core_sites, note_value, scan_counts, state_line


class Failed(Exception):
    """A check that does not hold: the message of its ``E2E FAIL`` line."""


def report(summary: Summary | None, values: dict[str, Value]) -> None:
    for key, value in values.items():
        print(f"E2E {key}={json.dumps(value)}")
    if summary is not None:
        summary.update(values)


def require(judgement: rules.Judgement, where: str) -> None:
    if not judgement.passed:
        raise Failed(f"{where}: {'; '.join(judgement.reasons)}")


def list_end(log: bootlog.BootLog, vmlinux: str | None) -> int | None:
    """ftrace_list_end where the boot that wrote ``log`` had it."""
    if vmlinux is None or not Path(vmlinux).exists():
        return None
    syms = records.symbol_addresses(vmlinux, {"ftrace_list_end", "_stext"})
    return rules.address_at_boot(syms.get("ftrace_list_end"), log, syms.get("_stext"))


def cmd_judge(a: argparse.Namespace) -> None:
    log = bootlog.read(a.log)
    print(rules.judge(log, a.rc, list_end(log, a.vmlinux)))


def cmd_boot(a: argparse.Namespace) -> None:
    log = bootlog.read(a.log)
    judgement = rules.judge(log, a.rc, list_end(log, a.vmlinux))
    boot = BootSummary(a.kernel, log, judgement, a.seconds, tuple(a.flake_log), tuple(a.layout_log))
    summary = Summary(a.summary)
    report(summary, boot.items())
    for line in log.init_lines:
        print(f"ftpatch-init: {line}", file=sys.stderr)
    for result in log.results:
        print(result.line, file=sys.stderr)
    if not judgement.passed:
        raise Failed(f"boot {a.kernel}: {judgement} (log {log.path})")
    if a.ops_cycles:
        require(rules.ops_check(log, a.ops_cycles), f"boot {a.kernel} (log {log.path})")
        assert log.burst is not None
        report(summary, {f"ops_instance_burst_{a.kernel}": log.burst.line})
    enabled = {
        f"enabled_functions_{a.kernel}": log.enabled_functions,
        f"live_records_{a.kernel}": log.live_records,
    }
    report(summary, dict[str, Value](enabled))
    require(rules.enabled_check(log), f"boot {a.kernel} (log {log.path})")


def cmd_must_fail(a: argparse.Namespace) -> None:
    log = bootlog.read(a.log)
    summary = Summary(a.summary)
    report(
        summary,
        {
            f"boot_seconds_{a.kernel}": a.seconds,
            f"boot_log_{a.kernel}": log.path,
            f"boot_verdict_{a.kernel}": str(rules.judge(log, a.rc, list_end(log, a.vmlinux))),
        },
    )
    if a.kernel == "negative":
        require(rules.negative_boot(log), f"boot negative (log {log.path})")
        failure = rules.negative_failure(log)
        assert failure is not None
        report(summary, {"negative_failure": failure.value, "negative_ftrace_bug": "yes"})
    else:
        require(rules.unrewritten_boot(log), f"boot unrewritten (log {log.path})")
        report(summary, {"unrewritten_ftrace_bug": "yes"})


def cmd_boots_check(a: argparse.Namespace) -> None:
    summary = Summary(a.summary)
    doc = summary.read()
    logs = {kind: bootlog.read(str(doc[f"boot_log_{kind}"])) for kind in ("ftpatch", "stock")}
    if a.kaslr:
        offsets = {}
        for kind, log in logs.items():
            syms = records.symbol_addresses(Path(a.out) / f"vmlinux-{kind}", {"_stext"})
            offsets[kind] = rules.kaslr_offset(log, syms.get("_stext"))
            shown = "0x?" if offsets[kind] is None else f"{offsets[kind]:#x}"
            report(summary, {f"kaslr_offset_{kind}": shown})
        require(rules.kaslr_check({k: (logs[k], offsets[k]) for k in logs}), "KASLR")
    intree = doc.get("intree_module_core_sites")
    values: dict[str, Value] = {
        "intree_module_listed": dict(logs["ftpatch"].intree_listed).get("trace_events_sample"),
        "module_refusals": ";".join(rules.module_refusals(logs["ftpatch"])),
    }
    for kind, log in logs.items():
        values[f"module_calls_{kind}"] = log.module_calls or ""
        values[f"module_init_calls_{kind}"] = log.module_init_calls or ""
        # Bursts the init recorded again (a module function missing, nothing
        # outside the filter: module_burst in examples/kernel/init.c).
        values[f"module_burst_retries_{kind}"] = log.module_burst_retries
    report(summary, values)
    if a.call_ops:
        refusal = rules.literal_refusal(logs["ftpatch"])
        report(summary, {"module_literal_refusal": refusal or ""})
    core = intree if isinstance(intree, int) else None
    judgement = rules.module_check(logs["ftpatch"], logs["stock"], a.module_path, core, a.call_ops)
    require(judgement, "modules")
    if a.bti:
        require(rules.bti_check(logs), "BTI and PAuth")
        report(summary, {"bti_pauth_detected": "yes"})
    if a.direct_samples:
        direct: dict[str, Value] = {}
        for kind, log in logs.items():
            for d in log.direct_samples:
                direct[f"direct_sample_{kind}_{d.name}"] = d.line
            for i, run in enumerate(log.ops_samples):
                direct[f"ops_sample_{kind}_{i + 1}"] = (
                    f"{run.params}: {run.toggles} tracer switches; "
                    + (log.ops_sample_attempts[i] if i < len(log.ops_sample_attempts) else "-")
                )
        report(summary, direct)
        require(rules.direct_check(logs, a.direct_samples.split()), "direct-call samples")


def cmd_w1(a: argparse.Namespace) -> None:
    logs = {
        kind: Path(path).read_text(errors="replace")
        for kind, path in (("stock", a.stock), ("ftpatch", a.ftpatch))
    }
    found = {kind: w1.parse(text, a.source) for kind, text in logs.items()}
    values: dict[str, Value] = {
        "w1_objects": a.objects,
        "w1_warnings_stock": sum(found["stock"].values()),
        "w1_warnings_ftpatch": sum(found["ftpatch"].values()),
        "w1_new_warnings": [str(w) for w in w1.new_warnings(found["stock"], found["ftpatch"])],
    }
    report(Summary(a.summary), values)
    require(rules.w1_check(found["stock"], found["ftpatch"]), "W=1")


def cmd_records(a: argparse.Namespace) -> None:
    expect = records.State(a.expect)
    result = records.check(a.image, expect, a.call_ops, a.objdump, a.scan)
    print(result.line(), file=sys.stderr)
    for problem in result.problems:
        print(f"  {problem}", file=sys.stderr)
    if a.key:
        report(Summary(a.summary) if a.summary else None, {a.key: result.as_json()})
    if not result.ok:
        raise Failed(f"records of {a.image} not all {expect.value}: {result.line()}")


def cmd_scan(a: argparse.Namespace) -> None:
    doc: dict[str, Any] = json.loads(Path(a.scan).read_text())
    values: dict[str, Value] = {}
    if a.counts:
        values[a.counts] = dict(scan_counts(doc))
    if a.core_sites:
        values[a.core_sites] = core_sites(doc)
    if a.sites:
        values[a.sites] = len(doc["files"][0]["sites"])
    if a.states:
        values[a.states] = state_line(doc)
    report(Summary(a.summary), values)


def cmd_note(a: argparse.Namespace) -> None:
    try:
        value = note_value(a.key, a.value)
    except ValueError as e:
        raise Failed(f"note: {e}") from e
    report(Summary(a.summary), {a.key: value})


def cmd_damage(a: argparse.Namespace) -> None:
    """OUT is KO with its first MOV X9, X30 in .text turned into a NOP."""
    from elftools.elf.elffile import ELFFile

    with open(a.ko, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        if text is None:
            raise Failed(f"{a.ko}: no .text")
        base, data = text["sh_offset"], text.data()
    mov = records.MOV_X9_X30.to_bytes(4, "little")
    offset = next(i for i in range(0, len(data) - 3, 4) if data[i : i + 4] == mov)
    shutil.copyfile(a.ko, a.out)
    with open(a.out, "r+b") as f:
        f.seek(base + offset)
        f.write(records.NOP.to_bytes(4, "little"))
    print(f".text+{offset:#x}")


def cmd_misplace_literal(a: argparse.Namespace) -> None:
    """OUT is the rewritten CALL_OPS module KO with its one site in .text
    that has no function symbol (the overridden weak function of
    examples/kernel/module keeps its code and record, not its symbol)
    rewritten one word off, as a classifier that does not find that site's
    entry would: the MOV on the first prefix NOP (the correct MOV turned
    back into a NOP), the record (its RELA addend) on the second.  The MOV
    and the NOP around that record are what the kernel expects, but its
    literal, ALIGN_DOWN(record - 12, 8), is then the last two words of the
    function before, which must not be NOPs or the copy proves nothing."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from elftools.elf.sections import SymbolTableSection

    nop, mov = records.NOP, records.MOV_X9_X30
    with open(a.ko, "rb") as src:
        elf = ELFFile(src)
        text_index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".text")
        text = elf.get_section(text_index)
        base, data = text["sh_offset"], text.data()
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise Failed(f"{a.ko}: no .symtab")
        entries = {
            s["st_value"]
            for s in symtab.iter_symbols()
            if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] == text_index
        }
        # (file offset of the record's RELA entry, its symbol's value, the BL slot)
        sites = []
        for rela in elf.iter_sections():
            if not isinstance(rela, RelocationSection):
                continue
            if elf.get_section(rela["sh_info"]).name != "__patchable_function_entries":
                continue
            for i, r in enumerate(rela.iter_relocations()):
                sym = symtab.get_symbol(r["r_info_sym"])
                if sym["st_shndx"] == text_index:
                    at = rela["sh_offset"] + i * rela["sh_entsize"]
                    sites.append((at, sym["st_value"], sym["st_value"] + r["r_addend"]))

    def word(offset: int) -> int:
        value: int = struct.unpack_from("<I", data, offset)[0]
        return value

    def entry(slot: int) -> int:  # callers enter at the BTI C if any, else the MOV
        return slot - 8 if word(slot - 8) == records.BTI_C else slot - 4

    symless = [s for s in sites if entry(s[2]) not in entries]
    if len(symless) != 1:
        raise Failed(f"{a.ko}: {len(symless)} sites in .text without a function symbol, expected 1")
    rela_at, sym_value, slot = symless[0]
    prefix = (slot - 12) & ~7
    if (word(prefix), word(prefix + 4), word(slot - 4), word(slot)) != (nop, nop, mov, nop):
        raise Failed(f"{a.ko}: .text+{slot:#x} is not a rewritten CALL_OPS site")
    literal = (prefix + 4 - 12) & ~7  # the kernel's, for a record on the second prefix NOP
    if (word(literal), word(literal + 4)) == (nop, nop):
        raise Failed(f"{a.ko}: the words before .text+{prefix:#x} are NOPs: that proves nothing")
    shutil.copyfile(a.ko, a.out)
    with open(a.out, "r+b") as dst:
        for at, value in ((slot - 4, nop), (prefix, mov)):
            dst.seek(base + at)
            dst.write(struct.pack("<I", value))
        dst.seek(rela_at + 16)  # Elf64_Rela.r_addend
        dst.write(struct.pack("<q", prefix + 4 - sym_value))
    print(
        f".text+{slot:#x} -> .text+{prefix + 4:#x}, MOV at .text+{prefix:#x};"
        f" literal .text+{literal:#x}: {word(literal):#010x} {word(literal + 4):#010x}"
    )


def cmd_final(a: argparse.Namespace) -> None:
    summary = Summary(a.summary)
    doc = summary.read()
    linked: dict[str, tuple[int, int]] = {}
    for kind in ("ftpatch", "stock"):
        check = doc[f"records_check_{kind}"]
        assert isinstance(check, dict)
        linked[kind] = (check["records"], check["zero_words"])
    records_, zero_words = linked["ftpatch"]
    report(summary, {"linked_records": records_, "linked_zero_words": zero_words})
    entries: dict[str, int | None] = {}
    for kind in ("ftpatch", "stock"):
        value = doc.get(f"ftrace_entries_{kind}")
        entries[kind] = value if isinstance(value, int) else None
    sites = doc["sites_in_vmlinux_o"]
    assert isinstance(sites, int)
    require(rules.linked_check(sites, linked, entries), "records")
    if a.deferred_fail:
        raise Failed("; ".join(a.deferred_fail))
    print(
        f"E2E PASS: Linux {doc['kernel_version']}: {sites} patch sites in vmlinux.o, "
        f"{linked['ftpatch'][1]} zeroed in vmlinux; the kernel saw {entries['ftpatch']}; "
        f"ftrace_init {doc.get('ftrace_init_ms_ftpatch')} ms (ftpatch) vs "
        f"{doc.get('ftrace_init_ms_stock')} ms (stock)"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kernel_e2e", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(required=True)

    def command(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(run=run)
        return p

    p = command("judge", cmd_judge, "print one boot's verdict")
    p.add_argument("log")
    p.add_argument("--rc", type=int, required=True, help="qemu's exit status (124: timeout)")
    p.add_argument("--vmlinux", help="the image that booted (for ftrace_list_end)")

    for name, run, help in (
        ("boot", cmd_boot, "a boot expected to pass: summary keys, fail unless it passed"),
        ("must-fail", cmd_must_fail, "the negative or unrewritten boot: fail unless it failed so"),
    ):
        p = command(name, run, help)
        p.add_argument("summary")
        p.add_argument("kernel")
        p.add_argument("log")
        p.add_argument("--rc", type=int, required=True)
        p.add_argument("--seconds", type=float, required=True)
        p.add_argument("--vmlinux")
        if name == "boot":
            p.add_argument("--flake-log", action="append", default=[])
            p.add_argument("--layout-log", action="append", default=[])
            p.add_argument("--ops-cycles", type=int, default=0)

    p = command("boots-check", cmd_boots_check, "modules, KASLR, BTI across the passing boots")
    p.add_argument("summary")
    p.add_argument("--out", required=True, help="the directory of vmlinux-ftpatch and -stock")
    p.add_argument("--module-path", required=True, choices=("plt", "direct"))
    p.add_argument("--kaslr", action="store_true")
    p.add_argument("--bti", action="store_true")
    p.add_argument("--call-ops", action="store_true", help="the literal-damaged module too")
    p.add_argument(
        "--direct-samples",
        default="",
        help="the samples/ftrace modules both boots loaded (space-separated names)",
    )

    p = command("w1", cmd_w1, "no W=1 warning in the ftpatch kernel that stock lacks")
    p.add_argument("summary")
    p.add_argument("--stock", required=True, help="make W=1 log of the stock kernel")
    p.add_argument("--ftpatch", required=True, help="make W=1 log of the ftpatch kernel")
    p.add_argument("--source", default="", help="the source tree (paths made relative to it)")
    p.add_argument("--objects", default="", help="the objects compiled (for the summary)")

    p = command("records", cmd_records, "check every record of an image or module")
    p.add_argument("image")
    p.add_argument("--expect", required=True, choices=[s.value for s in records.State][:2])
    p.add_argument("--call-ops", action="store_true", help="-fpatchable-function-entry=4,2")
    p.add_argument("--objdump", help="binutils objdump to read every judged word again")
    p.add_argument("--scan", help="ftpatch scan --json of the image: must list the same records")
    p.add_argument("--summary")
    p.add_argument("--key")

    p = command("scan", cmd_scan, "summary keys from ftpatch scan --json")
    p.add_argument("summary")
    p.add_argument("scan")
    for option in ("--counts", "--core-sites", "--sites", "--states"):
        p.add_argument(option, metavar="KEY")

    p = command("note", cmd_note, "a fact of the build, of a declared type")
    p.add_argument("summary")
    p.add_argument("key")
    p.add_argument("value")

    p = command(
        "misplace-literal",
        cmd_misplace_literal,
        "a CALL_OPS module with its symbol-less site rewritten one word off",
    )
    p.add_argument("ko")
    p.add_argument("out")
    p = command("damage", cmd_damage, "a module with its first MOV X9, X30 turned into a NOP")
    p.add_argument("ko")
    p.add_argument("out")

    p = command("final", cmd_final, "records against the kernels' counts; the PASS line")
    p.add_argument("summary")
    p.add_argument("--deferred-fail", action="append", default=[])
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except Failed as e:
        print(f"E2E FAIL {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
