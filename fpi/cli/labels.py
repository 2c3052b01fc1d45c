"""``fpi queue`` and ``fpi labels ...``: the labels loop (docs/labels.md)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fpi.cli._app import Jobs, app, err_console, out_console
from fpi.errors import InputError

labels_app = typer.Typer(
    name="labels", no_args_is_help=True, rich_markup_mode="rich",
    help="Labels in and out of annotation tools, agreement, measurement, label errors.")
app.add_typer(labels_app)

_POLICY_HELP = "How several annotators' labels of a turn become one: 'majority', 'unanimous' "\
               "or 'gold:NAME'."


class Uncertainty(StrEnum):
    """``--uncertainty``: how the queue ranks the least certain turns."""

    margin = "margin"
    entropy = "entropy"


class IntervalMethod(StrEnum):
    """``--method`` of ``fpi labels measure``."""

    dirichlet = "dirichlet"
    bootstrap = "bootstrap"


def _read_logs(inputs: list[Path]) -> Any:
    from fpi.cli.train import _read

    frame, _ = _read(inputs, allow_truncated=False)
    return frame


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


@app.command()
def queue(
    inputs: Annotated[list[Path], typer.Argument(
        help="Unlabelled trace files, directories or globs (any input form).",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Queue directory to write (task "
                                      "files, Label Studio import and config).",
                                      show_default=False)],
    budget: Annotated[int, typer.Option("--budget", "-n", help="Turns to annotate.",
                                        show_default=False)],
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Model bundle: without it the queue is a stratified random "
        "sample (a first batch).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed of every draw.")] = 0,
    random_share: Annotated[float, typer.Option(
        help="Share of the budget drawn uniformly at random (known inclusion probabilities; "
             "feeds `fpi labels measure`).")] = 0.25,
    coverage_per_class: Annotated[int | None, typer.Option(
        help="Turns per predicted class in the coverage stratum [default: 5% of the budget].",
        show_default=False)] = None,
    slice_share: Annotated[float, typer.Option(
        help="Share of the budget for turns of the slices the model's diagnosis flags "
             "(split evenly over the findings).")] = 0.1,
    max_flags: Annotated[int, typer.Option(
        help="At most this many flagged slice findings get turns (largest excess first).")
    ] = 10,
    slices: Annotated[Path | None, typer.Option(
        "--slices", help="An `fpi diagnose` summary.json whose flagged slices to target "
        "[default: the model's own diagnosis of these logs].", show_default=False)] = None,
    cluster_cap: Annotated[int, typer.Option(
        help="At most this many targeted turns per cluster of near-identical turns.")] = 2,
    uncertainty: Annotated[Uncertainty, typer.Option(
        help="Uncertainty score: 'margin' (top two classes) or 'entropy'.")
    ] = Uncertainty.margin,
    context_turns: Annotated[int, typer.Option(
        min=0, help="Turns either side shown as session context.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the queue manifest as JSON "
                                                        "on stdout.")] = False,
) -> None:
    """Choose turns to annotate and write their task files.

    The mix: a uniform random stratum (known inclusion probabilities, for unbiased
    measurement), the least certain turns of every predicted class (coverage), turns
    of the slices flagged for excess failures (slice), then the least certain turns
    overall (margin or entropy), with at most --cluster-cap near-identical turns.
    Every task carries its session context. Writes queue.parquet, queue.json,
    tasks.jsonl, tasks.csv, labelstudio_tasks.json and labelstudio_config.xml into
    --out, as one set.
    """
    from fpi.labels.export import write_queue
    from fpi.labels.queue import QueueOptions, build_queue, read_flagged_slices
    from fpi.model import load_bundle

    opts = QueueOptions(budget, seed, random_share, coverage_per_class, cluster_cap,
                        uncertainty.value, slice_share, max_flags)
    opts.check()
    if slices is not None and model is None:
        raise InputError(f"--slices {slices}: flagged slices are targeted only with --model "
                         f"(without a model the queue is a stratified random sample)")
    flags = read_flagged_slices(slices) if slices is not None else None
    bundle = load_bundle(model) if model is not None else None
    turns = _read_logs(inputs)
    result = build_queue(turns, opts, bundle, flags=flags)
    path = write_queue(result, turns, out, context_turns)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    err_console.print(f"wrote {escape(str(path))}: {result.frame.height} of "
                      f"{result.population:,} turns ({counts})")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))


@labels_app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(
        help="Label Studio JSON exports (.json), or generic .jsonl / .csv files with "
             "session_id, turn_index, annotator, failure_point.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Labels Parquet to write.",
                                         show_default=False)],
    logs: Annotated[list[Path] | None, typer.Option(
        "--logs", help="Trace files: labels of turns not in them are rejected "
        "(repeatable).", show_default=False)] = None,
    rejects: Annotated[Path | None, typer.Option(
        help="Rejects file [default: <output stem>.rejects.jsonl beside the output].",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on "
                                                        "stdout.")] = False,
) -> None:
    """Read labels from annotation files into one labels file.

    Keyed by (session_id, turn_index, annotator). Rows with a missing key, an unknown
    class, conflicting duplicates or (with --logs) an unknown turn go to the rejects
    file with file, line, rule and message; extra columns (failure_point_2, comment)
    are kept in an 'extra' column.
    """
    from fpi.labels.importer import import_labels

    turns = _read_logs(logs) if logs else None
    result = import_labels(files, output, turns=turns, rejects_path=rejects)
    by_rule = ", ".join(f"{k} {v}" for k, v in result.rejects_by_rule.items()) or "none"
    err_console.print(
        f"wrote {escape(str(result.output_path))}: {result.labels.height} labels from "
        f"{len(result.by_annotator)} annotator(s); {len(result.rejects)} rejected ({by_rule})"
        + (f", see {escape(str(result.rejects_path))}" if result.rejects else ""))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))


def _agreement_tables(doc: dict[str, Any]) -> list[Table]:
    from fpi.schema import CLASSES

    pairs = Table(title="Cohen's kappa per pair", title_justify="left")
    for col in ("a", "b", "turns", "agreement", "kappa"):
        pairs.add_column(col, justify="left" if col in "ab" else "right")
    for p in doc["pairs"]:
        pairs.add_row(escape(p["a"]), escape(p["b"]), str(p["n"]),
                      _f(p["observed_agreement"]), _f(p["cohen_kappa"]))
    f1 = Table(title=f"per-class F1 against {doc['reference']}", title_justify="left")
    f1.add_column("annotator")
    f1.add_column("turns", justify="right")
    for c in (*CLASSES, "macro"):
        f1.add_column(c, justify="right")
    for name, a in doc["per_annotator"].items():
        f1.add_row(escape(name), str(a["n"]), *(_f(a["per_class"][c]["f1"]) for c in CLASSES),
                   _f(a["macro_f1"]))
    conf = Table(title="confusion between annotators (pairs of labels of one turn)",
                 title_justify="left")
    conf.add_column("")
    for c in CLASSES:
        conf.add_column(c, justify="right")
    for c, row in zip(CLASSES, doc["confusion"], strict=True):
        conf.add_row(c, *(str(v) for v in row))
    return [pairs, f1, conf]


@labels_app.command("agreement")
def agreement_command(
    labels: Annotated[Path, typer.Argument(help="Labels file from `fpi labels import`.",
                                           show_default=False)],
    gold: Annotated[str | None, typer.Option(
        help="Score each annotator against this one instead of the majority of the others.",
        show_default=False)] = None,
    adjudication: Annotated[Path | None, typer.Option(
        help="Adjudication queue of disagreements (.csv or .jsonl) [default: <labels "
             "stem>.adjudication.csv beside the labels].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agreement as JSON on "
                                                        "stdout.")] = False,
) -> None:
    """How much annotators agree, and the turns they disagree on.

    Cohen's kappa per pair, Fleiss' kappa, per-class F1 of each annotator against the
    others (or --gold), the confusion between annotators, and an adjudication queue
    (disagreements, with empty annotator/failure_point columns to fill in and import).
    """
    from fpi.labels.agreement import agreement, write_disagreements
    from fpi.labels.importer import read_labels_file

    result = agreement(read_labels_file(labels), gold=gold)
    adj = adjudication or labels.with_name(labels.name.removesuffix(".parquet")
                                           + ".adjudication.csv")
    write_disagreements(result.disagreements, adj)
    doc = result.to_dict()
    err_console.print(f"{doc['n_turns']} turns, {doc['n_turns_multiply_labelled']} labelled "
                      f"more than once; {doc['disagreements']} disagreements written to "
                      f"{escape(str(adj))}")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for table in _agreement_tables(doc):
        out_console.print(table)
    out_console.print(f"Fleiss' kappa {_f(doc['fleiss_kappa'])}")


def _interval(m: dict[str, Any]) -> str:
    if m["estimate"] is None:
        return "-"
    return f"{m['estimate']:.3f} [{_f(m['low'])}, {_f(m['high'])}]"


@labels_app.command("measure")
def measure_command(
    queue_dir: Annotated[Path, typer.Argument(help="Queue directory from `fpi queue`.",
                                              show_default=False)],
    labels: Annotated[Path, typer.Option("--labels", help="Labels file from `fpi labels "
                                         "import`.", show_default=False)],
    label_policy: Annotated[str, typer.Option(help=_POLICY_HELP)] = "majority",
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Measure this model instead of the queue's (needs --logs).",
        show_default=False)] = None,
    logs: Annotated[list[Path] | None, typer.Option(
        "--logs", help="The queue's trace files, to score with --model (repeatable).",
        show_default=False)] = None,
    level: Annotated[float, typer.Option(help="Interval coverage.")] = 0.95,
    method: Annotated[IntervalMethod, typer.Option(
        help="Interval method: 'dirichlet' (Jeffreys posterior per stratum) or 'bootstrap' "
             "(stratified).")] = IntervalMethod.dirichlet,
    replicates: Annotated[int, typer.Option(min=100, help="Posterior draws or bootstrap "
                                                          "replicates.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON on "
                                                        "stdout.")] = False,
) -> None:
    """Estimate the model's per-class precision, recall and F1 on the queue's night.

    Uses only the queue's random stratum (known inclusion probabilities): weighted
    ratio estimators with intervals that follow the sampling design, so the figures
    describe production traffic, not the turns picked for being hard.
    """
    from fpi.errors import InputError
    from fpi.labels.export import read_queue
    from fpi.labels.importer import read_labels_file
    from fpi.labels.measure import measure
    from fpi.labels.resolve import resolve_labels
    from fpi.schema import CLASSES

    q = read_queue(queue_dir)
    resolved = resolve_labels(read_labels_file(labels), label_policy)
    predictions = None
    if model is not None:
        if not logs:
            raise InputError("--model needs --logs: the trace files the queue was drawn from")
        predictions = _predict(model, logs)
    result = measure(q, resolved, predictions=predictions, level=level,
                     replicates=replicates, seed=seed, method=method.value)
    doc = result.to_dict()
    err_console.print(f"{doc['labelled']} of {doc['sampled']} randomly sampled turns labelled "
                      f"(night of {doc['population']:,} turns)")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title=f"model on production traffic ({level:.0%} intervals)",
                  title_justify="left")
    for col in ("class", "rate", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for c in CLASSES:
        m = doc["per_class"][c]
        table.add_row(c, _interval(m["rate"]), _interval(m["precision"]),
                      _interval(m["recall"]), _interval(m["f1"]))
    table.add_row("macro", "", "", "", _interval(doc["macro_f1"]), style="bold")
    out_console.print(table)


def _predict(model: Path, logs: list[Path]) -> Any:
    import polars as pl

    from fpi.features import build_features
    from fpi.model import load_bundle

    bundle = load_bundle(model)
    turns = _read_logs(logs)
    bundle.check_compatible(turns)
    return turns.select("session_id", "turn_index").with_columns(
        bundle.predict(build_features(turns)).alias("predicted")).with_columns(
        pl.col("predicted").cast(pl.String))


class FixChoice(StrEnum):
    """What ``fpi labels check --fix`` does to the estimated wrong labels."""

    drop = "drop"
    relabel = "relabel"
    weight = "weight"


class PruneChoice(StrEnum):
    """Which labels ``--fix`` treats (:meth:`fpi.labels.check.LabelCheck.prune`)."""

    by_class = "class"
    confident = "confident"
    rank = "rank"
    suspects = "suspects"


_Fix = Annotated[FixChoice | None, typer.Option(
    help="Write a cleaned label set (--fixed): drop the estimated wrong labels, relabel "
         "them to the suggested class (those suggested with at least --relabel-min; the "
         "rest dropped), or weight them down (p(label) / (p(label) + p(suggested))).",
    show_default=False)]
_Fixed = Annotated[Path | None, typer.Option(
    help="With --fix: the cleaned labels Parquet to write (for `fpi train --labels`; "
         "its weight column is used as the training weights).", show_default=False)]
_FixBy = Annotated[PruneChoice, typer.Option(
    help="Which labels --fix treats: 'class' (each label's estimated count of errors, "
         "least confident first, as cleanlab prunes), 'confident' (suspects whose label "
         "has out-of-fold probability below --max-confidence), 'rank' (the estimated count "
         "from the top of the ranking) or 'suspects' (every suspect).")]
_RelabelMin = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="--fix relabel: least out-of-fold probability of the "
                           "suggested class to relabel.")]
_MaxConfidence = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="--fix-by confident: a suspect is treated if the out-of-fold "
                           "probability of its label is below this.")]
_Quota = Annotated[float, typer.Option(
    min=0.0, help="--fix-by class or rank: treat this many times the "
                "estimated count of wrong labels.")]
_Repeats = Annotated[int, typer.Option(
    min=1, help="Fold assignments averaged (seeds --seed, --seed + 1, ...): steadier "
                "out-of-fold probabilities for that many times the fold models.")]


def _write_fixed(frame: Any, path: Path) -> None:
    from fpi.files import atomic_path

    with atomic_path(path) as tmp:  # OutputError (one line, exit 2) if it cannot
        frame.write_parquet(tmp)


def _write_report(result: Any, turns: Any, doc: dict[str, Any], report: Path, top: int) -> None:
    from fpi.errors import InputError
    from fpi.files import write_text_atomic
    from fpi.labels.report import render_markdown, suspects_with_context

    text = (render_markdown(result, suspects_with_context(result, turns, top))
            if report.suffix.lower() == ".md" else json.dumps(doc, indent=2) + "\n")
    try:
        write_text_atomic(report, text)
    except OSError as exc:
        raise InputError(f"cannot write the report to {report}: {exc}") from exc


@labels_app.command("check")
def check_command(
    inputs: Annotated[list[Path], typer.Argument(
        help="Trace files, directories or globs (the turns the labels belong to).",
        show_default=False)],
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Labels file from `fpi labels import` [default: the logs' own "
        "label.failure_point].", show_default=False)] = None,
    label_policy: Annotated[str, typer.Option(help=_POLICY_HELP)] = "majority",
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Use this bundle's features and tree settings for the fold "
        "models.", show_default=False)] = None,
    folds: Annotated[int, typer.Option(help="Folds (whole sessions per fold).")] = 5,
    seed: Annotated[int, typer.Option(help="Fold assignment and model seed.")] = 0,
    repeats: _Repeats = 3,
    threads: Annotated[int, typer.Option(min=1, help="LightGBM threads.")] = 1,
    jobs: Jobs = None,
    top: Annotated[int, typer.Option(min=1, help="Suspects shown and reported.")] = 20,
    report: Annotated[Path | None, typer.Option(
        help="Also write a report: Markdown (.md) or JSON (.json).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on "
                                                        "stdout.")] = False,
    fix: _Fix = None,
    fixed: _Fixed = None,
    fix_by: _FixBy = PruneChoice.by_class,
    relabel_min: _RelabelMin = 0.5,
    max_confidence: _MaxConfidence = 0.1,
    quota: _Quota = 1.0,
) -> None:
    """Rank training labels that are probably wrong, and optionally write a cleaned set.

    Out-of-fold probabilities (k folds of whole sessions, a small LightGBM on fpi's
    features) and confident learning (per-class thresholds = mean self-confidence):
    a turn whose confident class differs from its label is a suspect; suspects are
    ranked by the probability of their given label, lowest first. With --fix and
    --fixed, the estimated wrong labels are dropped, relabelled or down-weighted in a
    labels file for `fpi train --labels` (docs/labels.md says which works best).
    """
    from fpi.errors import InputError
    from fpi.labels.check import CheckOptions, check_labels, cleaned_labels
    from fpi.labels.resolve import join_labels_file
    from fpi.model import load_bundle

    if report is not None and report.suffix.lower() not in (".md", ".json"):
        raise InputError(f"--report {report}: use a .md or .json file name")
    if (fix is None) != (fixed is None):
        raise InputError("--fix and --fixed go together: what to do to the suspects, and "
                         "the cleaned labels file to write")
    bundle = load_bundle(model) if model is not None else None
    turns = _read_logs(inputs)
    if labels is not None:
        turns = join_labels_file(turns, labels, label_policy)
    result = check_labels(turns, CheckOptions(folds=folds, seed=seed, threads=threads,
                                              repeats=repeats, jobs=jobs), bundle=bundle)
    doc = result.to_dict(top=top)
    if report is not None:
        _write_report(result, turns, doc, report, top)
    if fix is not None and fixed is not None:
        _write_fixed(cleaned_labels(result, turns, fix.value, fix_by.value, relabel_min,
                                    max_confidence, quota), fixed)
    err_console.print(f"{doc['suspects']} suspects among {doc['labelled_turns']} labelled turns"
                      + (f"; report in {escape(str(report))}" if report else "")
                      + (f"; cleaned labels ({fix.value}) in {escape(str(fixed))}"
                         if fix is not None else ""))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title="probably wrong labels", title_justify="left")
    for col in ("rank", "session", "turn", "label", "suggested", "p(label)", "p(suggested)"):
        table.add_column(col, justify="right" if col.startswith(("p(", "rank", "turn"))
                         else "left")
    for r in doc["top"]:
        table.add_row(str(r["rank"]), escape(r["session_id"]), str(r["turn_index"]),
                      r["label"], r["suggested"], _f(r["self_confidence"]),
                      _f(r["suggested_probability"]))
    out_console.print(table)
