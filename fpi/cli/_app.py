"""The Typer application, its global options and the one place errors are caught."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import (
    ClickException,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)
from typer.core import TyperGroup
from typer.exceptions import Abort

from fpi import __version__
from fpi.cli import _progress
from fpi.errors import ExitStatus, FpiError

#: Progress, summaries and errors go to stderr; results go to stdout or files. No emoji
#: codes: the text quotes user data (a path ``:x:.jsonl`` is shown as written), and rich
#: loads its table of codes (about 0.02 s) only when they are looked up.
err_console = Console(stderr=True, highlight=False, emoji=False)
#: Results (``--json``) go to stdout.
out_console = Console(highlight=False, soft_wrap=True, emoji=False)

#: ``--allow-truncated``, shared by every command that reads traces.
AllowTruncated = Annotated[bool, typer.Option(
    "--allow-truncated",
    help="Keep the readable part of a truncated or corrupt input file (.gz, .zst, Parquet, "
         "CSV) with a warning saying what was lost, instead of stopping with status 2.")]

#: ``--strict``, shared by every command that reads traces into an output.
Strict = Annotated[bool, typer.Option(
    "--strict", help="Exit with status 3 if any record was rejected (the outputs are still "
                     "written).")]

#: ``--jobs``: how many model fits run at once (fpi.model.parallel), shared by the
#: commands that fit several models.
Jobs = Annotated[int | None, typer.Option(
    "--jobs", min=1, show_default=False,
    help="Cores for fitting models at once (fold models), each with --threads threads "
         "[default: all available]. Not part of the reproducibility key: the results are "
         "the same whatever it is.")]

#: ``--engine/--workers/--scheduler/--scheduler-file``: where per-partition work runs
#: (fpi.engine.engine_from_options turns them into an engine).
EngineName = Annotated[str, typer.Option(
    "--engine", help="Where the work runs: local (this process) or dask (a Dask cluster: "
                     "a local one of --workers processes, or --scheduler / --scheduler-file; "
                     "needs pip install 'fpi\\[dask]').")]
Workers = Annotated[int | None, typer.Option(
    "--workers", min=1, show_default=False,
    help="With --engine dask: start a local cluster of this many single-threaded worker "
         "processes (default: one per core).")]
Threads = Annotated[int | None, typer.Option(
    "--threads", min=1, show_default=False,
    help="With --engine local: partitions scored at a time, on threads of this process "
         "(default: one per core, at most 4). The outputs are the same whatever the number.")]
Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", metavar="ADDRESS", show_default=False,
    help="With --engine dask: the address of a running Dask scheduler "
         "(tcp://host:8786).")]
SchedulerFile = Annotated[Path | None, typer.Option(
    "--scheduler-file", show_default=False,
    help="With --engine dask: the scheduler file a running Dask scheduler wrote "
         "(dask scheduler --scheduler-file F).")]


def _one_line(text: str) -> str:
    """``text`` on one line (a message may quote multi-line user data or library errors)."""
    return " ".join(text.split())


def _say_error(message: str) -> None:
    # The message may quote user data ("[[gate]]", log text): never markup.
    err_console.print(f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False,
                      soft_wrap=True)


def _os_error_message(exc: OSError) -> str:
    """``PATH: reason`` for an OS error (both paths of a rename, the strerror)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def _usage_message(exc: UsageError) -> str:
    # Typer validates values with pydantic, whose messages start "Value error, ".
    msg = exc.format_message().rstrip(".").replace(": Value error, ", ": ")
    if isinstance(exc, NoSuchOption) and exc.possibilities:
        msg = f"no such option: {exc.option_name} (did you mean {', '.join(exc.possibilities)}?)"
    ctx = exc.ctx
    hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    return f"{msg[:1].lower()}{msg[1:]}{hint}"


def _debug_requested(args: list[str] | None) -> bool:
    return _DEBUG[0] or "--debug" in (sys.argv[1:] if args is None else args)


#: Set by ``--debug`` (read by the error handler, which runs outside any context).
_DEBUG = [False]


def run_guarded(main: Callable[[], Any], args: list[str] | None = None) -> NoReturn:
    """Run ``main`` and exit with the documented status, whatever happens.

    Every failure leaves as one ``error: ...`` line on stderr: an
    :class:`FpiError` with its own status, a usage error or an OS error (a path
    the user named: not found, not writable, disk full) with status 2, an
    unexpected exception (a bug) with status 70 (``INTERNAL``), Ctrl-C with 130.
    Exit status 1 is reserved for a failed gate. ``--debug`` adds the traceback.
    """
    code: int
    try:
        rv = main()
        code = rv if isinstance(rv, int) else 0
        if code == ExitStatus.INTERRUPTED:  # Typer turned a Ctrl-C into this status
            err_console.print("interrupted")
    except FpiError as exc:
        code = _report(exc, str(exc), exc.exit_code, args)
    except UsageError as exc:
        if isinstance(exc, NoArgsIsHelpError):
            exc.show()
            code = ExitStatus.ERROR
        else:
            code = _report(exc, _usage_message(exc), ExitStatus.ERROR, args)
    except ClickException as exc:
        code = _report(exc, exc.format_message(), ExitStatus.ERROR, args)
    except (KeyboardInterrupt, Abort):
        err_console.print("interrupted")
        code = ExitStatus.INTERRUPTED
    except SystemExit as exc:
        # Typer's own exit on a closed stdout pipe (EPIPE) is sys.exit(1).
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BrokenPipeError:
        # The reader of stdout went away (`fpi ... --json | head`): nothing to tell it.
        sys.stdout = None
        code = ExitStatus.ERROR
    except OSError as exc:
        code = _report(exc, _os_error_message(exc), ExitStatus.ERROR, args)
    except RecursionError as exc:
        code = _report(exc, f"input nested too deeply to process ({exc}); this is a bug in "
                            "fpi, please report it (rerun with --debug for the traceback)",
                       ExitStatus.INTERNAL, args)
    except MemoryError as exc:
        code = _report(exc, "out of memory; try a smaller input or a machine with more memory",
                       ExitStatus.ERROR, args)
    except Exception as exc:  # a bug: say so, with its own status
        code = _report(exc, f"internal error: {type(exc).__name__}: {exc} (this is a bug in "
                            "fpi; rerun with --debug for the traceback)",
                       ExitStatus.INTERNAL, args)
    if code == ExitStatus.GATE_FAILED and not _GATE_EXIT[0]:
        code = ExitStatus.ERROR  # status 1 means a failed gate, and nothing else
    sys.exit(code)


#: Whether a failed gate asked for exit status 1 (the only road to it).
_GATE_EXIT = [False]


def _report(exc: BaseException, message: str, code: int, args: list[str] | None) -> int:
    if _debug_requested(args):
        err_console.print("".join(traceback.format_exception(exc)), markup=False,
                          highlight=False, soft_wrap=True, end="")
    _say_error(message)
    return int(code)


def gate_failed() -> NoReturn:
    """Exit with status 1: a CI gate failed (the only use of that status)."""
    _GATE_EXIT[0] = True
    raise typer.Exit(int(ExitStatus.GATE_FAILED))


class _FpiGroup(TyperGroup):
    """Runs every command under :func:`run_guarded`: one error contract for all of fpi."""

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        arg_list = list(args) if args is not None else None
        _DEBUG[0] = False
        _GATE_EXIT[0] = False

        def main() -> Any:
            return super(_FpiGroup, self).main(args=arg_list, prog_name=prog_name,
                                               complete_var=complete_var,
                                               standalone_mode=False, **extra)

        if not standalone_mode:  # used as a library (tests): plain exceptions
            return main()
        run_guarded(main, arg_list)


app = typer.Typer(
    cls=_FpiGroup,
    name="fpi",
    help="Find which component of a voice-assistant pipeline failed first, irrecoverably.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpi {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logging.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display on stderr (it is only "
                                                 "drawn on a terminal anyway).")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug, "quiet": quiet}
    _progress.QUIET = quiet
    _DEBUG[0] = debug
    handler = logging.StreamHandler()
    # Library warnings (e.g. a truncated input kept under --allow-truncated) read like
    # errors: "warning: ..."; --debug adds the logger names and debug records.
    handler.setFormatter(_LevelFormatter("%(levelname)s %(name)s: %(message)s" if debug
                                         else "%(levelname)s: %(message)s"))
    level = logging.DEBUG if debug else logging.WARNING
    # The handler's own level too: a library that sets its loggers' level (Dask's
    # distributed: info) would otherwise print its info records through it.
    handler.setLevel(level)
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _LevelFormatter(logging.Formatter):
    """Level names in lower case, as fpi's own ``error:`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)
