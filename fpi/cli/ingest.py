"""``fpi ingest``: read traces in any supported form into one canonical Parquet file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fpi.cli._app import (
    AllowTruncated,
    EngineName,
    Scheduler,
    SchedulerFile,
    Strict,
    Workers,
    app,
    err_console,
    out_console,
)
from fpi.cli._progress import progress_for
from fpi.engine import engine_from_options
from fpi.progress import bytes_callback

if TYPE_CHECKING:
    from fpi.ingest import IngestReport

#: The input forms of ``--format`` (fpi.ingest.READ_FORMATS, spelled out so that ``fpi --help``
#: need not import the reader and Polars; tests/test_api.py checks they agree).
INPUT_FORMS = ("jsonl", "parquet", "csv", "events")


#: The options of ``fpi ingest``, one alias each, so the command reads as its steps.
_Inputs = Annotated[list[str], typer.Argument(
    help="Trace files, directories (searched recursively) or glob patterns.",
    show_default=False, metavar="INPUT")]
_Output = Annotated[Path | None, typer.Option(
    "--output", "-o", show_default=False,
    help="Canonical Parquet file to write (default: turns.parquet), or with "
         "--partitions the directory of parts (default: turns).")]
_Format = Annotated[str | None, typer.Option(
    "--format", "-f",
    help=f"Force the input form: {', '.join(INPUT_FORMS)} (default: detected "
         "per file from its content and name).")]
_Rejects = Annotated[Path | None, typer.Option(
    "--rejects",
    help="Where to write rejected records (default: next to the output, "
         "turns.parquet -> turns.rejects.jsonl).")]
_Redact = Annotated[bool, typer.Option(
    "--redact",
    help="Write the rejects file without log content: each rejected record's raw text "
         "becomes \\[redacted] and its message the field it names plus the rule's "
         "description (as under `fpi diagnose --redact`). The Parquet output is "
         "unchanged.")]
_Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
_Partitions = Annotated[int | None, typer.Option(
    "--partitions", min=1, max=100_000, show_default=False,
    help="Write a directory of this many parts, part-NNNNN.parquet (each "
         "sorted, whole sessions chosen by a stable hash of session_id) "
         "plus a manifest, _partitions.json, for scoring on a cluster.")]
_Threads = Annotated[int, typer.Option(
    "--threads", min=1, max=64,
    help="Blocks parsed and checked at once. 1 costs about 5% less CPU per turn on "
         "2 cores (two parses at once slow each other) and takes about 1.5x the wall "
         "time: for many files ingested side by side.")]


@app.command("ingest")
def ingest_command(
    inputs: _Inputs,
    output: _Output = None,
    format: _Format = None,
    rejects: _Rejects = None,
    strict: Strict = False,
    redact: _Redact = False,
    as_json: _Json = False,
    allow_truncated: AllowTruncated = False,
    partitions: _Partitions = None,
    threads: _Threads = 2,
    engine: EngineName = "local",
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
) -> None:
    """Read turn records or stage events into one canonical Parquet file.

    Reads turn JSON Lines (plain, .gz or .zst), Parquet, CSV with dotted columns
    (asr.confidence) and stage-event JSON Lines, from files, directories and
    globs. Writes one row per turn, sorted by session and turn, to --output.
    Records that break a rule of the trace format are set aside in the rejects
    file with their file, line, rule and raw text; the run goes on without them.

    A truncated or corrupt file (.gz, .zst, Parquet) stops the run with status 2
    unless --allow-truncated is given.

    With --partitions N the output is a directory of N parts instead (see
    docs/scale.md); --engine dask runs the per-file and per-part work on a Dask
    cluster, whose workers must all reach the inputs and the output directory.

    Exit status: 0 ok, 2 bad input (nothing usable), 3 rejects under --strict.
    """
    from fpi.ingest import ingest, strict_error
    from fpi.redact import redact_reject

    common: dict[str, Any] = {"format": format, "rejects_path": rejects,
                              "allow_truncated": allow_truncated, "threads": threads,
                              "redact_rejects": redact_reject if redact else None}
    if partitions is None:
        _engine_needs_partitions(engine, workers, scheduler, scheduler_file)
        with progress_for(err_console) as progress:
            report = ingest(inputs, output or Path("turns.parquet"),
                            progress=bytes_callback(progress), **common)
    else:
        from fpi.ingest.partition import ingest_partitioned

        with engine_from_options(engine, workers, scheduler, scheduler_file) as runner:
            report = ingest_partitioned(inputs, output or Path("turns"), partitions,
                                        engine=runner, **common)
    render(report, as_json)
    if strict and report.rejected:
        raise strict_error(report, f"good records were written to {report.output_path}, "
                                   f"rejects to {report.rejects_path}")


def _engine_needs_partitions(engine: str, workers: int | None, scheduler: str | None,
                             scheduler_file: Path | None) -> None:
    """Refuse the engine options without --partitions (one file is written here)."""
    given = [flag for flag, value in (("--engine", engine != "local" or None),
                                      ("--workers", workers), ("--scheduler", scheduler),
                                      ("--scheduler-file", scheduler_file))
             if value is not None]
    if given:
        raise typer.BadParameter("needs --partitions", param_hint=given[0])


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
