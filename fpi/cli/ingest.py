"""``fpi ingest``: read traces in any supported form into one canonical Parquet file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fpi.cli._app import AllowTruncated, Strict, app, err_console, out_console
from fpi.cli._progress import progress_for
from fpi.progress import bytes_callback

if TYPE_CHECKING:
    from fpi.ingest import IngestReport

#: The input forms of ``--format`` (fpi.ingest.READ_FORMATS, spelled out so that ``fpi --help``
#: need not import the reader and Polars; tests/test_api.py checks they agree).
INPUT_FORMS = ("jsonl", "parquet", "csv", "events")


@app.command("ingest")
def ingest_command(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Trace files, directories (searched recursively) or glob patterns.",
                       show_default=False, metavar="INPUT"),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Canonical Parquet file to write.")
    ] = Path("turns.parquet"),
    format: Annotated[
        str | None,
        typer.Option("--format", "-f",
                     help=f"Force the input form: {', '.join(INPUT_FORMS)} (default: detected "
                          "per file from its content and name)."),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option("--rejects",
                     help="Where to write rejected records (default: next to the output, "
                          "turns.parquet -> turns.rejects.jsonl)."),
    ] = None,
    strict: Strict = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
    allow_truncated: AllowTruncated = False,
) -> None:
    """Read turn records or stage events into one canonical Parquet file.

    Reads turn JSON Lines (plain, .gz or .zst), Parquet, CSV with dotted columns
    (asr.confidence) and stage-event JSON Lines, from files, directories and
    globs. Writes one row per turn, sorted by session and turn, to --output.
    Records that break a rule of the trace format are set aside in the rejects
    file with their file, line, rule and raw text; the run goes on without them.

    A truncated or corrupt file (.gz, .zst, Parquet) stops the run with status 2
    unless --allow-truncated is given.

    Exit status: 0 ok, 2 bad input (nothing usable), 3 rejects under --strict.
    """
    from fpi.ingest import ingest, strict_error

    with progress_for(err_console) as progress:
        report = ingest(inputs, output, format=format, rejects_path=rejects,
                        progress=bytes_callback(progress), allow_truncated=allow_truncated)
    render(report, as_json)
    if strict and report.rejected:
        raise strict_error(report, f"good records were written to {report.output_path}, "
                                   f"rejects to {report.rejects_path}")


def render(report: IngestReport, as_json: bool) -> None:
    """Summary on stderr (rich); with ``as_json`` the same summary as JSON on stdout."""
    if as_json:
        data = report.to_dict()
        data.pop("rejects", None)
        out_console.print(json.dumps(data, indent=2), markup=False, highlight=False)
        sys.stdout.flush()
    head = Table.grid(padding=(0, 2))
    head.add_row("turns", f"{report.turns_kept:,}")
    head.add_row("sessions", f"{report.sessions:,}")
    head.add_row("records read", f"{report.records_read:,}")
    head.add_row("rejected", f"{report.rejected:,}")
    head.add_row("output", str(report.output_path))
    if report.rejected:
        head.add_row("rejects", str(report.rejects_path))
    err_console.print(head)
    stages = Table(title="stage present", title_justify="left", box=None)
    for s in report.stage_presence:
        stages.add_column(s, justify="right")
    stages.add_row(*[f"{v:.0%}" for v in report.stage_presence.values()])
    err_console.print(stages)
    labels = Table(title="labels", title_justify="left", box=None)
    for c in report.label_counts:
        labels.add_column(c, justify="right")
    labels.add_row(*[f"{n:,}" for n in report.label_counts.values()])
    err_console.print(labels)
    if report.rejects_by_rule:
        rules = Table(title="rejects by rule", title_justify="left", box=None)
        rules.add_column("rule")
        rules.add_column("records", justify="right")
        for rule, n in report.rejects_by_rule.items():
            rules.add_row(rule, f"{n:,}")
        err_console.print(rules)
