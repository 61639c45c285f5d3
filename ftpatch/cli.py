"""The ftpatch command line: the only module that prints or chooses exit codes.

Exit status: 0 success; 1 ``--check`` found work to do, or ``verify`` found a
failing site; 2 bad input or an I/O error (the input is left untouched).
With several files the status is the worst of them.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ftpatch import __version__
from ftpatch.errors import FtpatchError
from ftpatch.model import RecordsMode, State

app = typer.Typer(
    name="ftpatch",
    help=(
        "Build-time rewriting of arm64 ftrace patch sites: write MOV X9,X30 into each "
        "-fpatchable-function-entry=2 entry and move its record to the BL slot, so that "
        "runtime patching changes one instruction word."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _err(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")


def _out(message: str) -> None:
    sys.stdout.write(message + "\n")


def _internal(path: str, exc: BaseException) -> str:
    if os.environ.get("FTPATCH_DEBUG"):
        import traceback

        traceback.print_exc()
    return f"{path}: internal error: {type(exc).__name__}: {exc} (please report this)"


def _version(value: bool) -> None:
    if value:
        _out(f"ftpatch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


FilesArg = Annotated[list[Path], typer.Argument(help="ELF files (.o, ld -r output, images).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


RecordsOpt = Annotated[
    str,
    typer.Option(
        "--records",
        help="Linked images: where the records are: 'section' (__patchable_function_entries), "
        "'mcount-loc' (between __start_mcount_loc and __stop_mcount_loc) or 'auto'.",
    ),
]


def _records_mode(value: str) -> RecordsMode:
    if value not in ("auto", "section", "mcount-loc"):
        _err(f"ftpatch: --records must be auto, section or mcount-loc, not {value!r}")
        raise typer.Exit(EXIT_ERROR)
    return value  # type: ignore[return-value]


@app.command()
def scan(files: FilesArg, records: RecordsOpt = "auto", json_: JsonOpt = False) -> None:
    """List every record of __patchable_function_entries and the state of its site.

    States: pristine (nop; nop), rewritten (mov x9, x30; nop with the record on
    the nop), invalid (with the reason).  Exit 2 on a file that cannot be read.
    """
    from ftpatch.report import scan_dict, scan_lines
    from ftpatch.scan import scan_file

    mode = _records_mode(records)
    status = EXIT_OK
    docs: list[dict[str, Any]] = []
    for file in files:
        path = str(file)
        try:
            with scan_file(path, mode) as result:
                if json_:
                    docs.append(scan_dict(result))
                else:
                    for line in scan_lines(result):
                        _out(line)
        except FtpatchError as exc:
            _err(str(exc))
            docs.append({"path": path, "error": str(exc)})
            status = max(status, exc.exit_status)
        except BrokenPipeError:
            raise
        except Exception as exc:
            _err(_internal(path, exc))
            docs.append({"path": path, "error": _internal(path, exc)})
            status = EXIT_ERROR
    if json_:
        _out(json.dumps({"files": docs}, indent=2))
    raise typer.Exit(status)


def _collect(files: list[Path], recursive: bool) -> list[str]:
    """Files in command-line order; directories (with -r) walked in sorted order for *.o."""
    out: list[str] = []
    for file in files:
        if file.is_dir():
            if not recursive:
                _err(f"{file}: is a directory (use -r to rewrite the objects under it)")
                raise typer.Exit(EXIT_ERROR)
            for root, dirs, names in os.walk(file):
                dirs.sort()
                out.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".o"))
        else:
            out.append(str(file))
    return out


@dataclass(frozen=True)
class _Outcome:
    """What one file's rewrite has to say; built in a worker, printed by the parent."""

    status: int
    stdout: tuple[str, ...]
    stderr: tuple[str, ...]
    doc: dict[str, Any]


def _rewrite_one(
    path: str,
    output: str | None,
    check: bool,
    dry_run: bool,
    quiet: bool,
    records: RecordsMode,
    detail: bool = False,
) -> _Outcome:
    from ftpatch.report import plan_lines, rewrite_dict, rewrite_line
    from ftpatch.rewrite import rewrite_file
    from ftpatch.scan import zero_records_note

    try:
        result = rewrite_file(
            path, output, check=check, dry_run=dry_run, records_mode=records, detail=detail
        )
    except FtpatchError as exc:
        return _Outcome(exc.exit_status, (), (str(exc),), {"path": path, "error": str(exc)})
    except Exception as exc:
        msg = _internal(path, exc)
        return _Outcome(EXIT_ERROR, (), (msg,), {"path": path, "error": msg})
    status = EXIT_FINDINGS if check and result.changes else EXIT_OK
    lines: list[str] = []
    if not quiet or (check and result.changes):
        lines.append(rewrite_line(result, check=check, dry_run=dry_run))
    if dry_run:
        lines.extend(plan_lines(result))
    # Zero records exist in linked images only, which the general path (and
    # so a Plan) always handles.
    zero = sum(1 for s in (result.plan.sites if result.plan else ()) if s.state is State.SKIPPED)
    warnings = (f"{result.path}: note: {zero_records_note(zero)}",) if zero else ()
    doc = rewrite_dict(result) if detail else {}
    return _Outcome(status, tuple(lines), warnings, doc)


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@app.command()
def rewrite(
    files: FilesArg,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write here instead of in place (one input only)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if anything would change.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing; print the planned edits.")
    ] = False,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Rewrite the *.o files under directories.")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            "-j", "--jobs", min=1, help="Files processed in parallel [default: all cores]."
        ),
    ] = None,
    records: RecordsOpt = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Rewrite each pristine site: first entry NOP -> MOV X9,X30, record -> the BL slot.

    Works on relocatable objects (also ld -r output such as vmlinux.o) and linked
    images (static, PIE with RELA or RELR).  In place by default (temporary file
    in the same directory, fsync, rename; mode kept; a symlink's target is
    rewritten).  Already rewritten sites are left alone, so a second run changes
    nothing.  Any invalid site stops that file with exit 2 and leaves it
    byte-identical; other files go on.
    """
    mode = _records_mode(records)
    paths = _collect(files, recursive)
    if output is not None and len(paths) != 1:
        _err("ftpatch rewrite: -o/--output takes exactly one input file")
        raise typer.Exit(EXIT_ERROR)
    out = str(output) if output else None
    work = functools.partial(
        _rewrite_one,
        output=out,
        check=check,
        dry_run=dry_run,
        quiet=quiet,
        records=mode,
        detail=json_ or dry_run,
    )
    outcomes = _run_many(work, paths, jobs or _default_jobs(), stream=not json_)
    if json_:
        _out(json.dumps({"files": [o.doc for o in outcomes]}, indent=2))
    raise typer.Exit(max((o.status for o in outcomes), default=EXIT_OK))


def _emit(outcome: _Outcome) -> None:
    for line in outcome.stderr:
        _err(line)
    for line in outcome.stdout:
        _out(line)


def _run_many(
    work: Callable[[str], _Outcome], paths: list[str], jobs: int, *, stream: bool
) -> list[_Outcome]:
    """Run ``work`` on every path, ``jobs`` at a time; print in input order.

    On an interactive terminal a progress bar (stderr) runs while files are
    processed and the lines follow; otherwise lines stream as files finish,
    still in input order, so logs are deterministic.
    """
    jobs = max(1, min(jobs, len(paths)))
    interactive = stream and len(paths) > 1 and sys.stderr.isatty()
    results: list[_Outcome | None] = [None] * len(paths)
    printed = 0

    def flush() -> None:
        nonlocal printed
        while printed < len(paths) and results[printed] is not None:
            outcome = results[printed]
            assert outcome is not None
            if stream and not interactive:
                _emit(outcome)
            printed += 1

    progress = None
    task = None
    if interactive:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("rewrite"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[f]}"),
            console=Console(stderr=True),
            transient=True,
        )
        progress.start()
        task = progress.add_task("rewrite", total=len(paths), f="")
    try:
        if jobs == 1:
            for i, path in enumerate(paths):
                results[i] = work(path)
                if progress is not None and task is not None:
                    progress.update(task, advance=1, f=path)
                flush()
        else:
            import concurrent.futures
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            # Chunks of files per task: one round trip per file costs as much
            # as rewriting a small object.  map() yields in input order.
            chunk = max(1, min(32, len(paths) // (jobs * 8)))
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                for i, outcome in enumerate(pool.map(work, paths, chunksize=chunk)):
                    results[i] = outcome
                    if progress is not None and task is not None:
                        progress.update(task, advance=1, f=paths[i])
                    flush()
    finally:
        if progress is not None:
            progress.stop()
    done = [r for r in results if r is not None]
    if interactive:
        for outcome in done:
            _emit(outcome)
    return done


@app.command()
def verify(
    files: FilesArg,
    trampoline: Annotated[
        str | None,
        typer.Option(
            "--trampoline",
            metavar="SYMBOL|ADDRESS",
            help="The BL target (linked images: checked for +-128 MiB reach; "
            "default ftrace_caller when the image defines it).",
        ),
    ] = None,
    scheme: Annotated[
        str,
        typer.Option(
            "--scheme",
            metavar="single-slot|two-slot",
            help="single-slot: the runtime changes only the BL slot (ftpatch's contract). "
            "two-slot: the runtime writes MOV then BL, as it must without the rewrite "
            "(the verifier must find the counterexample).",
        ),
    ] = "single-slot",
    sites: Annotated[
        str,
        typer.Option(
            "--sites",
            metavar="all|N",
            help="Emulate every site, or N spread evenly (static checks cover all).",
        ),
    ] = "all",
    json_: JsonOpt = False,
) -> None:
    """Prove each site safe to patch while other CPUs run it.

    Static checks (layout MOV X9,X30 ; NOP with the record on the NOP,
    alignment, relocations, one aligned word per runtime change within the
    ARM DDI 0487 B2.2.5 permitted set, BL range) and an emulation with
    unicorn of every old/new fetch interleaving of enable, disable and
    retarget.  Exit 0 when every check holds, 1 when a site fails, 2 on
    bad input.
    """
    import time

    from ftpatch.verify import Scheme, verify_file
    from ftpatch.verify.emulate import Engine
    from ftpatch.verify.render import finding_lines, report_dict, summary_line, summary_table
    from ftpatch.verify.render import totals as totals_line

    try:
        scheme_ = Scheme(scheme)
    except ValueError:
        _err(f"ftpatch verify: --scheme must be single-slot or two-slot, not {scheme!r}")
        raise typer.Exit(EXIT_ERROR) from None
    limit: int | None = None
    if sites != "all":
        if not sites.isdigit():
            _err(f"ftpatch verify: --sites must be 'all' or a number, not {sites!r}")
            raise typer.Exit(EXIT_ERROR)
        limit = int(sites)

    from rich.console import Console
    from rich.progress import Progress

    err_console = Console(stderr=True)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    bar: Progress | None = None
    task = None

    def progress(done: int, total: int) -> None:
        nonlocal bar, task
        if total < 500 or json_ or not err_console.is_terminal:
            return
        if bar is None:
            bar = Progress(console=err_console, transient=True)
            bar.start()
        if task is None:
            task = bar.add_task("verifying sites", total=total)
        bar.update(task, completed=done)
        if done == total:
            bar.remove_task(task)
            task = None

    status = EXIT_OK
    reports = []
    docs: list[dict[str, Any]] = []
    engine: Engine | None = None
    started = time.perf_counter()
    try:
        for file in files:
            path = str(file)
            try:
                if engine is None and limit != 0:
                    engine = Engine()  # one emulator for every file
                report = verify_file(
                    path,
                    scheme=scheme_,
                    trampoline=trampoline,
                    sites=limit,
                    engine=engine,
                    progress=progress,
                )
            except FtpatchError as exc:
                _err(str(exc))
                docs.append({"path": path, "error": str(exc)})
                status = max(status, exc.exit_status)
                continue
            except Exception as exc:
                _err(_internal(path, exc))
                docs.append({"path": path, "error": _internal(path, exc)})
                status = EXIT_ERROR
                continue
            reports.append(report)
            status = max(status, report.exit_status)
            if json_:
                docs.append(report_dict(report))
            else:
                for line in finding_lines(report):
                    _out(line)
    finally:
        if bar is not None:
            bar.stop()
    elapsed = time.perf_counter() - started
    if json_:
        _out(json.dumps({"files": docs, "exit_status": status}, indent=2))
    elif len(reports) == 1:
        _out(summary_line(reports[0]))
    elif reports:
        console.print(summary_table(reports))
        _out(totals_line(reports, elapsed))
    raise typer.Exit(status)


def main() -> None:
    # Past RLIMIT_FSIZE a write must fail with EFBIG (reported, input intact),
    # not kill the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        app()
    except KeyboardInterrupt:
        _err("ftpatch: interrupted")
        sys.exit(130)
    except BrokenPipeError:
        # `ftpatch scan big.o | head`: stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_ERROR)
