"""``fpi diagnose`` and ``fpi explain``: score a night, gate it, report it; explain one turn."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fpi.cli._app import (
    AllowTruncated,
    EngineName,
    Scheduler,
    SchedulerFile,
    Threads,
    Workers,
    app,
    err_console,
    gate_failed,
    out_console,
)
from fpi.cli._progress import progress_for


class Attribution(StrEnum):
    """``--attribution``: which turns get exact TreeSHAP contributions."""

    sample = "sample"
    all = "all"
    none = "none"


#: The options of ``fpi diagnose``, one alias each, so the command reads as its steps.
_Inputs = Annotated[list[Path], typer.Argument(
    help="Trace files, directories or globs (any form `fpi ingest` reads), one "
         "ingested Parquet file, or a partitioned directory (`fpi ingest --partitions`).",
    show_default=False)]
_Model = Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory "
                                      "(`fpi train --out`).", show_default=False)]
_Out = Annotated[Path, typer.Option("--out", "-o", help="Directory for predictions/, "
                                    "summary.json, report.md, report.html.",
                                    show_default=False)]
_Baseline = Annotated[Path | None, typer.Option(
    help="A previous run's summary.json: change per class, and `baseline` in gates.")]
_AllowOtherModel = Annotated[bool, typer.Option(
    "--allow-other-model", help="Accept a --baseline made with another model bundle "
                                "(its model id is recorded in the summary).")]
_Gate = Annotated[list[str] | None, typer.Option(
    "--gate", help="A CI gate, e.g. 'asr.estimate <= 0.06' or "
                   "'er.estimate <= baseline + 0.01' (repeatable).")]
_Gates = Annotated[Path | None, typer.Option(
    "--gates", help="TOML file of gates ([[gate]] tables with expr, name, warn).")]
_Junit = Annotated[Path | None, typer.Option(help="Also write the gates as JUnit XML.")]
_Redact = Annotated[bool, typer.Option(
    "--redact", help="Mask every log field that can carry user content (text, slot "
                     "values, entities, actions, rejected records) in every output, and "
                     "replace session ids by salted pseudonyms (anon-...).")]
_RedactSalt = Annotated[str | None, typer.Option(
    "--redact-salt", help="Salt of the --redact pseudonyms, stable across runs (prefer "
                          "the FPI_REDACT_SALT environment variable: arguments show in "
                          "process lists). Default: that variable, else a random salt "
                          "per run.", show_default=False)]
_AttributionMode = Annotated[Attribution, typer.Option(
    help="Exact TreeSHAP attribution: 'sample' (stratified sample), 'all' (every turn) "
         "or 'none'.")]
_AttributionSample = Annotated[int, typer.Option(
    min=6, help="Sample size for --attribution sample (stratified by predicted class, "
                "seeded: the same data give the same report).")]
_AttributionBudget = Annotated[float | None, typer.Option(
    min=0.1, help="Size the sample from this many seconds of attribution instead "
                  "(not reproducible across machines).")]
_Examples = Annotated[int, typer.Option(
    min=0, max=50, help="Example turns per failure point in the reports.")]
_MinSupport = Annotated[int, typer.Option(
    min=1, help="Smallest slice (turns) that is reported and tested.")]
_Seed = Annotated[int, typer.Option(help="Seed of the bootstrap and the sample.")]
_Format = Annotated[str | None, typer.Option(
    "--format", help="Force the input form (jsonl, parquet, csv, events); "
                     "detected per file by default.")]
_Json = Annotated[bool, typer.Option(
    "--json", help="Print summary.json on stdout (same exit codes).")]
_Github = Annotated[bool | None, typer.Option(
    "--github/--no-github", help="Append a verdict to $GITHUB_STEP_SUMMARY and print "
    "::error::/::warning:: lines for failed/warned gates (on stderr with --json). "
    "Default: on when GITHUB_ACTIONS=true.", show_default=False)]


@app.command()
def diagnose(
    inputs: _Inputs,
    model: _Model,
    out: _Out,
    baseline: _Baseline = None,
    allow_other_model: _AllowOtherModel = False,
    gate: _Gate = None,
    gates: _Gates = None,
    junit: _Junit = None,
    redact: _Redact = False,
    redact_salt: _RedactSalt = None,
    attribution: _AttributionMode = Attribution.sample,
    attribution_sample: _AttributionSample = 1200,
    attribution_budget: _AttributionBudget = None,
    examples: _Examples = 3,
    min_support: _MinSupport = 50,
    seed: _Seed = 0,
    input_format: _Format = None,
    as_json: _Json = False,
    allow_truncated: AllowTruncated = False,
    github: _Github = None,
    engine: EngineName = "local",
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    threads: Threads = None,
) -> None:
    """Diagnose a night of logs: failure rates with intervals, slices, attribution, gates.

    Writes DIR/predictions/part-NNNNN.parquet (one per partition), DIR/summary.json,
    DIR/report.md and DIR/report.html. --engine dask scores the partitions on a Dask
    cluster (docs/scale.md); the summary is the same whatever the engine.
    Exit codes: 0 every gate passed (or no gates), 1 a gate failed, 2 a usage, input,
    output or model error, 70 an internal error (a bug in fpi).
    """
    from fpi.diagnose.options import DiagnoseOptions
    from fpi.diagnose.run import diagnose as run
    from fpi.engine import engine_from_options

    opts = DiagnoseOptions(
        baseline=baseline, gates=gate or (), gates_file=gates, junit=junit,
        attribution=attribution.value, attribution_sample=attribution_sample,
        attribution_budget=attribution_budget, redact=redact, redact_salt=redact_salt,
        examples=examples, min_support=min_support, seed=seed,
        allow_other_model=allow_other_model, format=input_format,
        allow_truncated=allow_truncated)
    with (engine_from_options(engine, workers, scheduler, scheduler_file,
                              threads=threads) as runner,
          progress_for(err_console) as progress):
        result = run(inputs, model=model, out_dir=out, options=replace(opts, progress=progress),
                     engine=runner)
    _show(result.summary, out, as_json, github)


def _show(summary: dict[str, Any], out: Path, as_json: bool, github: bool | None) -> None:
    """The verdict on the terminal (and ``--json``, GitHub); exit 1 if a gate failed."""
    from fpi.report import render_json, render_terminal

    render_terminal(summary, err_console)
    err_console.print(f"reports in {escape(str(out))}/ (report.md, report.html, summary.json)")
    if as_json:
        out_console.print(render_json(summary), end="", markup=False, highlight=False)
    _github(summary, github, as_json)
    if summary["gate_status"] == "fail":
        for g in (g for g in summary["gates"] if g["status"] == "FAIL"):
            err_console.print(f"[bold red]gate failed:[/] {escape(g['name'])}: "
                              f"{escape(g['message'])}", soft_wrap=True)
        gate_failed()


def _github(summary: dict[str, object], flag: bool | None, as_json: bool) -> None:
    """GitHub Actions: the job summary verdict and one annotation per failed/warned gate."""
    from fpi import ci
    from fpi.errors import FpiError

    if not ci.github_enabled(flag, os.environ):
        return
    try:  # a side output: the reports are written and the gates decide the exit status
        if ci.append_step_summary(ci.step_summary(summary), os.environ) is None:
            err_console.print("warning: --github: GITHUB_STEP_SUMMARY is not set; "
                              "no job summary written")
    except FpiError as exc:
        err_console.print(f"warning: {escape(str(exc))}", soft_wrap=True)
    for line in ci.gate_annotations(summary):
        typer.echo(line, err=as_json)  # stdout, unless it carries the JSON


@app.command()
def explain(
    inputs: Annotated[list[Path], typer.Argument(help="Trace files holding the turn's session.",
                                                 show_default=False)],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.",
                                        show_default=False)],
    session: Annotated[str, typer.Option(
        "--session", help="The turn's session_id, or its anon-... pseudonym from a redacted "
                          "report (with the salt it was made with).", show_default=False)],
    turn: Annotated[int, typer.Option("--turn", min=0, help="The turn's turn_index.",
                                      show_default=False)],
    top: Annotated[int, typer.Option(min=1, max=50, help="Features to list.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")
                       ] = False,
    redact_salt: Annotated[str | None, typer.Option(
        "--redact-salt", help="Salt of a pseudonym given to --session (default: the "
                              "FPI_REDACT_SALT environment variable).",
        show_default=False)] = None,
    allow_truncated: AllowTruncated = False,
) -> None:
    """Explain one turn's call: class probabilities, each component's contribution, top features.

    Contributions are exact TreeSHAP values on the model's log-odds scale.
    """
    from fpi.diagnose.explanation import explain as run

    e = run(inputs, model=model, session_id=session, turn_index=turn, top=top,
            redact_salt=redact_salt, allow_truncated=allow_truncated)
    if as_json:
        out_console.print(json.dumps(e.to_dict(), indent=2, ensure_ascii=False), markup=False,
                          highlight=False)
        return
    t = e.turn
    out_console.print(f"[bold]{escape(e.session_id)}[/] turn {e.turn_index}: "
                      f"[bold]{e.predicted}[/] (p = {e.probabilities[e.predicted]:.3f})")
    out_console.print(f"  heard      {escape(repr(t['heard']['text']))} "
                      f"(runner-up {escape(repr(t['heard']['runner_up']))})")
    u = t["understood"]
    out_console.print(f"  understood {escape(str(u['domain']))} / {escape(str(u['intent']))}")
    out_console.print(f"  answered   {escape(str(t['answered']['status']))}: "
                      f"{escape(repr(t['answered']['response']))}")
    probs = Table(title="class probabilities and contributions (log-odds)",
                  title_justify="left")
    probs.add_column("class")
    probs.add_column("p", justify="right")
    comps = list(next(iter(e.components.values())))
    for c in comps:
        probs.add_column(c, justify="right")
    for cls, p in e.probabilities.items():
        style = "bold" if cls == e.predicted else None
        probs.add_row(cls, f"{p:.3f}", *(f"{e.components[cls][c]:+.2f}" for c in comps),
                      style=style)
    out_console.print(probs)
    feats = Table(title=f"top features toward {e.predicted}", title_justify="left")
    for col in ("feature", "component", "value", "contribution"):
        feats.add_column(col, justify="right" if col == "contribution" else "left")
    for f in e.features:
        feats.add_row(f["name"], f["component"], escape(str(f["value"])),
                      f"{f['contribution']:+.3f}")
    out_console.print(feats)
