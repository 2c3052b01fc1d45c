"""``fpi trend``: many nights' summary.json files into trend.md, trend.html and trend.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fpi.cli._app import app, err_console, out_console
from fpi.cli._progress import progress_for


@app.command()
def trend(
    inputs: Annotated[list[str], typer.Argument(
        help="summary.json files, directories holding them (searched below when not "
             "directly inside) or globs, in any order.", show_default=False,
        metavar="SUMMARIES_OR_DIRS")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for trend.md, trend.html "
                                      "and trend.json.", show_default=False)],
    window: Annotated[int, typer.Option(
        min=1, help="Band: this many previous nights of the same model.")] = 7,
    min_history: Annotated[int, typer.Option(
        min=1, help="Test a night only with at least this many previous nights.")] = 3,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip unreadable or foreign summaries with a warning instead of "
                           "stopping (exit 2).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Also print trend.json on stdout.")
                       ] = False,
) -> None:
    """Rates over many nights: each class with its interval per night, steps outside the band.

    Nights are ordered by their logs' time range (summary run.time_range; older
    summaries by file modification time, with a warning). A night *steps* when its
    rate leaves the band of the previous --window nights of the same model and its
    interval excludes their median; a model change is marked. Writes DIR/trend.md,
    DIR/trend.html and DIR/trend.json as one set.

    Exit codes: 0 written, 2 a bad input (not JSON, not a summary, another schema
    version) unless --skip-bad, or no usable summary.
    """
    from fpi.report.trend import render_trend_json, short_id, write_trend
    from fpi.trend import build_trend

    with progress_for(err_console) as progress:
        result = build_trend(inputs, window=window, min_history=min_history,
                             skip_bad=skip_bad, progress=progress)
    doc = result.to_dict()
    write_trend(doc, out)  # its warnings were logged ("warning: ...") by build_trend
    nights = doc["nights"]
    err_console.print(f"[bold]fpi trend[/]: {len(nights)} nights, {escape(nights[0]['label'])} "
                      f"to {escape(nights[-1]['label'])}, {len(doc['models'])} model(s), "
                      f"{len(doc['steps'])} step(s)")
    if doc["steps"]:
        t = Table(title="Latest steps", title_justify="left")
        for col in ("night", "class", "direction", "rate", "band", "model"):
            t.add_column(col)
        for s in doc["steps"][-10:][::-1]:
            b = s["band"]
            t.add_row(escape(s["night"]), s["class"], s["direction"],
                      f"{100 * s['estimate']:.2f}%",
                      f"[{100 * b['low']:.2f}%, {100 * b['high']:.2f}%]", short_id(s["model_id"]))
        err_console.print(t)
    err_console.print(f"trend in {escape(str(out))}/ (trend.md, trend.html, trend.json)")
    if as_json:
        out_console.print(render_trend_json(doc), end="", markup=False, highlight=False)
