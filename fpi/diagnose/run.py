"""Diagnose a night of logs: predictions, rates, slices, attribution, gates and reports.

One code path, whatever the engine (:mod:`fpi.engine`: this process, or a Dask cluster):

1. the night becomes partitions of whole sessions: the parts of a partitioned
   directory (``fpi ingest --partitions N``), or row ranges of one canonical Parquet
   file (the input itself if it is one, sorted; else ``fpi.ingest.ingest`` writes it);
2. the engine scores each partition (:func:`fpi.diagnose.partition.score_partition`:
   features, calibrated probabilities, bounded samples) and returns its small
   mergeable statistics; the driver merges them (counts, sums, bootstrap sums, slice
   sums, the lowest attribution keys, the top examples) and fits EM over the
   partitions (the probabilities stay where they were scored);
3. rates (:mod:`fpi.diagnose.rates`), attribution (:mod:`fpi.diagnose.attribution`:
   TreeSHAP on the chosen sample only), gates (:mod:`fpi.gates`) and the summary
   (:mod:`fpi.diagnose.summary`) are computed from the merged statistics;
4. each partition writes ``predictions/part-NNNNN.parquet``; ``summary.json``,
   ``report.md`` and ``report.html`` are written beside them, all in a staging
   directory swapped in as one set (:mod:`fpi.files`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from fpi import __version__, runmeta
from fpi.diagnose import attribution as attr
from fpi.diagnose import slices_compare
from fpi.diagnose.baseline import against_baseline, baseline_model, load_baseline
from fpi.diagnose.examples import ExamplePool, pick, render_examples, render_focus
from fpi.diagnose.inputs import as_list, canonical_parquet, load_model
from fpi.diagnose.options import DiagnoseOptions
from fpi.diagnose.outputs import (
    is_legacy_output,
    parse_gates,
    path_inside,
)
from fpi.diagnose.partition import (
    ModelRef,
    PartitionSource,
    PartitionStats,
    PartitionTask,
    ScoreSettings,
    StatsSpec,
    fit_em,
    fit_slice_em,
    keep_loaded,
    label_metrics,
    rates_from_stats,
    score_night,
    session_ranges,
    write_predictions,
)
from fpi.diagnose.rates import (
    RateTable,
    Strata,
    compare_rates,
    slice_rates_from_sums,
    z_value,
)
from fpi.diagnose.summary import (
    BaselineInfo,
    Failure,
    IngestInfo,
    Method,
    ModelInfo,
    Summary,
)
from fpi.engine import Engine, LocalEngine, default_threads, signals_to_main_thread
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
             engine: Engine | None = None, **settings: Any) -> DiagnoseResult:
    """Diagnose ``inputs`` with a model bundle and write the reports into ``out_dir``.

    Parameters
    ----------
    inputs : trace files, directories or globs (any form ``fpi ingest`` reads) or
        one canonical Parquet file.
    model : bundle directory (``fpi train --out``) or a loaded ``ModelBundle``.
    out_dir : where ``predictions/part-NNNNN.parquet``, ``summary.json``, ``report.md``,
        ``report.html`` (and ``rejects.jsonl``) go, as one set: built in a staging
        directory beside it and swapped in at the end (:mod:`fpi.files`). It must be
        absent, empty or a previous diagnose output.
    options : a :class:`~fpi.diagnose.options.DiagnoseOptions`; or give its fields as
        keywords (``baseline=``, ``gates=``, ``attribution=``, ``seed=``, ...).
    engine : where the partitions are scored: an :class:`~fpi.engine.Engine` (e.g.
        ``fpi.engine.dask.DaskEngine(workers=4)``, or ``fpi.engine.LocalEngine(threads=1)``;
        the caller closes it), or ``None``: this process, a partition per core at a time
        (:func:`fpi.engine.default_threads`). The outputs are the same whatever the engine.

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
    return run(inputs, model, out_dir, options, engine)


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
    out = check_output_dir(out_dir, "diagnose", legacy=is_legacy_output)  # before LightGBM
    bundle = load_model(model)
    classes = tuple(bundle.classes)
    if classes != CLASSES:
        raise ModelError(f"model classes {classes} are not {CLASSES}: retrain with fpi train")
    base_info = baseline_model(base, bundle, opts.allow_other_model, opts.baseline)
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


def _partitioned(paths: list[str]) -> str | None:
    """The input when it is one partitioned directory (``fpi ingest --partitions``)."""
    from fpi.ingest.partition import MANIFEST

    if len(paths) != 1:
        return None
    p = paths[0]
    return p if ("://" in p or Path(p, MANIFEST).is_file()) else None


def _sources(plan: _Plan, opts: DiagnoseOptions, stage: Path, scratch: Path, workers: int
             ) -> tuple[list[PartitionSource], IngestInfo]:
    """The night's partitions of whole sessions: a partitioned directory's parts (each
    checked on its worker), or row ranges of one canonical file."""
    directory = _partitioned(plan.paths)
    if directory is not None:
        from fpi.ingest.partition import read_partitions

        parts, manifest = read_partitions(directory)
        n = sum(manifest.rows)
        return ([PartitionSource(p, bucket=(i, manifest.partitions)) for i, p in
                 enumerate(parts)],
                IngestInfo(records_read=n, turns_kept=n, rejected=0, rejects_by_rule={},
                           rejects_file=None))
    source, info = _read(plan, opts, stage, scratch)
    plan.bundle.check_compatible(pl.scan_parquet(source))
    total = pl.scan_parquet(source).select(pl.len()).collect().item()
    per_part = min(opts.batch_turns, max(1, math.ceil(total / max(workers, 1))))
    return session_ranges(str(source), per_part), info


def _quota(plan: _Plan, opts: DiagnoseOptions, first: PartitionSource | None,
           timing_info: dict[str, Any]) -> int:
    """Turns per predicted class in the attribution sample (``timing_info`` gets the
    budget's measurement when it is sized by time, on the first partition's turns)."""
    if opts.attribution_budget is None or first is None:
        return attr.per_class_quota(opts.attribution_sample)
    from fpi.features import build_features

    feats = build_features(first.read().head(2000))
    t = attr.measure(plan.bundle, feats)
    timing_info.update(budget_seconds=opts.attribution_budget,
                       rows_per_second=round(t.rows_per_second, 1))
    return attr.per_class_quota(attr.sample_size(t, opts.attribution_budget))


def _held_out(bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The training prior and the held-out (confusion, soft confusion) of a bundle."""
    prior = bundle.manifest["training"]["class_prior"]
    train_prior = np.array([prior[c] for c in CLASSES], dtype=np.float64)
    heldout = bundle.manifest.get("heldout") or {}
    conf_arr, soft_arr = (None if heldout.get(key) is None
                          else np.asarray(heldout[key], dtype=np.float64)
                          for key in ("confusion", "soft_confusion"))
    return train_prior, conf_arr, soft_arr


@dataclass(frozen=True)
class _Night:
    """The scored night: the handles (per-turn data stays where it was scored), the merged
    statistics and the EM prior."""

    engine: Engine
    handles: list[object]
    stats: PartitionStats
    em: np.ndarray


def _estimate(night: _Night, bundle: ModelBundle, opts: DiagnoseOptions
              ) -> tuple[RateTable, dict[str, Any], list[list[dict[str, str]]]]:
    """The night's rates, its slices, and the groups of slices that are the same turns."""
    train_prior, conf_arr, soft_arr = _held_out(bundle)
    engine, handles, stats = night.engine, night.handles, night.stats

    def em_replicates(init: np.ndarray) -> np.ndarray:
        return np.asarray(fit_em(engine, handles, train_prior, init=init, seed=opts.seed,
                                 replicates=range(opts.n_boot), tol=1e-6))

    def em_slices(dim: str, values: list[str]) -> np.ndarray:
        return fit_slice_em(engine, handles, train_prior, dim, values, rates.estimate)

    rates = rates_from_stats(stats, night.em, confusion=conf_arr, soft_confusion=soft_arr,
                             confidence=opts.confidence, seed=opts.seed,
                             em_replicates=em_replicates,
                             strata=Strata.of_manifest(bundle.manifest))
    slice_doc = slice_rates_from_sums(stats.slices, rates, confusion=conf_arr,
                                      soft_confusion=soft_arr, min_support=opts.min_support,
                                      em_slices=em_slices)
    same_turns = slices_compare.same_turn_groups(stats.fingerprints, opts.min_support)
    slice_doc.update(top=slices_compare.collapse(slice_doc["top"], same_turns),
                     same_turns=same_turns)
    return rates, slice_doc, same_turns


def _sample_contributions(stats: PartitionStats, bundle: ModelBundle, opts: DiagnoseOptions,
                          threads: int | None = None) -> np.ndarray | None:
    """TreeSHAP of the attribution sample toward each turn's predicted class (``sample``
    mode; on ``threads`` threads, default the model's training setting), else None. It
    reports no progress (one call): it may run on a thread beside the EM fit."""
    res = stats.attribution
    if opts.attribution != "sample" or res is None:
        return None
    feats = res.select([*KEY_COLUMNS, *bundle.input_columns])
    return bundle.contributions(feats, res["_pred"].to_numpy(), threads)


def _await_contributions(shap: Future[np.ndarray | None], stats: PartitionStats,
                         opts: DiagnoseOptions) -> np.ndarray | None:
    """:func:`_sample_contributions`' result, with its progress (its start and end)."""
    sample = stats.attribution if opts.attribution == "sample" else None
    if sample is not None:
        opts.note("attribution", 0, sample.height)
    contrib = shap.result()
    if sample is not None:
        opts.note("attribution", sample.height, sample.height)
    return contrib


def _attribute(stats: PartitionStats, bundle: ModelBundle, slice_top: list[dict[str, Any]],
               opts: DiagnoseOptions, contrib: np.ndarray | None
               ) -> tuple[dict[str, Any], pl.DataFrame | None]:
    """The attribution block, and the sampled turns' contributions (keys + contrib_*),
    from the sample's TreeSHAP values ``contrib`` (:func:`_sample_contributions`)."""
    predicted_counts = stats.counts
    z = z_value(opts.confidence)
    if opts.attribution == "all" and stats.attribution_moments is not None:
        return attr.summarize_moments(stats.attribution_moments, predicted_counts,
                                  slice_targets=slice_top, z=z), None
    res = stats.attribution
    if opts.attribution == "sample" and res is not None and contrib is not None:
        rpred = res["_pred"].to_numpy()
        values = attr.for_class(attr.grouped(contrib, bundle.features), rpred)
        slice_cols = [c.removeprefix("_slice_") for c in res.columns if c.startswith("_slice_")]
        doc = attr.summarize(values, rpred, predicted_counts, mode="sample",
                             slices=res.select(pl.col(f"_slice_{c}").alias(c)
                                               for c in slice_cols),
                             slice_targets=slice_top, z=z)
        frame = res.select(KEY_COLUMNS).with_columns(
            pl.Series(f"contrib_{g}", values[:, j]) for j, g in enumerate(attr.GROUP_COLUMNS))
        return doc, frame
    doc = attr.summarize(np.zeros((0, len(attr.GROUP_COLUMNS))),
                         np.zeros(0, dtype=np.int64), predicted_counts, mode="none")
    return doc, None


def _summary(plan: _Plan, opts: DiagnoseOptions, stats: PartitionStats,
             ingest_info: IngestInfo, rates: RateTable, slice_doc: dict[str, Any],
             attr_doc: dict[str, Any], example_doc: dict[str, list[dict[str, Any]]]
             ) -> Summary:
    """The summary before the baseline comparison and the gates."""
    from fpi.model.bundle import runtime_versions

    rates_dict = rates.to_dict()
    n = stats.turns
    categorical = {dim: dict(zip(ss.values, (int(t) for t in ss.turns), strict=True))
                   for dim, ss in stats.slices.items()}
    return Summary(
        schema_version=SUMMARY_SCHEMA_VERSION, fpi_version=__version__,
        versions=runtime_versions(), inputs=[Path(p).name for p in plan.paths],
        turns=n, sessions=stats.sessions, ingest=ingest_info,
        model=ModelInfo.of(plan.bundle),
        method=Method.of(rates, confidence=opts.confidence, n_boot=opts.n_boot, seed=opts.seed),
        rates=rates_dict, failure=Failure.of(rates_dict, n),
        labels=label_metrics(stats.confusion),
        slices=slice_doc, traffic=stats.traffic.to_dict(categorical),
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


def _story(summary: Summary, plan: _Plan, stats: PartitionStats) -> Summary:
    """The headline, and the example turns of what it points at."""
    summary = replace(summary, headline=headline(summary.to_dict()))
    pool = ExamplePool(2)
    pool.pool = stats.pool
    return replace(summary, focus_examples=pick(
        pool, summary.to_dict(), lambda rows: render_focus(rows, plan.bundle, plan.red)))


def run(inputs: Inputs, model: str | os.PathLike[str] | ModelBundle,
        out_dir: str | os.PathLike[str], opts: DiagnoseOptions,
        engine: Engine | None = None) -> DiagnoseResult:
    """:func:`diagnose` with its options as one record."""
    if engine is None:
        with LocalEngine(default_threads()) as local:
            return run(inputs, model, out_dir, opts, local)
    plan = _plan(inputs, model, out_dir, opts)
    from fpi.model import compiled  # after the checks: a refused run loads no LightGBM

    bundle, out, timings = plan.bundle, plan.out, {}
    t0 = time.perf_counter()
    directory = _partitioned(plan.paths)
    input_files = ([] if directory is not None and "://" in directory
                   else runmeta.input_files(plan.paths, opts.progress))
    # Every output is built in a staging directory beside --out and swapped in whole at
    # the end; scratch (the ingested copy of the turns) lives inside it, removed first.
    # Beside the main thread: the compiled predictor's check (while the input is read),
    # then the attribution sample's TreeSHAP (while EM is fitted).
    with (ThreadPoolExecutor(1, thread_name_prefix="fpi-side",
                             initializer=signals_to_main_thread) as side,
          staged_output_dir(out, "diagnose", legacy=is_legacy_output) as stage,
          tempfile.TemporaryDirectory(prefix=".scratch-", dir=stage) as tmp_name):
        if isinstance(engine, LocalEngine):  # it scores in this process
            side.submit(compiled.prepare, bundle.booster)
        scratch = Path(tmp_name)
        sources, ingest_info = _sources(plan, opts, stage, scratch, engine.workers)
        if not sources:
            raise InputError(f"{', '.join(plan.paths)}: no turns to diagnose")
        timings["read"] = time.perf_counter() - t0
        timing_info: dict[str, Any] = {"budget_seconds": None, "rows_per_second": None}
        t1 = time.perf_counter()
        settings = ScoreSettings(seed=opts.seed, examples=opts.examples,
                                 attribution=opts.attribution,
                                 attribution_quota=_quota(plan, opts, sources[0], timing_info))
        ref = ModelRef.of(bundle)
        keep_loaded(ref, bundle)
        tasks = [PartitionTask(i, src, ref, settings) for i, src in enumerate(sources)]
        opts.note("predict", 0, ingest_info.turns_kept)
        shap: list[Future[np.ndarray | None]] = []
        threads = engine.threads if isinstance(engine, LocalEngine) else None
        handles, stats, em = score_night(
            engine, tasks, StatsSpec(opts.seed, opts.n_boot), _held_out(bundle)[0], opts.note,
            ingest_info.turns_kept, merged=lambda merged: shap.append(side.submit(
                _sample_contributions, merged, bundle, opts, threads)))
        night = _Night(engine, handles, stats, em)
        timings["features_predict"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        opts.note("rates", 0, None)
        rates, slice_doc, same_turns = _estimate(night, bundle, opts)
        timings["aggregate"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        contrib = _await_contributions(shap[0], stats, opts)
        attr_doc, contributions = _attribute(stats, bundle, slice_doc["top"], opts, contrib)
        attr_doc.update(requested_sample=opts.attribution_sample, **timing_info)
        opts.note("examples", 0, None)
        example_doc = render_examples(stats.examples, bundle, plan.red)
        timings["attribution"] = time.perf_counter() - t3

        summary = _summary(plan, opts, stats, ingest_info, rates, slice_doc, attr_doc,
                           example_doc)
        summary = _story(_judge(summary, plan, opts, same_turns), plan, stats)
        summary = replace(summary, run=runmeta.run_info(
            span=stats.span, inputs=input_files, summary=summary.to_dict(),
            baseline=runmeta.baseline_info(plan.base, opts.baseline),
            wall_seconds=time.perf_counter() - t0))
        doc = summary.to_dict()
        t4 = time.perf_counter()
        opts.note("writing", 0, None)
        (stage / "predictions").mkdir()
        engine.gather(engine.map(write_predictions, handles, str(stage), contributions,
                                 plan.red))
        written = {"predictions": stage / "predictions", **write_reports(doc, stage)}
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
