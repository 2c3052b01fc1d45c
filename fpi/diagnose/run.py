"""Diagnose a night of logs: predictions, rates, slices, attribution, gates and reports.

The data flow, in bounded memory whatever the size of the night:

1. the inputs become one canonical Parquet file (``fpi.ingest.ingest``, bounded
   memory), unless they already are one, sorted;
2. it is read back in batches of whole sessions (context features need a turn's
   neighbours); each batch gets features, calibrated probabilities and, for
   ``--attribution all``, exact TreeSHAP contributions (:mod:`fpi.diagnose.stream`).
   Only per-turn probabilities, ids, slice values, a bounded attribution reservoir
   and a few example candidates are kept;
3. rates (:mod:`fpi.diagnose.rates`), attribution (:mod:`fpi.diagnose.attribution`),
   gates (:mod:`fpi.gates`) and the summary (:mod:`fpi.diagnose.summary`) are
   computed from those;
4. ``predictions.parquet``, ``summary.json``, ``report.md`` and ``report.html``
   are written into a staging directory and swapped in as one set (:mod:`fpi.files`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi import __version__, runmeta
from fpi.diagnose import attribution as attr
from fpi.diagnose import slices_compare
from fpi.diagnose.baseline import against_baseline, baseline_model, load_baseline
from fpi.diagnose.examples import pick, render_examples, render_focus
from fpi.diagnose.inputs import as_list, canonical_parquet, load_model
from fpi.diagnose.options import DiagnoseOptions
from fpi.diagnose.outputs import (
    contributions_chunked,
    is_legacy_output,
    parse_gates,
    path_inside,
    write_predictions,
)
from fpi.diagnose.rates import (
    RateTable,
    compare_rates,
    estimate_rates,
    slice_rates,
    z_value,
)
from fpi.diagnose.stream import StreamState, score_stream
from fpi.diagnose.summary import (
    BaselineInfo,
    Failure,
    IngestInfo,
    LabelMetrics,
    Method,
    ModelInfo,
    Summary,
)
from fpi.errors import ExitStatus, InputError, ModelError
from fpi.files import check_output_dir, check_writable_file, staged_output_dir, write_text_atomic
from fpi.gates import Gate, evaluate_gates, junit_xml, overall_status
from fpi.headline import headline
from fpi.progress import bytes_callback
from fpi.redact import Redactor, redactor
from fpi.report import SUMMARY_SCHEMA_VERSION, write_reports
from fpi.schema import CLASSES, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.model import ModelBundle

log = logging.getLogger(__name__)

Inputs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class DiagnoseResult:
    """What :func:`diagnose` produced: the summary document and the files written."""

    summary: dict[str, Any]
    out_dir: Path
    files: dict[str, Path]
    #: wall seconds per step (read, features_predict, aggregate, attribution, write);
    #: kept out of the summary so reports stay reproducible
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def gate_status(self) -> str:
        """``none``, ``pass``, ``warn`` or ``fail``."""
        return str(self.summary["gate_status"])

    @property
    def exit_status(self) -> ExitStatus:
        """0 unless a gate failed (1)."""
        return ExitStatus.GATE_FAILED if self.gate_status == "fail" else ExitStatus.OK


def diagnose(inputs: Inputs, *, model: str | os.PathLike[str] | ModelBundle,
             out_dir: str | os.PathLike[str], options: DiagnoseOptions | None = None,
             **settings: Any) -> DiagnoseResult:
    """Diagnose ``inputs`` with a model bundle and write the reports into ``out_dir``.

    Parameters
    ----------
    inputs : trace files, directories or globs (any form ``fpi ingest`` reads) or
        one canonical Parquet file.
    model : bundle directory (``fpi train --out``) or a loaded ``ModelBundle``.
    out_dir : where ``predictions.parquet``, ``summary.json``, ``report.md``,
        ``report.html`` (and ``rejects.jsonl``) go, as one set: built in a staging
        directory beside it and swapped in at the end (:mod:`fpi.files`). It must be
        absent, empty or a previous diagnose output.
    options : a :class:`~fpi.diagnose.options.DiagnoseOptions`; or give its fields as
        keywords (``baseline=``, ``gates=``, ``attribution=``, ``seed=``, ...).

    Returns
    -------
    DiagnoseResult
        Check ``.exit_status``: the library does not raise when a gate fails.

    Raises
    ------
    InputError, SchemaError, ModelError
        Bad inputs, gates or baseline; data that does not fit the model; a bad bundle.
    """
    if options is None:
        options = DiagnoseOptions(**settings)
    elif settings:
        options = replace(options, **settings)
    return run(inputs, model, out_dir, options)


@dataclass(frozen=True)
class _Plan:
    """What is checked before a turn is read: gates, baseline, model, output places."""

    paths: list[str]
    gates: list[Gate]
    base: dict[str, Any] | None
    base_info: dict[str, Any]
    red: Redactor | None
    bundle: ModelBundle
    out: Path
    junit_inside: Path | None


def _plan(inputs: Inputs, model: str | os.PathLike[str] | ModelBundle,
          out_dir: str | os.PathLike[str], opts: DiagnoseOptions) -> _Plan:
    """Every check that can refuse the run, done before the night is scored."""
    if opts.attribution not in attr.MODES:
        raise InputError(f"--attribution must be one of {', '.join(attr.MODES)}, "
                         f"not {opts.attribution!r}")
    paths = as_list(inputs)
    if not paths:
        raise InputError("no input given")
    gate_list = parse_gates(opts.gates, opts.gates_file)
    if opts.junit is not None:  # refused now, not after the whole night was scored
        check_writable_file(Path(opts.junit))
    base = load_baseline(opts.baseline)
    if base is None and any(g.uses_baseline for g in gate_list):
        g = next(g for g in gate_list if g.uses_baseline)
        raise InputError(f"gate {g.expr!r} compares with the baseline: give --baseline "
                         "PREVIOUS/summary.json")
    red = redactor(opts.redact_salt) if opts.redact else None
    bundle = load_model(model)
    classes = tuple(bundle.classes)
    if classes != CLASSES:
        raise ModelError(f"model classes {classes} are not {CLASSES}: retrain with fpi train")
    base_info = baseline_model(base, bundle, opts.allow_other_model, opts.baseline)
    out = check_output_dir(out_dir, "diagnose", legacy=is_legacy_output)
    return _Plan(paths, gate_list, base, base_info, red, bundle, out,
                 path_inside(opts.junit, out))


def _read(plan: _Plan, opts: DiagnoseOptions, stage: Path, scratch: Path
          ) -> tuple[Path, IngestInfo]:
    """The night as one canonical Parquet file (the input itself if it is one)."""
    source = canonical_parquet(plan.paths)
    if source is not None:
        n_rows = pl.scan_parquet(source).select(pl.len()).collect().item()
        return source, IngestInfo(records_read=n_rows, turns_kept=n_rows, rejected=0,
                                  rejects_by_rule={}, rejects_file=None)
    from fpi.ingest import ingest

    source = scratch / "turns.parquet"
    rejects = stage / "rejects.jsonl"
    red = plan.red
    rep = ingest(plan.paths, source, format=opts.format, rejects_path=rejects,
                 redact_rejects=None if red is None else red.reject,
                 allow_truncated=opts.allow_truncated,
                 progress=bytes_callback(opts.progress))
    if not rep.rejected:
        rejects.unlink(missing_ok=True)
    return source, IngestInfo(records_read=rep.records_read, turns_kept=rep.turns_kept,
                              rejected=rep.rejected, rejects_by_rule=dict(rep.rejects_by_rule),
                              rejects_file=rejects.name if rep.rejected else None)


def _score(source: Path, plan: _Plan, opts: DiagnoseOptions, predictions: Path,
           timing_info: dict[str, Any]) -> StreamState:
    """Stream the night through the model; ``timing_info`` gets the attribution budget's
    measurement when the sample is sized by time."""
    bundle = plan.bundle

    def quota_fn(feats: pl.DataFrame) -> int:
        if opts.attribution_budget is None:
            return attr.per_class_quota(opts.attribution_sample)
        t = attr.measure(bundle, feats)
        timing_info.update(budget_seconds=opts.attribution_budget,
                           rows_per_second=round(t.rows_per_second, 1))
        return attr.per_class_quota(attr.sample_size(t, opts.attribution_budget))

    total = pl.scan_parquet(source).select(pl.len()).collect().item()
    opts.note("predict", 0, total)
    state = score_stream(source, bundle, total=total, mode=opts.attribution,
                         batch_turns=opts.batch_turns, quota_fn=quota_fn,
                         examples=opts.examples, seed=opts.seed, predictions=predictions,
                         progress=(lambda n: opts.note("predict", n, total)), red=plan.red)
    if state.rows != state.total:  # pragma: no cover - the file changed under us
        raise InputError(f"{source}: read {state.rows} turns, expected {state.total}")
    return state


def _held_out(bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The training prior and the held-out (confusion, soft confusion) of a bundle."""
    prior = bundle.manifest["training"]["class_prior"]
    train_prior = np.array([prior[c] for c in CLASSES], dtype=np.float64)
    heldout = bundle.manifest.get("heldout") or {}
    conf_arr, soft_arr = (None if heldout.get(key) is None
                          else np.asarray(heldout[key], dtype=np.float64)
                          for key in ("confusion", "soft_confusion"))
    return train_prior, conf_arr, soft_arr


def _estimate(state: StreamState, bundle: ModelBundle, slices: pl.DataFrame,
              opts: DiagnoseOptions) -> tuple[RateTable, dict[str, Any],
                                              list[list[dict[str, str]]]]:
    """The night's rates, its slices, and the groups of slices that are the same turns."""
    train_prior, conf_arr, soft_arr = _held_out(bundle)
    rates = estimate_rates(state.probs, train_prior=train_prior, confusion=conf_arr,
                           soft_confusion=soft_arr, groups=state.sessions,
                           confidence=opts.confidence, n_boot=opts.n_boot, seed=opts.seed)
    slice_doc = slice_rates(slices, state.probs, rates, train_prior=train_prior,
                            confusion=conf_arr, soft_confusion=soft_arr,
                            min_support=opts.min_support)
    same_turns = slices_compare.same_turn_groups(slices, opts.min_support)
    slice_doc.update(top=slices_compare.collapse(slice_doc["top"], same_turns),
                     same_turns=same_turns)
    return rates, slice_doc, same_turns


def _attribute(state: StreamState, bundle: ModelBundle, slices: pl.DataFrame,
               slice_top: list[dict[str, Any]], opts: DiagnoseOptions
               ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The attribution block, and the attributed rows with their per-component values."""
    pred = state.probs.argmax(axis=1)
    predicted_counts = np.bincount(pred, minlength=len(CLASSES))
    z = z_value(opts.confidence)
    if opts.attribution == "all":
        values = np.vstack(state.values)
        doc = attr.summarize(values, pred, predicted_counts, mode="all", slices=slices,
                             slice_targets=slice_top, z=z)
        return doc, np.arange(len(pred)), values
    if opts.attribution == "sample" and state.reservoir is not None:
        res = state.reservoir.sort("_row")
        feat_names = list(bundle.input_columns)
        rpred = res["_pred"].to_numpy()
        contrib = contributions_chunked(bundle, res.select([*KEY_COLUMNS, *feat_names]),
                                        opts.note)
        values = attr.for_class(attr.grouped(contrib, bundle.features), rpred)
        doc = attr.summarize(values, rpred, predicted_counts, mode="sample",
                             slices=res.select(pl.col(f"_slice_{c}").alias(c)
                                               for c in slices.columns),
                             slice_targets=slice_top, z=z)
        return doc, res["_row"].to_numpy(), values
    doc = attr.summarize(np.zeros((0, len(attr.GROUP_COLUMNS))),
                         np.zeros(0, dtype=np.int64), predicted_counts, mode="none")
    return doc, np.zeros(0, dtype=np.int64), np.zeros((0, len(attr.GROUP_COLUMNS)))


def _summary(plan: _Plan, opts: DiagnoseOptions, state: StreamState, ingest_info: IngestInfo,
             rates: RateTable, slice_doc: dict[str, Any], slices: pl.DataFrame,
             attr_doc: dict[str, Any], example_doc: dict[str, list[dict[str, Any]]]
             ) -> Summary:
    """The summary before the baseline comparison and the gates."""
    from fpi.model.bundle import runtime_versions

    rates_dict = rates.to_dict()
    n = len(state.probs)
    return Summary(
        schema_version=SUMMARY_SCHEMA_VERSION, fpi_version=__version__,
        versions=runtime_versions(), inputs=[Path(p).name for p in plan.paths],
        turns=n, sessions=state.n_sessions, ingest=ingest_info,
        model=ModelInfo.of(plan.bundle),
        method=Method.of(rates, confidence=opts.confidence, n_boot=opts.n_boot, seed=opts.seed),
        rates=rates_dict, failure=Failure.of(rates_dict, n),
        labels=LabelMetrics.of(state.labels, state.probs.argmax(axis=1)),
        slices=slice_doc, traffic=state.traffic.to_dict(slices, state.sessions),
        attribution=attr_doc, baseline=None, gates=[], gate_status="none",
        examples=example_doc, redacted=opts.redact,
        redaction=None if plan.red is None else plan.red.describe())


def _judge(summary: Summary, plan: _Plan, opts: DiagnoseOptions,
           same_turns: list[list[dict[str, str]]]) -> Summary:
    """The baseline comparison and the gates' verdicts."""
    base = plan.base
    if base is not None:
        changes = compare_rates(summary.rates, base["rates"], confidence=opts.confidence)
        summary = replace(summary, baseline=BaselineInfo(
            inputs=base.get("inputs", []), turns=base.get("turns"),
            model_id=plan.base_info["model_id"], same_model=plan.base_info["same_model"],
            changes=changes))
        vs_baseline, drift = against_baseline(summary.to_dict(), base, same_turns,
                                              opts.confidence)
        summary = replace(summary, slices={**summary.slices, "vs_baseline": vs_baseline},
                          drift=drift)
    results = [r.to_dict() for r in evaluate_gates(plan.gates, summary.to_dict(), base)]
    return replace(summary, gates=results, gate_status=overall_status(results))


def run(inputs: Inputs, model: str | os.PathLike[str] | ModelBundle,
        out_dir: str | os.PathLike[str], opts: DiagnoseOptions) -> DiagnoseResult:
    """:func:`diagnose` with its options as one record."""
    plan = _plan(inputs, model, out_dir, opts)
    bundle, out, timings = plan.bundle, plan.out, {}
    t0 = time.perf_counter()
    input_files = runmeta.input_files(plan.paths, opts.progress)
    # Every output is built in a staging directory beside --out and swapped in whole at
    # the end; scratch (the streamed copy of the turns) lives inside it, removed first.
    with (staged_output_dir(out, "diagnose", legacy=is_legacy_output) as stage,
          tempfile.TemporaryDirectory(prefix=".scratch-", dir=stage) as tmp_name):
        scratch = Path(tmp_name)
        source, ingest_info = _read(plan, opts, stage, scratch)
        timings["read"] = time.perf_counter() - t0
        bundle.check_compatible(pl.scan_parquet(source))
        timing_info: dict[str, Any] = {"budget_seconds": None, "rows_per_second": None}
        t1 = time.perf_counter()
        scratch_predictions = scratch / "predictions.parquet"
        state = _score(source, plan, opts, scratch_predictions, timing_info)
        if source.parent == scratch:
            source.unlink()  # the ingested copy is no longer needed
        timings["features_predict"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        opts.note("rates", 0, None)
        slices = state.slices_frame()
        rates, slice_doc, same_turns = _estimate(state, bundle, slices, opts)
        timings["aggregate"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        attr_doc, contrib_rows, contrib_values = _attribute(state, bundle, slices,
                                                            slice_doc["top"], opts)
        attr_doc.update(requested_sample=opts.attribution_sample, **timing_info)
        opts.note("examples", 0, None)
        example_doc = render_examples(state, bundle, plan.red)
        timings["attribution"] = time.perf_counter() - t3

        summary = _summary(plan, opts, state, ingest_info, rates, slice_doc, slices,
                           attr_doc, example_doc)
        summary = _judge(summary, plan, opts, same_turns)
        summary = replace(summary, headline=headline(summary.to_dict()))
        summary = replace(summary, focus_examples=pick(
            state.pool, summary.to_dict(), lambda rows: render_focus(rows, bundle, plan.red)))
        summary = replace(summary, run=runmeta.run_info(
            span=state.span, inputs=input_files, summary=summary.to_dict(),
            baseline=runmeta.baseline_info(plan.base, opts.baseline),
            wall_seconds=time.perf_counter() - t0))
        doc = summary.to_dict()
        t4 = time.perf_counter()
        opts.note("writing", 0, None)
        write_predictions(scratch_predictions, contrib_rows, contrib_values,
                          stage / "predictions.parquet")
        written = {"predictions": stage / "predictions.parquet", **write_reports(doc, stage)}
        if plan.junit_inside is not None:
            (stage / plan.junit_inside).parent.mkdir(parents=True, exist_ok=True)
            written["junit"] = write_text_atomic(stage / plan.junit_inside,
                                                 junit_xml(doc["gates"]))
        if ingest_info.rejects_file:
            written["rejects"] = stage / "rejects.jsonl"
    files = {k: out / p.relative_to(stage) for k, p in written.items()}
    if opts.junit is not None and plan.junit_inside is None:
        files["junit"] = write_text_atomic(opts.junit, junit_xml(doc["gates"]))
    timings["write"] = time.perf_counter() - t4
    log.info("diagnose timings: %s", {k: round(v, 2) for k, v in timings.items()})
    return DiagnoseResult(summary=doc, out_dir=out, files=files, timings=timings)
