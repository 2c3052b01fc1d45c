"""The Typer application, its global options and the one place errors are caught."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from fpi import __version__
from fpi.cli import _progress
from fpi.errors import ExitStatus, FpiError

#: Progress, summaries and errors go to stderr; results go to stdout or files.
err_console = Console(stderr=True, highlight=False)
#: Results (``--json``) go to stdout.
out_console = Console(highlight=False, soft_wrap=True)


class _FpiGroup(TyperGroup):
    """Turns library errors into one ``error: ...`` line and a documented exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FpiError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            # The message may quote user data ("[[gate]]", log text): never markup.
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None


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
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
