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

_LIVE: Any = None  # the progress bar's rich Console (stderr) while one runs


class _Command(TyperCommand):
    """Usage lines as a man page writes them, ``FILE...``: typer braces a
    required argument's metavar (``{files}...``)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


def _err(message: str) -> None:
    text = message.rstrip("\n") + "\n"
    if _LIVE is not None:  # above the progress bar
        _LIVE.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        sys.stderr.write(text)


def _out(message: str) -> None:
    _write(message + "\n")


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
    typer.Argument(
        metavar="FILE...",
        help="ELF files: objects (.o), modules (.ko), ld -r output, linked images; with -r, "
        "directories of them.",
    ),
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
    """What one file's command has to say; built in a worker, printed by the
    parent.  Small on purpose: a worker pickles it back."""

    path: str
    status: int
    stdout: tuple[str, ...] = ()
    stderr: tuple[str, ...] = ()
    doc: str = ""  # --json: this file's document, serialized where it was made
    error: str = ""  # the message of an error that stopped this file
    summary: Any = None  # verify: the file's render.FileSummary
    notes: tuple[tuple[str, str], ...] = ()  # verify: the file's (check, message) notes


RecursiveOpt = Annotated[
    bool,
    typer.Option(
        "-r",
        "--recursive",
        help="Walk the directories given for *.o, *.ko (and *.ko.xz, *.ko.gz, *.ko.zst), sorted.",
    ),
]


@app.command(cls=_Command)
def scan(
    files: FilesArg,
    records: RecordsOpt = Records.AUTO,
    recursive: RecursiveOpt = False,
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List every record of __patchable_function_entries and the state of its site.

    States: pristine (nop; nop), rewritten (mov x9, x30; nop with the record on
    the nop), invalid (with the reason), skipped (a zero record of a linked
    image).  Signed modules are read as they are, xz- and gzip-compressed ones
    (zstd too, with Python 3.14 or backports.zstd) decompressed in memory; the
    output says so.  Exit 2 on a file that cannot be read.
    """
    work = functools.partial(_scan_one, records=_records_mode(records), json_=json_)
    walk = _collect(files, recursive, compressed=True)
    printer = _Printer(json_)
    status = _run_many("scan", work, walk.paths, jobs or _default_jobs(), printer.emit)
    _finish(printer, max(status, walk.status))


def _scan_one(path: str, records: RecordsMode, json_: bool) -> _Outcome:
    from ftpatch.report import scan_dict, scan_lines
    from ftpatch.scan import scan_file

    def body() -> _Outcome:
        with scan_file(path, records) as result:
            if json_:
                return _Outcome(path, EXIT_OK, doc=_dumps(scan_dict(result)))
            return _Outcome(path, EXIT_OK, tuple(scan_lines(result)))

    return _guarded(path, body)


def _dumps(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc, indent=2)


def _guarded(path: str, body: Callable[[], _Outcome], directory: str = "") -> _Outcome:
    """``body()``, or the one per-file outcome of an error: the message on
    stderr, ``{"path", "error"}`` in --json, the error's exit status."""
    if directory and os.path.isdir(path):
        msg = f"{path}: is a directory{directory}"
        return _Outcome(path, EXIT_ERROR, stderr=(msg,), error=msg)
    try:
        return body()
    except FtpatchError as exc:
        return _Outcome(path, exc.exit_status, stderr=(str(exc),), error=str(exc))
    except BrokenPipeError:
        raise
    except Exception as exc:
        msg = _internal(path, exc)
        return _Outcome(path, EXIT_ERROR, stderr=(msg,), error=msg)


class _Printer:
    """Says each file's outcome as it comes (in input order): its messages,
    its lines, or, with --json, its document as the next element of
    ``files``, so that no file's output waits for the others'.  The
    document is byte for byte ``json.dumps({"files": [...], ...}, indent=2)``."""

    def __init__(self, json_: bool) -> None:
        self.json_ = json_
        self.count = 0

    def emit(self, outcome: _Outcome) -> None:
        for line in outcome.stderr:
            _err(line)
        if not self.json_:
            for line in outcome.stdout:
                _out(line)
        else:
            doc = outcome.doc or _dumps({"path": outcome.path, "error": outcome.error})
            head = '{\n  "files": [\n' if self.count == 0 else ",\n"
            _write(head + "\n".join("    " + line for line in doc.split("\n")))
        self.count += 1

    def close(self, **extra: Any) -> None:
        """End the --json document with ``extra``'s keys after ``files``."""
        if not self.json_:
            return
        tail = "".join(f",\n  {_dumps({k: v})[4:-2]}" for k, v in extra.items())
        if self.count == 0:
            _write('{\n  "files": []' + tail + "\n}\n")
        else:
            _write("\n  ]" + tail + "\n}\n")


def _finish(printer: _Printer, status: int, **extra: Any) -> None:
    """End --json's document (every file's part went out as it finished);
    exit with the worst status of all files."""
    if "exit_status" in extra:
        extra["exit_status"] = status
    printer.close(**extra)
    raise typer.Exit(status)


# What -r walks for: objects and modules; compressed modules (read by scan
# and verify, refused by rewrite).  Names only choose what a walk takes: what
# a file holds is decided by its bytes (elf/container.py).
WALKED = (".o", ".ko")
WALKED_COMPRESSED = (".ko.xz", ".ko.gz", ".ko.zst")


class _Walk(NamedTuple):
    paths: list[str]
    status: int  # EXIT_ERROR when a walk left files aside that it was asked to work on


def _collect(files: list[Path], recursive: bool, *, compressed: bool, quiet: bool = False) -> _Walk:
    """Files in command-line order; directories (with -r) walked in sorted
    order for ``WALKED`` names, and ``WALKED_COMPRESSED`` ones if ``compressed``.

    Without -r a directory stays in the list: it fails alone (``is a
    directory``) and the other files go on.  Entries of a walk that are not
    regular files (a FIFO named x.o) are kept too, and refused like one
    named on the command line.  A walk that finds nothing says so in one
    line on stderr (unless ``quiet``) and is no error: a Makefile over a
    build with no modules goes on.  Compressed modules a rewrite cannot
    take are said in one line per directory, and make the status 2.
    """
    out: list[str] = []
    status = EXIT_OK
    for file in files:
        if not (recursive and file.is_dir()):
            out.append(str(file))
            continue
        found: list[str] = []
        left = 0
        for root, dirs, names in os.walk(file):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(WALKED) or (compressed and name.endswith(WALKED_COMPRESSED)):
                    found.append(os.path.join(root, name))
                elif name.endswith(WALKED_COMPRESSED):
                    left += 1
        out.extend(found)
        if left:
            status = EXIT_ERROR
            _err(
                f"{file}: {left} compressed module{'s' if left != 1 else ''} (*.ko.xz, *.ko.gz, "
                "*.ko.zst) under it not rewritten: rewrite refuses compressed input; rewrite "
                "before modules_install compresses them, or decompress, rewrite and compress again"
            )
        elif not found and not quiet:
            kinds = "*.o, *.ko or compressed *.ko" if compressed else "*.o or *.ko"
            _err(f"{file}: no {kinds} files under it, nothing to do")
    return _Walk(out, status)


def _rewrite_one(
    path: str,
    output: str | None,
    check: bool,
    dry_run: bool,
    quiet: bool,
    records: RecordsMode,
    detail: bool = False,
    strip_signature: bool = False,
) -> _Outcome:
    from ftpatch.rewrite import rewrite_file

    def body() -> _Outcome:
        result = rewrite_file(
            path,
            output,
            check=check,
            dry_run=dry_run,
            records_mode=records,
            detail=detail,
            strip_signature=strip_signature,
        )
        return _rewrite_outcome(result, check, dry_run, quiet, detail)

    # (A directory only without -r: _collect walks them with it.)
    return _guarded(path, body, " (use -r to rewrite the objects under it)")


def _rewrite_outcome(
    result: "RewriteResult", check: bool, dry_run: bool, quiet: bool, detail: bool
) -> _Outcome:
    from ftpatch.report import plan_lines, rewrite_dict, rewrite_line
    from ftpatch.scan import zero_records_note

    changes = result.changes or result.strips
    status = EXIT_FINDINGS if check and changes else EXIT_OK
    lines: list[str] = []
    if not quiet or (check and changes):
        lines.append(rewrite_line(result, check=check, dry_run=dry_run))
    if dry_run:
        lines.extend(plan_lines(result))
    zero = result.skipped  # zero records: linked images only
    warnings = (f"{result.path}: note: {zero_records_note(zero)}",) if zero else ()
    doc = _dumps(rewrite_dict(result)) if detail else ""
    return _Outcome(result.path, status, tuple(lines), warnings, doc)


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
        bool,
        typer.Option(
            "-r",
            "--recursive",
            help="Rewrite the *.o and *.ko files under directories (sorted); compressed "
            "modules there are counted and refused.",
        ),
    ] = False,
    strip_signature: Annotated[
        bool,
        typer.Option(
            "--strip-signature",
            # A panel of its own: its long name would squeeze the metavars
            # of the other options' table on an 80-column terminal.
            rich_help_panel="Signed modules",
            help="Signed modules: drop the appended signature and rewrite; the output is "
            "the ELF data alone, to be signed again (scripts/sign-file).  Without it a "
            "signed module that needs rewriting is refused (exit 2) and left as it is.",
        ),
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
    byte-identical; other files go on.  Compressed input is refused (exit 2):
    rewrite before compressing.
    """
    mode = _records_mode(records)
    walk = _collect(files, recursive, compressed=False, quiet=quiet)
    paths = walk.paths
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
        strip_signature=strip_signature,
    )
    printer = _Printer(json_)
    status = _run_many("rewrite", work, paths, jobs or _default_jobs(), printer.emit)
    _finish(printer, max(status, walk.status))


def _write(text: str) -> None:
    """``text`` to stdout; above the progress bar when both go to the terminal."""
    if _LIVE is not None and sys.stdout.isatty():
        _LIVE.print(text, end="", markup=False, highlight=False, emoji=False, soft_wrap=True)
    else:
        sys.stdout.write(text)


def _run_many(
    command: str,
    work: Callable[[str], _Outcome],
    paths: list[str],
    jobs: int,
    emit: Callable[[_Outcome], None],
) -> int:
    """Run ``work`` on every path, ``jobs`` at a time; ``emit`` each outcome
    in input order as soon as it and those before it are done; return the
    worst status.

    The one per-file driver of scan, rewrite and verify.  Nothing is kept
    once emitted, so memory does not grow with the number of files.  On an
    interactive terminal a progress bar (stderr) runs below the lines.
    """
    global _LIVE
    jobs = max(1, min(jobs, len(paths)))
    status = EXIT_OK
    progress = None
    task = None
    if len(paths) > 1 and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn(command),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[f]}"),
            console=Console(stderr=True),
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        progress.start()
        task = progress.add_task(command, total=len(paths), f="")
        _LIVE = progress.console
    try:
        if jobs == 1:
            outcomes: Any = map(work, paths)
        else:
            import concurrent.futures
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx)
            # Chunks of files per task: one round trip per file costs as much
            # as rewriting a small object.  map() yields in input order.
            chunk = max(1, min(32, len(paths) // (jobs * 8)))
            outcomes = pool.map(work, paths, chunksize=chunk)
        try:
            for outcome in outcomes:
                if progress is not None and task is not None:
                    progress.update(task, advance=1, f=outcome.path)
                emit(outcome)
                status = max(status, outcome.status)
        finally:
            if jobs > 1:
                pool.shutdown(cancel_futures=True)
    finally:
        _LIVE = None
        if progress is not None:
            progress.stop()
    return status


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
    recursive: RecursiveOpt = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "-v",
            "--verbose",
            help="Several files: a summary row for every file (default: only failing "
            "ones) and each file's notes (default: each note once, with its count of files).",
        ),
    ] = False,
    jobs: JobsOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Prove each site safe to patch while other CPUs run it.

    Static checks (layout MOV X9,X30 ; NOP with the record on the NOP,
    alignment, relocations, one aligned word per runtime change within the
    ARM DDI 0487 CMODX permitted set, BL range) and an emulation with
    unicorn of every old/new fetch interleaving of enable, disable and
    retarget.  Signed and compressed modules are read as scan reads them.
    Exit 0 when every check holds, 1 when a site fails, 2 on bad input.
    """
    import time

    limit: int | None = None
    if sites != "all":
        if not sites.isdigit():
            _err(f"ftpatch verify: --sites must be 'all' or a number, not {sites!r}")
            raise typer.Exit(EXIT_ERROR)
        limit = int(sites)
    from ftpatch.verify.render import Tally, summary_line, summary_table

    walk = _collect(files, recursive, compressed=True)
    paths = walk.paths
    jobs = max(1, min(jobs or _default_jobs(), len(paths) or 1))
    bar = _SiteProgress(enabled=not json_ and jobs == 1 and len(paths) == 1)
    work = functools.partial(
        _verify_one,
        scheme=scheme.value,
        trampoline=trampoline,
        limit=limit,
        json_=json_,
        progress=bar.update if bar.enabled else None,
        notes_apart=not verbose,
    )
    if jobs > 1:
        # The workers fork from here: load the verifier and unicorn once,
        # not once in each worker.
        import unicorn  # noqa: F401

        import ftpatch.verify.core  # noqa: F401
    printer = _Printer(json_)
    tally = Tally(every_row=verbose)

    def emit(outcome: _Outcome) -> None:
        printer.emit(outcome)
        if outcome.summary is not None:
            tally.add(outcome.summary, outcome.notes)
        elif outcome.status == EXIT_ERROR:
            tally.unreadable += 1

    started = time.perf_counter()
    try:
        status = _run_many("verify", work, paths, jobs, emit)
    finally:
        bar.stop()
    elapsed = time.perf_counter() - started
    if not json_:
        for line in tally.note_lines():
            _out(line)
        if len(paths) == 1:
            if tally.last is not None:  # (else the file's error was said)
                _out(summary_line(tally.last))
        elif paths:
            if tally.rows:
                from rich.console import Console

                console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
                title = "ftpatch verify" if verbose else "ftpatch verify: failing files"
                console.print(summary_table(tally.rows, title))
            _out(tally.line(elapsed))
    _finish(printer, max(status, walk.status), exit_status=EXIT_OK)


_ENGINE: Any = None  # one emulator per process, for every file it verifies


def _verify_one(
    path: str,
    scheme: str,
    trampoline: str | None,
    limit: int | None,
    json_: bool,
    progress: Callable[[int, int], None] | None,
    notes_apart: bool = True,
) -> _Outcome:
    """Verify one file and keep only what is said of it: its error lines
    (or --json document), its summary and its notes (``notes_apart``: for
    the run to say once, with their count; else as lines of this file)."""
    from ftpatch.verify import Scheme, verify_file
    from ftpatch.verify.emulate import Engine
    from ftpatch.verify.render import error_lines, file_notes, file_summary, report_dict

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
        summary = file_summary(report)
        notes = file_notes(report)
        if json_:
            doc = _dumps(report_dict(report))
            return _Outcome(path, report.exit_status, doc=doc, summary=summary)
        lines = error_lines(report)
        if not notes_apart:
            lines.extend(f"{path}: note: [{c}] {m}" for c, m in notes)
            notes = ()
        return _Outcome(path, report.exit_status, tuple(lines), summary=summary, notes=notes)

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
