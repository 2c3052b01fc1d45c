"""``fpi train`` and ``fpi evaluate``: fit the failure-point model and measure it."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fpi.cli._app import (
    AllowTruncated,
    EngineName,
    Jobs,
    Scheduler,
    SchedulerFile,
    Strict,
    Workers,
    app,
    err_console,
    out_console,
)
from fpi.cli._progress import progress_for

if TYPE_CHECKING:
    from fpi.model.training import Split


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}%" if pct else f"{x:.3f}"


def _metrics_table(doc: dict[str, Any], title: str) -> Table:
    """The model's per-class precision, recall, F1 and support."""
    from fpi.schema import CLASSES

    table = Table(title=title, title_justify="left")
    for col in ("class", "support", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for c in CLASSES:
        m = doc["per_class"][c]
        table.add_row(c, str(m["support"]), _fmt(m["precision"]), _fmt(m["recall"]),
                      _fmt(m["f1"]))
    total = sum(doc["per_class"][c]["support"] for c in CLASSES)
    table.add_row("macro", str(total), "", "", _fmt(doc["macro_f1"]), style="bold")
    return table


def _comparison_table(doc: dict[str, Any]) -> Table | None:
    """Per-class F1 of the model, its baselines and the second annotator, side by side."""
    from fpi.schema import CLASSES

    base = doc.get("baselines") or {}
    human = doc.get("human") or {}
    cols = [name for name in ("rules", "no_context") if name in base]
    if not cols and not human:
        return None
    table = Table(title="F1 side by side", title_justify="left",
                  caption="rules: first-bad-stage rule; no-context: the model without "
                          "dialogue context; human: second annotator vs gold")
    table.add_column("class", no_wrap=True)
    table.add_column("model", justify="right")
    for name in cols:
        table.add_column(name.replace("_", "-"), justify="right")
    if human:
        table.add_column("human", justify="right")
        table.add_column("% of human", justify="right", no_wrap=True)
    for c in CLASSES:
        row = [c, _fmt(doc["per_class"][c]["f1"])]
        row += [_fmt(base[name]["per_class"][c]["f1"]) for name in cols]
        if human:
            h = human["per_class"][c]
            row += [_fmt(h["f1"]), _fmt(h.get("model_pct_of_human"), pct=True)]
        table.add_row(*row)
    row = ["macro", _fmt(doc["macro_f1"])] + [_fmt(base[name]["macro_f1"]) for name in cols]
    if human:
        row += [_fmt(human.get("macro_f1")), ""]
    table.add_row(*row, style="bold")
    return table


def _confusion_table(doc: dict[str, Any]) -> Table:
    from fpi.schema import CLASSES

    table = Table(title="confusion (rows true, columns predicted)", title_justify="left")
    table.add_column("true \\ predicted")
    for c in CLASSES:
        table.add_column(c, justify="right")
    for c, row in zip(CLASSES, doc["confusion"], strict=True):
        table.add_row(c, *(str(v) for v in row))
    return table


def _render(doc: dict[str, Any], title: str) -> None:
    out_console.print(_metrics_table(doc, title))
    comparison = _comparison_table(doc)
    if comparison is not None:
        out_console.print(comparison)
    out_console.print(_confusion_table(doc))
    out_console.print(
        f"accuracy {_fmt(doc['accuracy'])}   macro-F1 {_fmt(doc['macro_f1'])}   "
        f"calibration error (ECE) {_fmt(doc.get('calibration_error'))}"
    )


def _read(inputs: list[Path], allow_truncated: bool, rejects: Path | None = None,
          labels: Path | None = None, policy: str = "majority") -> tuple[Any, Any]:
    """The canonical frame (with ``labels`` joined on, if given) and the ingest report;
    rejects summed up by rule on stderr."""
    from fpi.ingest import read_traces
    from fpi.progress import bytes_callback

    with progress_for(err_console) as progress:
        frame, report = read_traces(inputs, rejects_path=rejects, allow_truncated=allow_truncated,
                                    progress=bytes_callback(progress))
    if report.rejected:
        rules = ", ".join(f"{rule} {n:,}" for rule, n in report.rejects_by_rule.items())
        where = f"; see {report.rejects_path}" if report.rejects_path else ""
        err_console.print(f"rejected {report.rejected:,} of {report.records_read:,} records "
                          f"({escape(rules)}){escape(where)}", soft_wrap=True)
    if labels is not None:
        from fpi.labels.resolve import join_labels_file

        frame = join_labels_file(frame, labels, policy)
    return frame, report


def _default_rejects(out: Path) -> Path:
    """``models/night`` -> ``models/night.rejects.jsonl``, beside the bundle (not in it)."""
    out = out.resolve() if not out.name else out  # ('.' has no name)
    return out.with_name(f"{out.name}.rejects.jsonl")


_LABELS_HELP = ("Labels file from `fpi labels import`: replaces the logs' own labels "
                "(turns it does not label stay unlabelled context).")
_POLICY_HELP = ("With --labels, how several annotators' labels of a turn become one: "
                "'majority', 'unanimous' (drop disagreements) or 'gold:NAME'.")


class SplitChoice(StrEnum):
    """``--split``: which sessions ``--test-size`` sets aside."""

    _value_: Split
    session = "session"
    time = "time"


class ProtocolChoice(StrEnum):
    """``--protocol``: k-fold cross-fitting, one validation part, or by data size."""

    auto = "auto"
    crossfit = "crossfit"
    holdout = "holdout"


#: The options of ``fpi train``, one alias each, so the command reads as its steps.
_Inputs = Annotated[list[Path], typer.Argument(
    help="Labelled trace files, directories or globs (any input form, or ingested Parquet).",
    show_default=False)]
_Out = Annotated[Path, typer.Option(
    "--out", "-o", help="Model bundle directory to write.", show_default=False)]
_Seed = Annotated[int, typer.Option(help="Random seed (folds, bagging).")]
_Threads = Annotated[int, typer.Option(
    min=1, help="LightGBM threads (part of the reproducibility key).")]
_Folds = Annotated[int | None, typer.Option(
    min=2, help="Cross-fitting folds (of whole sessions) for the out-of-fold metrics, "
                "calibration and rounds (default 5, 3 above 20,000 labelled turns); "
                "with the holdout protocol, 1/folds of the sessions is the validation "
                "part (default 5).",
    show_default=False)]
_Protocol = Annotated[ProtocolChoice, typer.Option(
    help="'crossfit' (k folds), 'holdout' (one validation part of 1/folds of the "
         "sessions gives the rounds, calibration and metrics, and its model is "
         "shipped) or 'auto': holdout from 300,000 labelled "
         "turns on (docs/model.md).")]
_Search = Annotated[bool, typer.Option(
    help="Up to 12,000 labelled turns, compare three parameter settings for the data size "
         "on the first fold and keep the best (docs/model.md); --no-search trains with "
         "the default setting, about a third of the time there.")]
_Split = Annotated[SplitChoice, typer.Option(
    help="With --test-size > 0, which sessions are set aside: 'session' (random) or "
         "'time' (newest).")]
_TestSize = Annotated[float, typer.Option(
    help="Fraction of sessions set aside as a final test part (0: every label is used "
         "and the metrics are out-of-fold).")]
_InitModel = Annotated[Path | None, typer.Option(
    "--init-model", help="Warm start: continue from this bundle (its features are kept; "
                         "it must be a bundle this fpi computes every feature of).",
    show_default=False)]
_Json = Annotated[bool, typer.Option(
    "--json", help="Print the held-out metrics as JSON on stdout.")]
_Rejects = Annotated[Path | None, typer.Option(
    "--rejects", help="Where to write the records set aside while reading (default: "
                      "beside the bundle, models/m -> models/m.rejects.jsonl).")]
_Labels = Annotated[Path | None, typer.Option("--labels", help=_LABELS_HELP,
                                              show_default=False)]
_LabelPolicy = Annotated[str, typer.Option(help=_POLICY_HELP)]
_Weights = Annotated[Path | None, typer.Option(
    "--weights", show_default=False,
    help="Per-turn training weights: Parquet or CSV with session_id, turn_index, weight "
         "(unlisted turns weigh 1; e.g. `fpi labels check --fix weight`) [default: the "
         "--labels file's weight column, if it has one].")]
_MaxTrainTurns = Annotated[int | None, typer.Option(
    "--max-train-turns", min=1, show_default=False,
    help="Train on a seeded, class-stratified sample of at most this many labelled "
         "turns (by a hash of session id and --seed; see docs/scale.md).")]
_MaxFitTurns = Annotated[int | None, typer.Option(
    "--max-fit-turns", min=1, show_default=False,
    help="With the holdout protocol: the boosted trees train on a seeded, "
         "class-stratified sample of at most this many labelled turns (faster, a "
         "little less accurate: docs/model.md); the text models, calibration and "
         "metrics still use every label [default: all].")]
_DistributedTraining = Annotated[bool, typer.Option(
    "--distributed-training",
    help="With --engine dask and --max-train-turns: grow the shipped model with "
         "lightgbm.dask on every labelled turn outside the driver's sample, for the "
         "rounds cross-fitting on the sample picks (no early stopping); the sample "
         "calibrates and measures it. Models differ from run to run (docs/scale.md).")]
_Rounds = Annotated[int | None, typer.Option(
    "--rounds", min=1, show_default=False,
    help="With --distributed-training: grow the shipped model for exactly this many "
         "rounds instead of the count cross-fitting on the driver's sample picks.")]


@app.command()
def train(
    inputs: _Inputs,
    out: _Out,
    seed: _Seed = 0,
    threads: _Threads = 1,
    jobs: Jobs = None,
    folds: _Folds = None,
    protocol: _Protocol = ProtocolChoice.auto,
    search: _Search = True,
    split: _Split = SplitChoice.session,
    test_size: _TestSize = 0.0,
    init_model: _InitModel = None,
    as_json: _Json = False,
    rejects: _Rejects = None,
    strict: Strict = False,
    allow_truncated: AllowTruncated = False,
    labels: _Labels = None,
    label_policy: _LabelPolicy = "majority",
    weights: _Weights = None,
    engine: EngineName = "local",
    workers: Workers = None,
    scheduler: Scheduler = None,
    scheduler_file: SchedulerFile = None,
    max_train_turns: _MaxTrainTurns = None,
    max_fit_turns: _MaxFitTurns = None,
    distributed_training: _DistributedTraining = False,
    rounds: _Rounds = None,
) -> None:
    """Train the failure-point model on labelled turns and write a model bundle.

    Every labelled turn is used: k-fold cross-fitting by session gives out-of-fold
    predictions for calibration, early stopping and the held-out metrics, and the
    shipped model is trained on all labels. From 300,000 labelled turns on (--protocol
    auto) one validation part of the sessions takes the folds' place, to keep
    training time sane.
    The metrics are printed next to the two baselines (the first-bad-stage rule and
    the model without dialogue context) and, where a second annotator's labels exist,
    human agreement. Same data + seed + threads give
    a byte-identical model. Records that break a rule of the trace format (e.g. an
    unknown label, bad_label) are set aside in the rejects file, as `fpi ingest` does.

    With --engine dask the input is one partitioned directory (fpi ingest
    --partitions N) or one canonical Parquet file: the features are built on the
    cluster, partition by partition, and the model is trained here, the same
    model as --engine local gives (docs/scale.md). With --distributed-training the
    shipped model is grown on the workers by lightgbm.dask instead (not reproducible).

    Exit status: 0 ok, 2 bad input, 3 rejects under --strict.
    """
    if rounds is not None and not distributed_training:
        raise typer.BadParameter("needs --distributed-training", param_hint="--rounds")
    _check_engine_flags(engine, inputs, workers, scheduler, scheduler_file,
                        distributed_training, labels, max_train_turns)
    # after the usage checks: a usage error does not pay for importing LightGBM
    from fpi.labels.resolve import training_weights
    from fpi.model import train as train_model
    from fpi.model.bundle import check_bundle_out

    check_bundle_out(out)  # refuse a foreign --out before reading any data
    options: dict[str, Any] = {
        "seed": seed, "threads": threads, "jobs": jobs, "folds": folds, "split": split.value,
        "test_size": test_size, "init_model": init_model, "max_train_turns": max_train_turns,
        "protocol": protocol.value, "search": search}
    if max_fit_turns is not None:
        options["max_fit_turns"] = max_fit_turns
    options["weights"] = training_weights(weights, labels)
    report = None
    if engine == "local":
        frame, report = _read(inputs, allow_truncated, rejects or _default_rejects(out),
                              labels, label_policy)
        err_console.print(f"training on {frame.height} turns ...")
        with progress_for(err_console) as progress:
            result = train_model(frame, out, progress=progress, **options)
    else:
        from fpi.engine import engine_from_options

        with engine_from_options(engine, workers, scheduler, scheduler_file) as runner:
            err_console.print(f"building features on {runner.workers} dask worker(s) ...")
            with progress_for(err_console) as progress:
                result = train_model(str(inputs[0]), out, progress=progress, engine=runner,
                                     distributed_training=distributed_training,
                                     distributed_rounds=rounds, **options)
    _report(result.to_dict(), as_json)
    if strict and report is not None and report.rejected:
        from fpi.ingest import strict_error

        raise strict_error(report, f"the bundle was written to {out}, the rejects to "
                                   f"{report.rejects_path}")


def _report(doc: dict[str, Any], as_json: bool) -> None:
    """What training did, on stderr; the held-out metrics on stdout (JSON) or as a table."""
    counts = doc["training"]["counts"]
    err_console.print(
        f"wrote {doc['model']}: trained on {counts['train']['turns']} turns; metrics "
        f"{doc['training']['heldout_is']} on {counts['test']['turns']} turns in "
        f"{counts['test']['sessions']} sessions"
    )
    grown = doc["training"].get("distributed")
    if grown:
        err_console.print(f"lightgbm.dask grew the shipped model on {grown['turns']} turns "
                          f"outside the driver's sample ({grown['rounds']} rounds, "
                          f"{grown['workers']} worker(s))")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _render(doc, f"held-out metrics ({doc['training']['heldout_is']})")


def _check_engine_flags(engine: str, inputs: list[Path], workers: int | None,
                        scheduler: str | None, scheduler_file: Path | None,
                        distributed: bool, labels: Path | None,
                        max_train_turns: int | None = None) -> None:
    """Usage errors of ``--engine`` and the flags only ``--engine dask`` takes."""
    if engine == "local":
        given = [flag for flag, value in (("--workers", workers), ("--scheduler", scheduler),
                                          ("--scheduler-file", scheduler_file),
                                          ("--distributed-training", distributed or None))
                 if value is not None]
        if given:
            raise typer.BadParameter("needs --engine dask", param_hint=given[0])
        return
    if engine != "dask":
        raise typer.BadParameter(f"unknown engine {engine!r}: use local or dask",
                                 param_hint="--engine")
    if len(inputs) != 1:
        raise typer.BadParameter("--engine dask trains on one input: a partitioned directory "
                                 "(fpi ingest --partitions N) or one canonical Parquet file",
                                 param_hint="INPUTS")
    if labels is not None:
        raise typer.BadParameter("not with --engine dask yet: join the labels first "
                                 "(fpi labels) and ingest", param_hint="--labels")
    if distributed and max_train_turns is None:
        raise typer.BadParameter("needs --max-train-turns: the driver's sample, which picks "
                                 "the rounds and calibrates the model the workers grow",
                                 param_hint="--distributed-training")


@app.command()
def evaluate(
    inputs: Annotated[list[Path], typer.Argument(
        help="Labelled trace files, directories or globs.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.",
                                        show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as a stable JSON "
                                                        "document on stdout.")] = False,
    allow_truncated: AllowTruncated = False,
    labels: Annotated[Path | None, typer.Option("--labels", help=_LABELS_HELP,
                                                show_default=False)] = None,
    label_policy: Annotated[str, typer.Option(help=_POLICY_HELP)] = "majority",
) -> None:
    """Measure a model bundle on labelled turns.

    Prints per-class precision, recall, F1 and support, macro-F1, accuracy, the
    confusion matrix and calibration error, with the rule baseline, the no-context
    model and (where label.failure_point_2 exists) human agreement side by side.
    """
    from fpi.evaluate import evaluate as evaluate_model
    from fpi.model import load_bundle

    bundle = load_bundle(model)
    frame, _ = _read(inputs, allow_truncated, labels=labels, policy=label_policy)
    result = evaluate_model(frame, bundle)
    doc = result.to_dict()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        _render(doc, f"evaluation of {model} on {doc['n_turns']} labelled turns")
