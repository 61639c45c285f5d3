"""The ftpatch command line: the only module that prints or chooses exit codes.

Exit status: 0 success; 1 ``--check`` found work to do, or ``verify`` found a
failing site; 2 bad input or an I/O error (the input is left untouched).
With several files the status is the worst of them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ftpatch import __version__
from ftpatch.errors import FtpatchError

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


@app.command()
def scan(files: FilesArg, json_: JsonOpt = False) -> None:
    """List every record of __patchable_function_entries and the state of its site.

    States: pristine (nop; nop), rewritten (mov x9, x30; nop with the record on
    the nop), invalid (with the reason).  Exit 2 on a file that cannot be read.
    """
    from ftpatch.report import scan_dict, scan_lines
    from ftpatch.scan import scan_file

    status = EXIT_OK
    docs: list[dict[str, Any]] = []
    for file in files:
        path = str(file)
        try:
            with scan_file(path) as result:
                if json_:
                    docs.append(scan_dict(result))
                else:
                    for line in scan_lines(result):
                        _out(line)
        except FtpatchError as exc:
            _err(str(exc))
            docs.append({"path": path, "error": str(exc)})
            status = max(status, exc.exit_status)
        except Exception as exc:
            _err(_internal(path, exc))
            docs.append({"path": path, "error": _internal(path, exc)})
            status = EXIT_ERROR
    if json_:
        _out(json.dumps({"files": docs}, indent=2))
    raise typer.Exit(status)


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
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print errors only.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Rewrite each pristine site: first entry NOP -> MOV X9,X30, record -> the BL slot.

    In place by default (temporary file in the same directory, fsync, rename;
    mode kept; a symlink's target is rewritten).  Already rewritten sites are
    left alone, so a second run changes nothing.  Any invalid site stops the
    file with exit 2 and leaves it byte-identical.
    """
    from ftpatch.report import plan_lines, rewrite_dict, rewrite_line
    from ftpatch.rewrite import rewrite_file

    if output is not None and len(files) != 1:
        _err("ftpatch rewrite: -o/--output takes exactly one input file")
        raise typer.Exit(EXIT_ERROR)
    status = EXIT_OK
    docs: list[dict[str, Any]] = []
    for file in files:
        path = str(file)
        try:
            result = rewrite_file(
                path, str(output) if output else None, check=check, dry_run=dry_run
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
        if check and result.plan.changes:
            status = max(status, EXIT_FINDINGS)
        if json_:
            docs.append(rewrite_dict(result))
            continue
        if not quiet or (check and result.plan.changes):
            _out(rewrite_line(result, check=check, dry_run=dry_run))
        if dry_run:
            for line in plan_lines(result):
                _out(line)
    if json_:
        _out(json.dumps({"files": docs}, indent=2))
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
        sys.exit(EXIT_ERROR)
