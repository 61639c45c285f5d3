"""The ftpatch command line: the only module that prints or chooses exit codes.

Exit status: 0 success; 1 ``--check`` found work to do, or ``verify`` found a
failing site; 2 bad input or an I/O error (the input is left untouched).
With several files the status is the worst of them.

Start-up is most of a one-object rewrite (benchmarks/bench_rewrite.py), so
this module imports only what every command needs; each command imports its
own machinery, and json only with --json.  No ``from __future__ import
annotations``: typer would evaluate every string annotation of every command
at each start (about 3 ms).
"""

import enum
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
from typer.core import TyperCommand

from ftpatch import __version__
from ftpatch.errors import FtpatchError
from ftpatch.model import RecordsMode

if TYPE_CHECKING:
    from ftpatch.rewrite import RewriteResult

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


class _Command(TyperCommand):
    """Usage lines as a man page writes them, ``FILE...``: typer braces a
    required argument's metavar (``{files}...``)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


def _err(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")


def _out(message: str) -> None:
    sys.stdout.write(message + "\n")


def _internal(path: str, exc: BaseException) -> str:
    """The one-line message of an unexpected exception (its traceback too,
    once, with FTPATCH_DEBUG set): call it once per error."""
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


FilesArg = Annotated[
    list[Path],
    typer.Argument(metavar="FILE...", help="ELF files (.o, ld -r output, images)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
JobsOpt = Annotated[
    int | None,
    typer.Option(
        "-j",
        "--jobs",
        min=1,
        metavar="N",
        show_default=False,
        help="Files processed in parallel (default: one per CPU this process may use).",
    ),
]


class Records(enum.StrEnum):
    """--records: typer lists an Enum's values as the option's choices."""

    AUTO = "auto"
    SECTION = "section"
    MCOUNT_LOC = "mcount-loc"


RecordsOpt = Annotated[
    Records,
    typer.Option(
        "--records",
        help="Linked images: where the records are: section (__patchable_function_entries), "
        "mcount-loc (between __start_mcount_loc and __stop_mcount_loc), or auto "
        "(mcount-loc when the image has those symbols, else section).",
    ),
]


def _records_mode(value: Records) -> RecordsMode:
    return value.value


class _Outcome(NamedTuple):
    """What one file's command has to say; built in a worker, printed by the parent."""

    status: int
    stdout: tuple[str, ...]
    stderr: tuple[str, ...]
    doc: dict[str, Any]
    report: Any = None  # verify: the VerifyReport, for the summary table


@app.command(cls=_Command)
def scan(
    files: FilesArg,
    records: RecordsOpt = Records.AUTO,
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List every record of __patchable_function_entries and the state of its site.

    States: pristine (nop; nop), rewritten (mov x9, x30; nop with the record on
    the nop), invalid (with the reason), skipped (a zero record of a linked
    image).  Exit 2 on a file that cannot be read.
    """
    work = functools.partial(_scan_one, records=_records_mode(records), json_=json_)
    paths = [str(f) for f in files]
    outcomes = _run_many("scan", work, paths, jobs or _default_jobs(), stdout=not json_)
    _finish(outcomes, json_)


def _scan_one(path: str, records: RecordsMode, json_: bool) -> _Outcome:
    from ftpatch.report import scan_dict, scan_lines
    from ftpatch.scan import scan_file

    def body() -> _Outcome:
        with scan_file(path, records) as result:
            if json_:
                return _Outcome(EXIT_OK, (), (), scan_dict(result))
            return _Outcome(EXIT_OK, tuple(scan_lines(result)), (), {})

    return _guarded(path, body)


def _guarded(path: str, body: Callable[[], _Outcome], directory: str = "") -> _Outcome:
    """``body()``, or the one per-file outcome of an error: the message on
    stderr, ``{"path", "error"}`` in --json, the error's exit status."""
    if directory and os.path.isdir(path):
        msg = f"{path}: is a directory{directory}"
        return _Outcome(EXIT_ERROR, (), (msg,), {"path": path, "error": msg})
    try:
        return body()
    except FtpatchError as exc:
        return _Outcome(exc.exit_status, (), (str(exc),), {"path": path, "error": str(exc)})
    except BrokenPipeError:
        raise
    except Exception as exc:
        msg = _internal(path, exc)
        return _Outcome(EXIT_ERROR, (), (msg,), {"path": path, "error": msg})


def _finish(outcomes: list[_Outcome], json_: bool, **extra: Any) -> None:
    """Print --json's document (the lines went out as files finished); exit
    with the worst status of all files."""
    status = max((o.status for o in outcomes), default=EXIT_OK)
    if json_:
        import json

        doc: dict[str, Any] = {"files": [o.doc for o in outcomes], **extra}
        if "exit_status" in doc:
            doc["exit_status"] = status
        _out(json.dumps(doc, indent=2))
    raise typer.Exit(status)


def _collect(files: list[Path], recursive: bool) -> list[str]:
    """Files in command-line order; directories (with -r) walked in sorted order for *.o.

    Without -r a directory stays in the list: its rewrite fails alone
    (``_rewrite_one``), as in scan and verify, and the other files go on.
    Entries of a walk that are not regular files (a FIFO named x.o) are
    kept too, and refused by the rewrite like one named on the command line.
    """
    out: list[str] = []
    for file in files:
        if recursive and file.is_dir():
            for root, dirs, names in os.walk(file):
                dirs.sort()
                out.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".o"))
        else:
            out.append(str(file))
    return out


def _rewrite_one(
    path: str,
    output: str | None,
    check: bool,
    dry_run: bool,
    quiet: bool,
    records: RecordsMode,
    detail: bool = False,
) -> _Outcome:
    from ftpatch.rewrite import rewrite_file

    def body() -> _Outcome:
        result = rewrite_file(
            path, output, check=check, dry_run=dry_run, records_mode=records, detail=detail
        )
        return _rewrite_outcome(result, check, dry_run, quiet, detail)

    # (A directory only without -r: _collect walks them with it.)
    return _guarded(path, body, " (use -r to rewrite the objects under it)")


def _rewrite_outcome(
    result: "RewriteResult", check: bool, dry_run: bool, quiet: bool, detail: bool
) -> _Outcome:
    from ftpatch.report import plan_lines, rewrite_dict, rewrite_line
    from ftpatch.scan import zero_records_note

    status = EXIT_FINDINGS if check and result.changes else EXIT_OK
    lines: list[str] = []
    if not quiet or (check and result.changes):
        lines.append(rewrite_line(result, check=check, dry_run=dry_run))
    if dry_run:
        lines.extend(plan_lines(result))
    zero = result.skipped  # zero records: linked images only
    warnings = (f"{result.path}: note: {zero_records_note(zero)}",) if zero else ()
    doc = rewrite_dict(result) if detail else {}
    return _Outcome(status, tuple(lines), warnings, doc)


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@app.command(cls=_Command)
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
    jobs: JobsOpt = None,
    records: RecordsOpt = Records.AUTO,
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
    outcomes = _run_many("rewrite", work, paths, jobs or _default_jobs(), stdout=not json_)
    _finish(outcomes, json_)


def _emit(outcome: _Outcome, stdout: bool) -> None:
    for line in outcome.stderr:
        _err(line)
    if stdout:
        for line in outcome.stdout:
            _out(line)


def _run_many(
    command: str, work: Callable[[str], _Outcome], paths: list[str], jobs: int, *, stdout: bool
) -> list[_Outcome]:
    """Run ``work`` on every path, ``jobs`` at a time; print in input order.

    The one per-file driver of scan, rewrite and verify.  Messages (stderr)
    are always printed; the stdout lines only with ``stdout`` (--json prints
    its document instead).  On an interactive terminal a progress bar (stderr) runs while files are
    processed and the lines follow; otherwise lines stream as files finish,
    still in input order, so logs are deterministic.
    """
    jobs = max(1, min(jobs, len(paths)))
    interactive = len(paths) > 1 and sys.stderr.isatty()
    results: list[_Outcome | None] = [None] * len(paths)
    printed = 0

    def flush() -> None:
        nonlocal printed
        while printed < len(paths) and results[printed] is not None:
            outcome = results[printed]
            assert outcome is not None
            if not interactive:
                _emit(outcome, stdout)
            printed += 1

    progress = None
    task = None
    if interactive:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn(command),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[f]}"),
            console=Console(stderr=True),
            transient=True,
        )
        progress.start()
        task = progress.add_task(command, total=len(paths), f="")
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
            _emit(outcome, stdout)
    return done


class SchemeChoice(enum.StrEnum):
    """--scheme (verify.findings.Scheme, named here so that start-up imports no verify)."""

    SINGLE_SLOT = "single-slot"
    TWO_SLOT = "two-slot"


@app.command(cls=_Command)
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
        SchemeChoice,
        typer.Option(
            "--scheme",
            help="single-slot: the runtime changes only the BL slot (ftpatch's contract). "
            "two-slot: the runtime writes MOV then BL, as it must without the rewrite; "
            "on a pristine input (before ftpatch rewrite) the verifier finds the "
            "counterexample, on a rewritten one the MOV is already there and it reports ok.",
        ),
    ] = SchemeChoice.SINGLE_SLOT,
    sites: Annotated[
        str,
        typer.Option(
            "--sites",
            metavar="all|N",
            help="Emulate every site, or N spread evenly (static checks cover all).",
        ),
    ] = "all",
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Prove each site safe to patch while other CPUs run it.

    Static checks (layout MOV X9,X30 ; NOP with the record on the NOP,
    alignment, relocations, one aligned word per runtime change within the
    ARM DDI 0487 CMODX permitted set, BL range) and an emulation with
    unicorn of every old/new fetch interleaving of enable, disable and
    retarget.  Exit 0 when every check holds, 1 when a site fails, 2 on
    bad input.
    """
    import time

    limit: int | None = None
    if sites != "all":
        if not sites.isdigit():
            _err(f"ftpatch verify: --sites must be 'all' or a number, not {sites!r}")
            raise typer.Exit(EXIT_ERROR)
        limit = int(sites)
    paths = [str(f) for f in files]
    jobs = max(1, min(jobs or _default_jobs(), len(paths)))
    bar = _SiteProgress(enabled=not json_ and jobs == 1 and len(paths) == 1)
    work = functools.partial(
        _verify_one,
        scheme=scheme.value,
        trampoline=trampoline,
        limit=limit,
        json_=json_,
        progress=bar.update if bar.enabled else None,
    )
    started = time.perf_counter()
    try:
        outcomes = _run_many("verify", work, paths, jobs, stdout=not json_)
    finally:
        bar.stop()
    elapsed = time.perf_counter() - started
    reports = [o.report for o in outcomes if o.report is not None]
    if not json_:
        from ftpatch.verify.render import summary_line, summary_table
        from ftpatch.verify.render import totals as totals_line

        if len(reports) == 1:
            _out(summary_line(reports[0]))
        elif reports:
            from rich.console import Console

            console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
            console.print(summary_table(reports))
            _out(totals_line(reports, elapsed))
    _finish(outcomes, json_, exit_status=EXIT_OK)


_ENGINE: Any = None  # one emulator per process, for every file it verifies


def _verify_one(
    path: str,
    scheme: str,
    trampoline: str | None,
    limit: int | None,
    json_: bool,
    progress: Callable[[int, int], None] | None,
) -> _Outcome:
    from ftpatch.verify import Scheme, verify_file
    from ftpatch.verify.emulate import Engine
    from ftpatch.verify.render import finding_lines, report_dict

    def body() -> _Outcome:
        global _ENGINE
        if _ENGINE is None and limit != 0:
            _ENGINE = Engine()
        report = verify_file(
            path,
            scheme=Scheme(scheme),
            trampoline=trampoline,
            sites=limit,
            engine=_ENGINE,
            progress=progress,
        )
        # The report itself goes back too (from a worker: pickled), for the
        # summary table.
        if json_:
            return _Outcome(report.exit_status, (), (), report_dict(report), report)
        return _Outcome(report.exit_status, tuple(finding_lines(report)), (), {}, report)

    return _guarded(path, body)


class _SiteProgress:
    """verify's per-site progress bar on an interactive stderr (one big file)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def update(self, done: int, total: int) -> None:
        if total < 500:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("verifying sites", total=total)
        self._bar.update(self._task, completed=done)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


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
