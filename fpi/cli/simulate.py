"""``fpi simulate``: write simulated traces (and their truth) in any input form."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fpi.cli._app import app, err_console, out_console
from fpi.cli._progress import progress_for
from fpi.errors import InputError

if TYPE_CHECKING:
    from fpi.simulate import Labels


class LabelsKept(StrEnum):
    """``--labels``: which labels the simulated traces carry."""

    _value_: Labels
    both = "both"
    gold = "gold"
    none = "none"


@app.command()
def simulate(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write; the format follows the suffix.",
                     dir_okay=False),
    ] = None,
    turns: Annotated[int, typer.Option("--turns", "-n", min=0, help="Number of turns.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Random seed (same seed, same file).")]
    = 0,
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Baseline or a named regression (see "
                          "--list-profiles).")
    ] = "baseline",
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="jsonl, jsonl.gz, jsonl.zst, parquet, csv or events "
                     "(default: from the suffix)."),
    ] = None,
    labels: Annotated[
        LabelsKept, typer.Option("--labels", help="both (gold + second annotator), gold, or none.")
    ] = LabelsKept.both,
    assistant: Annotated[
        str, typer.Option("--assistant", "-a", help="Assistant style: language, phrasing, "
                          "confidence scales, logged fields (see --list-assistants).")
    ] = "default",
    list_profiles: Annotated[
        bool, typer.Option("--list-profiles", help="List the profiles and exit.")
    ] = False,
    list_assistants: Annotated[
        bool, typer.Option("--list-assistants", help="List the assistant styles and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the truth (counts, rates) as JSON.")
    ] = False,
) -> None:
    """Simulate voice-assistant traces with known failure points.

    A causal simulator: users on devices in noisy rooms pursue goals; ASR, NLU,
    entity resolution and the result service each act on the previous stage's
    output; the gold label is the earliest stage whose error was not recovered.
    Writes PATH and PATH.truth.json (true per-class counts and rates, by device
    type and domain).

    Example: fpi simulate -o night.jsonl.gz --turns 10000 --seed 7 --profile asr_farfield
    """
    from fpi.simulate import PROFILES, STYLES, write_simulation

    if list_profiles or list_assistants:
        table = Table("profile" if list_profiles else "assistant", "what changes", box=None)
        for name, description in (
            [(prof.name, prof.description) for prof in PROFILES.values()] if list_profiles
            else [(style.name, style.description) for style in STYLES.values()]
        ):
            table.add_row(name, description)
        out_console.print(table)
        return
    if output is None:
        raise InputError("missing --output PATH (e.g. -o night.jsonl.gz)")
    with progress_for(err_console) as progress:
        summary = write_simulation(
            output, turns=turns, seed=seed, profile=profile, format=format,
            labels=labels.value, progress=progress,
            assistant=assistant,
        )
    rates = ", ".join(f"{k} {v:.1%}" for k, v in summary.rates.items())
    err_console.print(
        f"wrote {summary.turns:,} turns in {summary.sessions:,} sessions to {summary.path} "
        f"({summary.format}); truth in {summary.truth_path}"
    )
    err_console.print(f"true failure points: {rates}")
    if as_json:
        out_console.print_json(json.dumps(summary.truth))
