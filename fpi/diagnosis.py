"""Diagnose a night of logs: predictions, rates, slices, attribution, gates and reports.

The data flow, in bounded memory whatever the size of the night:

1. the inputs become one canonical Parquet file (``fpi.ingest.ingest``, bounded
   memory), unless they already are one, sorted;
2. it is read back in batches of whole sessions (context features need a turn's
   neighbours); each batch gets features, calibrated probabilities and, for
   ``--attribution all``, exact TreeSHAP contributions. Only per-turn
   probabilities, ids, slice values, a bounded attribution reservoir and a few
   example candidates are kept;
3. rates (:mod:`fpi.aggregate`), attribution (:mod:`fpi.attribution`), gates
   (:mod:`fpi.gates`) and the summary document are computed from those;
4. ``predictions.parquet``, ``summary.json``, ``report.md`` and ``report.html``
   are written into a staging directory and swapped in as one set (:mod:`fpi.files`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fpi import __version__, runmeta, slices_compare
from fpi import attribution as attr
from fpi import drift as traffic_drift
from fpi.aggregate import (
    ESTIMATOR_NAMES,
    INTERVAL_NAMES,
    _z,
    compare_rates,
    estimate_rates,
    slice_columns,
    slice_rates,
)
from fpi.errors import ExitStatus, InputError, MissingExtra, ModelError
from fpi.features import build_features
from fpi.files import (
    MARKER,
    atomic_path,
    check_output_dir,
    check_writable_file,
    staged_output_dir,
    write_text_atomic,
)
from fpi.focus_examples import ExamplePool, pick
from fpi.gates import Gate, evaluate_gates, junit_xml, load_gates, overall_status, parse_gate
from fpi.headline import headline
from fpi.metrics import labels_to_index, macro_f1_score
from fpi.numbers import stable_round
from fpi.progress import Progress, bytes_callback
from fpi.redact import ID_PREFIX, SALT_ENV, Redactor, redactor
from fpi.report import SUMMARY_SCHEMA_VERSION, write_reports
from fpi.schema import CLASSES, COMPONENTS, KEY_COLUMNS, TURN_SCHEMA

log = logging.getLogger(__name__)

#: Turns per batch (whole sessions are kept together, so batches run a little over).
BATCH_TURNS = 100_000


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def _as_list(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(inputs, str | os.PathLike):
        return [os.fspath(inputs)]
    return [os.fspath(p) for p in inputs]


def _canonical_parquet(paths: list[str]) -> Path | None:
    """The input itself when it is one canonical Parquet file sorted by session and turn."""
    if len(paths) != 1 or not paths[0].endswith(".parquet") or not Path(paths[0]).is_file():
        return None
    try:
        lf = pl.scan_parquet(paths[0])
        if lf.collect_schema() != TURN_SCHEMA:
            return None
        keys = lf.select(KEY_COLUMNS).collect()
    except pl.exceptions.PolarsError:
        return None
    if keys.height == 0:
        return None
    sid, tix = keys["session_id"], keys["turn_index"]
    prev_sid, prev_tix = sid.shift(1), tix.shift(1)
    ordered = ((sid > prev_sid) | ((sid == prev_sid) & (tix > prev_tix))).fill_null(True).all()
    return Path(paths[0]) if ordered else None


def _batches(path: Path, batch_turns: int) -> Iterator[pl.DataFrame]:
    """Batches of whole sessions from a sorted canonical Parquet file."""
    lf = pl.scan_parquet(path)
    total = lf.select(pl.len()).collect().item()
    carry: pl.DataFrame | None = None
    for offset in range(0, total, batch_turns):
        chunk = lf.slice(offset, batch_turns).collect()
        if carry is not None and carry.height:
            chunk = pl.concat([carry, chunk])
        if offset + batch_turns < total:
            # the last session may continue in the next chunk: hold it back
            last = chunk["session_id"][-1]
            tail = chunk["session_id"] == last
            carry = chunk.filter(tail)
            chunk = chunk.filter(~tail)
        else:
            carry = None
        if chunk.height:
            yield chunk
    if carry is not None and carry.height:
        yield carry


def _load_baseline(baseline: str | os.PathLike[str] | Mapping[str, Any] | None
                   ) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        return _check_baseline(dict(baseline), "baseline")
    p = Path(baseline)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: baseline summary not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: baseline is a directory; give its summary.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{p}: baseline is not a summary.json ({exc})") from None
    return _check_baseline(doc, str(p))


def _is_rate(r: Any) -> bool:
    return isinstance(r, Mapping) and all(
        isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)
        and np.isfinite(r[k]) for k in ("estimate", "low", "high"))


def _check_baseline(doc: Any, where: str) -> dict[str, Any]:
    """The baseline summary, if it has the shape this fpi compares with; else InputError."""
    if not isinstance(doc, dict) or "rates" not in doc or "schema_version" not in doc:
        raise InputError(f"{where}: baseline is not an fpi summary.json (no rates/schema_version)")
    if doc["schema_version"] != SUMMARY_SCHEMA_VERSION:
        raise InputError(f"{where}: baseline summary schema {doc['schema_version']!r} is not "
                         f"{SUMMARY_SCHEMA_VERSION}: re-run fpi diagnose on the baseline night")
    rates = doc["rates"]
    if not isinstance(rates, Mapping):
        raise InputError(f"{where}: baseline 'rates' is not an object of per-class rates")
    bad = [c for c in CLASSES if not _is_rate(rates.get(c))]
    if bad:
        raise InputError(f"{where}: baseline rates of {', '.join(bad)} are missing or not "
                         "numbers (estimate, low, high)")
    model = doc.get("model")
    if model is not None and not isinstance(model, Mapping):
        raise InputError(f"{where}: baseline 'model' is not an object")
    return doc


def bundle_id(bundle: Any) -> str:
    """A bundle's model id: its ``bundle_hash`` (the hash of its whole manifest)."""
    from fpi.model.manifest import bundle_hash

    m = bundle.manifest
    return str(m.get("bundle_hash") or bundle_hash(m))


def _short(model_id: Any) -> str:
    return str(model_id).removeprefix("sha256:")[:12] if model_id else "unknown"


def _baseline_model(base: Mapping[str, Any] | None, bundle: Any, allow_other_model: bool,
                    where: Any) -> dict[str, Any]:
    """``model_id``/``same_model`` of the baseline; InputError if another model made it."""
    if base is None:
        return {}
    theirs = (base.get("model") or {}).get("id")
    ours = bundle_id(bundle)
    same = theirs == ours
    if not same and not allow_other_model:
        src = where if isinstance(where, str | os.PathLike) else "baseline"
        raise InputError(
            f"{src}: the baseline was made with model {_short(theirs)}, this run uses "
            f"{_short(ours)}: rates of different models are not comparable; diagnose the "
            "baseline night with this model, or pass --allow-other-model")
    return {"model_id": theirs, "same_model": same}


#: Names a diagnose output directory of an older fpi (before the marker) may hold.
_LEGACY_NAMES = frozenset({"predictions.parquet", "summary.json", "report.md", "report.html",
                           "rejects.jsonl"})


def _is_legacy_output(path: Path) -> bool:
    """A diagnose output written before markers: an fpi summary.json and only our files."""
    try:
        doc = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or "rates" not in doc or "schema_version" not in doc:
        return False
    return all(p.name in _LEGACY_NAMES or p.name.endswith(".xml")
               or p.name.startswith(".fpi-diagnose-") for p in path.iterdir())


def _inside(junit: str | os.PathLike[str] | None, out: Path) -> Path | None:
    """``junit`` relative to ``out`` when it lies inside it (then it joins the set)."""
    if junit is None:
        return None
    j = Path(os.path.abspath(junit))
    try:
        rel = j.relative_to(out)
    except ValueError:
        return None
    if rel == Path(".") or rel.name == MARKER:
        raise InputError(f"--junit {junit}: names the output directory itself")
    return rel


def _parse_gates(gates: Sequence[str | Gate], gates_file: str | os.PathLike[str] | None
                 ) -> list[Gate]:
    out = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    if gates_file is not None:
        out += load_gates(gates_file)
    return out


# ---------------------------------------------------------------------------
# Streaming accumulation
# ---------------------------------------------------------------------------


@dataclass
class _Acc:
    """What the streaming pass keeps: per-turn small columns, bounded samples.

    Per-turn arrays are allocated once for the whole night (its size is known from
    the Parquet metadata): about 73 bytes a turn, and no copies when batches end.
    """

    total: int
    probs: np.ndarray = field(init=False)  # (total, k) float64
    sessions: np.ndarray = field(init=False)  # int32 session numbers
    labels: np.ndarray = field(init=False)  # int8 class index, -1 unlabelled
    #: slice values as small integer codes (4 bytes a turn), and their categories
    slice_codes: dict[str, np.ndarray] = field(default_factory=dict)
    slice_cats: dict[str, dict[str, int]] = field(default_factory=dict)
    values: list[np.ndarray] = field(default_factory=list)  # --attribution all
    reservoir: pl.DataFrame | None = None  # features + _key + _pred + _row + slices
    examples: pl.DataFrame | None = None  # canonical rows + features + _prob + _pred + _next
    rows: int = 0
    n_sessions: int = 0
    quota: int | None = None
    span: runmeta.Span | None = None  # the logs' first and last turn timestamp
    traffic: traffic_drift.TrafficCounts = field(default_factory=traffic_drift.TrafficCounts)
    pool: ExamplePool = field(default_factory=lambda: ExamplePool(0))  # focus examples

    def __post_init__(self) -> None:
        self.probs = np.zeros((self.total, len(CLASSES)))
        self.sessions = np.zeros(self.total, dtype=np.int32)
        self.labels = np.full(self.total, -1, dtype=np.int8)

    def add_slices(self, sl: pl.DataFrame, start: int) -> None:
        """Encode a batch's slice values against the categories seen so far."""
        for dim in sl.columns:
            cats = self.slice_cats.setdefault(dim, {})
            for v in sl[dim].unique(maintain_order=True).to_list():
                cats.setdefault(v, len(cats))
            codes = self.slice_codes.setdefault(dim, np.zeros(self.total, dtype=np.uint32))
            codes[start: start + sl.height] = (
                sl[dim].replace_strict(cats, return_dtype=pl.UInt32).to_numpy())

    def slices_frame(self) -> pl.DataFrame:
        """All turns' slice values as Categorical columns (gathered from the codes)."""
        cols = {}
        for dim, cats in self.slice_cats.items():
            values = pl.Series(dim, list(cats), dtype=pl.Categorical)
            cols[dim] = values.gather(self.slice_codes[dim])
        return pl.DataFrame(cols)


def _turn_view(turns: pl.DataFrame) -> pl.DataFrame:
    """The columns an example shows, plus the next turn's text (same session)."""
    asr, nlu, res, fb = (pl.col(c) for c in ("asr", "nlu", "result", "feedback"))
    return turns.select(
        "session_id", "turn_index",
        asr.struct.field("text").alias("heard_text"),
        asr.struct.field("confidence").alias("heard_confidence"),
        asr.struct.field("nbest").alias("heard_nbest"),
        nlu.struct.field("domain").alias("nlu_domain"),
        nlu.struct.field("intent").alias("nlu_intent"),
        nlu.struct.field("confidence").alias("nlu_confidence"),
        nlu.struct.field("slots").alias("nlu_slots"),
        pl.col("er").struct.field("entities").alias("er_entities"),
        res.struct.field("status").alias("result_status"),
        res.struct.field("action").alias("result_action"),
        res.struct.field("response_text").alias("result_response"),
        fb.struct.field("barge_in").alias("next_barge_in"),
        fb.struct.field("explicit").alias("next_explicit"),
        asr.struct.field("text").shift(-1).over("session_id").alias("next_text"),
        asr.struct.field("text").shift(1).over("session_id").alias("prev_text"),
        pl.col("label").struct.field("failure_point").alias("label"),
    )


def _keep_examples(acc: _Acc, view: pl.DataFrame, feats: pl.DataFrame, probs: np.ndarray,
                   pred: np.ndarray, per_class: int) -> None:
    if per_class <= 0:
        return
    pmax = probs[np.arange(len(pred)), pred]
    # only each failure class's most confident turns of this batch can make the cut
    rows = []
    for c in range(1, probs.shape[1]):
        idx = np.flatnonzero(pred == c)
        rows.append(idx[np.argsort(-pmax[idx], kind="stable")[:per_class]])
    keep = np.sort(np.concatenate(rows))
    view, feats, pmax, pred = view[keep], feats[keep], pmax[keep], pred[keep]
    cand = view.with_columns(
        feats.drop(KEY_COLUMNS).to_struct("_feats"),
        pl.Series("_prob", pmax), pl.Series("_pred", pred.astype(np.int64)))
    if acc.examples is not None:
        cand = pl.concat([acc.examples, cand], how="vertical_relaxed")
    acc.examples = (cand.sort(["_prob", "session_id", "turn_index"],
                              descending=[True, False, False])
                    .group_by("_pred", maintain_order=True).head(per_class)
                    .select(cand.columns))


def _prediction_frame(batch: pl.DataFrame, probs: np.ndarray, pred: np.ndarray,
                      red: Redactor | None = None) -> pl.DataFrame:
    keys = batch.select(KEY_COLUMNS)
    if red is not None:
        keys = keys.with_columns(red.ids(keys["session_id"]))
    return keys.with_columns(
        pl.Series("predicted", np.asarray(CLASSES, dtype=object)[pred], dtype=pl.String),
        *[pl.Series(f"p_{c}", probs[:, i]) for i, c in enumerate(CLASSES)],
    )


def _stream(path: Path, bundle: Any, *, total: int, mode: str, batch_turns: int,
            quota_fn: Callable[
        [pl.DataFrame], int], examples: int, seed: int, predictions: Path,
        progress: Callable[[int], None] | None, red: Redactor | None = None) -> _Acc:
    import pyarrow.parquet as pq

    acc = _Acc(total)
    acc.pool = ExamplePool(2 if examples > 0 else 0)
    rng = np.random.default_rng(seed)
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _batches(path, batch_turns):
            start = acc.rows
            _one_batch(acc, batch, bundle, mode, quota_fn, examples, rng, acc.quota)
            probs = acc.probs[start: acc.rows]
            table = _prediction_frame(batch, probs, probs.argmax(axis=1), red).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(predictions, table.schema, compression="zstd")
            writer.write_table(table)
            if progress is not None:
                progress(acc.rows)
    finally:
        if writer is not None:
            writer.close()
    return acc


def _one_batch(acc: _Acc, batch: pl.DataFrame, bundle: Any, mode: str,
               quota_fn: Callable[[pl.DataFrame], int], examples: int,
               rng: np.random.Generator, quota: int | None) -> None:
    """Features, probabilities and what the run keeps, for one batch of whole sessions."""
    feats = build_features(batch)
    probs = bundle.predict_proba(feats)
    pred = probs.argmax(axis=1)
    n = batch.height
    start = acc.rows
    acc.probs[start: start + n] = probs
    sess = batch["session_id"].rle_id().cast(pl.Int32).to_numpy() + acc.n_sessions
    acc.sessions[start: start + n] = sess
    acc.n_sessions = int(sess[-1]) + 1
    acc.span = runmeta.widen(acc.span, batch["timestamp"])
    acc.traffic.add(batch)
    sl = slice_columns(batch)
    acc.add_slices(sl, start)
    acc.labels[start: start + n] = labels_to_index(batch["label"].struct.field("failure_point"))
    if mode == "all":
        contrib = bundle.contributions(feats)
        acc.values.append(attr.for_class(attr.grouped(contrib, bundle.features), pred))
    elif mode == "sample":
        if quota is None:
            quota = quota_fn(feats)
        keys = rng.random(n)
        keep = attr.bottom_k(keys, pred, quota)
        # slice columns prefixed: a feature may share a dimension's name
        cand = pl.concat([feats[keep], sl[keep].select(pl.all().name.prefix("_slice_"))],
                         how="horizontal").with_columns(
            pl.Series("_key", keys[keep]), pl.Series("_pred", pred[keep].astype(np.int64)),
            pl.Series("_row", np.arange(acc.rows, acc.rows + n)[keep]))
        if acc.reservoir is not None:
            cand = pl.concat([acc.reservoir, cand])
        sel = attr.bottom_k(cand["_key"].to_numpy(), cand["_pred"].to_numpy(), quota)
        acc.reservoir = cand[sel]
    acc.quota = quota
    view = _turn_view(batch)
    _keep_examples(acc, view, feats, probs, pred, examples)
    acc.pool.add(view, feats, probs, sl)
    acc.rows += n


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------


def _runner_up(text: str | None, nbest: list[dict[str, Any]] | None) -> str | None:
    for alt in nbest or []:
        if alt.get("text") is not None and alt.get("text") != text:
            return str(alt["text"])
    return None


def _example(row: Mapping[str, Any], probs_row: float, pred: int, contrib: np.ndarray,
             features: Sequence[Any], red: Redactor | None) -> dict[str, Any]:
    """One example turn; with ``red`` every log string that can carry user content is
    masked and the session id pseudonymised (categorical fields stay)."""
    def txt(v: Any) -> Any:
        return v if red is None else red.text(v)

    grouped = contrib @ attr.group_matrix(features)
    return {
        "session_id": row["session_id"] if red is None else red.id(row["session_id"]),
        "turn_index": int(row["turn_index"]),
        "predicted": CLASSES[pred],
        "probability": stable_round(float(probs_row), 6),
        "label": row["label"],
        "heard": {"text": txt(row["heard_text"]), "confidence": row["heard_confidence"],
                  "runner_up": txt(_runner_up(row["heard_text"], row["heard_nbest"]))},
        "understood": {"domain": row["nlu_domain"], "intent": row["nlu_intent"],
                       "confidence": row["nlu_confidence"],
                       "slots": [{"name": s["name"], "value": txt(s["value"])}
                                 for s in row["nlu_slots"] or []]},
        "resolved": [{"mention": txt(e["mention"]), "resolved_name": txt(e["resolved_name"]),
                      "status": e["status"], "score": e["score"]}
                     for e in row["er_entities"] or []],
        "answered": {"status": row["result_status"], "action": txt(row["result_action"]),
                     "response": txt(row["result_response"])},
        "next": {"barge_in": row["next_barge_in"], "explicit": row["next_explicit"],
                 "text": txt(row["next_text"])},
        "previous": {"text": txt(row.get("prev_text"))},
        "components": {g: stable_round(float(grouped[j]), 4) for j, g in enumerate(COMPONENTS)},
        "features": attr.top_features(contrib, features, row["_feats"], n=5),
    }


def _examples(acc: _Acc, bundle: Any, red: Redactor | None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in CLASSES[1:]}
    if acc.examples is None or acc.examples.height == 0:
        return out
    ex = acc.examples.sort(["_pred", "_prob", "session_id", "turn_index"],
                           descending=[False, True, False, False])
    contrib = bundle.contributions(ex.select(*KEY_COLUMNS, pl.col("_feats").struct.unnest()))
    for i, row in enumerate(ex.iter_rows(named=True)):
        p = int(row["_pred"])
        out[CLASSES[p]].append(_example(row, row["_prob"], p, contrib[i, p], bundle.features,
                                        red))
    return out


def _render_focus(rows: pl.DataFrame, bundle: Any, red: Redactor | None
                  ) -> list[dict[str, Any]]:
    """Pool rows (with ``_kind``) as example dicts, each with its attribution."""
    contrib = bundle.contributions(rows.select(*KEY_COLUMNS, pl.col("_feats").struct.unnest()))
    return [{"kind": row["_kind"],
             **_example(row, row["_prob"], int(row["_pred"]), contrib[i, int(row["_pred"])],
                        bundle.features, red)}
            for i, row in enumerate(rows.iter_rows(named=True))]


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _contributions(bundle: Any, feats: pl.DataFrame, note: Callable[[str, int, int], None],
                   chunk: int = 200) -> np.ndarray:
    """Exact TreeSHAP in chunks (each row's values are independent), reporting progress."""
    parts = []
    for start in range(0, feats.height, chunk):
        note("attribution", start, feats.height)
        parts.append(bundle.contributions(feats[start: start + chunk]))
    note("attribution", feats.height, feats.height)
    if not parts:
        return np.asarray(bundle.contributions(feats))
    return np.concatenate(parts, axis=0)


def _write_predictions(streamed: Path, rows: np.ndarray, values: np.ndarray,
                       target: Path) -> None:
    """Join the attributed rows' contributions onto the streamed predictions (streaming)."""
    contrib = pl.DataFrame({
        "_row": rows.astype(np.uint32),
        **{f"contrib_{g}": values[:, j] for j, g in enumerate(attr.GROUP_COLUMNS)},
    }, schema={"_row": pl.UInt32, **{f"contrib_{g}": pl.Float64 for g in attr.GROUP_COLUMNS}})
    lf = (pl.scan_parquet(streamed).with_row_index("_row")
          .join(contrib.lazy(), on="_row", how="left", maintain_order="left").drop("_row"))
    with atomic_path(target) as tmp:
        lf.sink_parquet(tmp, compression="zstd")


def _against_baseline(summary: dict[str, Any], base: Mapping[str, Any],
                      same_turns: list[list[dict[str, str]]], confidence: float) -> None:
    """Slices against the same slices of the baseline night, and traffic drift."""
    summary["slices"]["vs_baseline"] = slices_compare.compare_slices(
        summary, base, groups=same_turns, confidence=confidence,
        alpha=summary["slices"]["alpha"])
    summary["drift"] = traffic_drift.drift_doc(summary, base)


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


def _load_model(model: Any) -> Any:
    if isinstance(model, str | os.PathLike):
        from fpi.model import load_bundle

        return load_bundle(model)
    return model


def _runtime_versions() -> dict[str, str]:
    from fpi.model.bundle import runtime_versions

    return runtime_versions()


def _model_info(bundle: Any) -> dict[str, Any]:
    m = bundle.manifest
    tr = m.get("training", {})
    metrics = (m.get("heldout") or {}).get("metrics") or {}
    return {
        "id": bundle_id(bundle),
        "training_data": tr.get("fingerprint"),
        "fpi_version": m.get("fpi_version"),
        "format_version": m.get("format_version"),
        "training_turns": tr.get("labelled_turns", tr.get("turns")),
        "class_prior": tr.get("class_prior"),
        "heldout": {"macro_f1": metrics.get("macro_f1"), "accuracy": metrics.get("accuracy")},
    }


#: Default size of the attribution sample: about 5-15 s of exact TreeSHAP on 2 cores.
DEFAULT_ATTRIBUTION_SAMPLE = 1200


def diagnose(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    model: str | os.PathLike[str] | Any,
    out_dir: str | os.PathLike[str],
    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    gates: Sequence[str | Gate] = (),
    gates_file: str | os.PathLike[str] | None = None,
    junit: str | os.PathLike[str] | None = None,
    attribution: str = "sample",
    attribution_sample: int = DEFAULT_ATTRIBUTION_SAMPLE,
    attribution_budget: float | None = None,
    redact: bool = False,
    redact_salt: str | None = None,
    examples: int = 3,
    confidence: float = 0.95,
    n_boot: int = 200,
    min_support: int = 50,
    seed: int = 0,
    allow_other_model: bool = False,
    batch_turns: int = BATCH_TURNS,
    format: str | None = None,
    progress: Progress | None = None,
    allow_truncated: bool = False,
) -> DiagnoseResult:
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
    baseline : a previous run's ``summary.json`` (path or dict): per-class change
        and ``baseline`` terms in gates. It must have been made with the same model
        bundle (same ``model.id``) unless ``allow_other_model``.
    gates, gates_file : gate expressions (:mod:`fpi.gates`) and/or a TOML file of gates.
    junit : also write the gates as JUnit XML there.
    attribution : ``sample`` (exact TreeSHAP on a stratified sample), ``all`` or ``none``.
    attribution_sample : size of the stratified attribution sample (deterministic for a
        seed, so the same data give the same report).
    attribution_budget : if given, size the sample from this many seconds of attribution
        at the measured throughput instead (faster machines attribute more turns; the
        report then depends on the machine's speed).
    redact : mask every log field that can carry user content (text, slot values,
        entities, actions, rejected records) in every output and replace session ids
        by salted pseudonyms (:mod:`fpi.redact`).
    redact_salt : the pseudonyms' salt (default ``$FPI_REDACT_SALT``, else random per
        run); only used with ``redact``.
    examples : example turns per failure class.
    confidence, n_boot, min_support, seed : interval level, bootstrap replicates,
        minimum slice size, and the seed of every random draw.
    batch_turns : turns per streamed batch (memory vs. overhead).
    progress : optional ``progress(stage, done, total)`` (:mod:`fpi.progress`).
    allow_truncated : keep the readable part of a truncated or corrupt input file
        (with a warning) instead of raising :class:`~fpi.errors.TruncatedInput`.

    Returns
    -------
    DiagnoseResult
        Check ``.exit_status``: the library does not raise when a gate fails.

    Raises
    ------
    InputError, SchemaError, ModelError
        Bad inputs, gates or baseline; data that does not fit the model; a bad bundle.
    """
    if attribution not in attr.MODES:
        raise InputError(f"--attribution must be one of {', '.join(attr.MODES)}, "
                         f"not {attribution!r}")
    paths = _as_list(inputs)
    if not paths:
        raise InputError("no input given")
    gate_list = _parse_gates(gates, gates_file)
    if junit is not None:  # refused now, not after the whole night was scored
        check_writable_file(Path(junit))
    base = _load_baseline(baseline)
    if base is None and any(g.uses_baseline for g in gate_list):
        g = next(g for g in gate_list if g.uses_baseline)
        raise InputError(f"gate {g.expr!r} compares with the baseline: give --baseline "
                         "PREVIOUS/summary.json")
    red = redactor(redact_salt) if redact else None
    bundle = _load_model(model)
    classes = tuple(bundle.classes)
    if classes != CLASSES:
        raise ModelError(f"model classes {classes} are not {CLASSES}: retrain with fpi train")
    base_info = _baseline_model(base, bundle, allow_other_model, baseline)
    out = check_output_dir(out_dir, "diagnose", legacy=_is_legacy_output)
    junit_inside = _inside(junit, out)
    timings: dict[str, float] = {}

    def note(step: str, n: int, total: int | None = None) -> None:
        if progress is not None:
            progress(step, n, total)

    t0 = time.perf_counter()
    input_files = runmeta.input_files(paths, progress)
    # Every output is built in a staging directory beside --out and swapped in whole at
    # the end; scratch (the streamed copy of the turns) lives inside it, removed first.
    with (staged_output_dir(out, "diagnose", legacy=_is_legacy_output) as stage,
          tempfile.TemporaryDirectory(prefix=".scratch-", dir=stage) as tmp_name):
        scratch = Path(tmp_name)
        source = _canonical_parquet(paths)
        if source is not None:
            n_rows = pl.scan_parquet(source).select(pl.len()).collect().item()
            ingest_info: dict[str, Any] = {"records_read": n_rows, "turns_kept": n_rows,
                                           "rejected": 0, "rejects_by_rule": {},
                                           "rejects_file": None}
        else:
            from fpi.ingest import ingest

            source = scratch / "turns.parquet"
            rejects = stage / "rejects.jsonl"
            rep = ingest(paths, source, format=format, rejects_path=rejects,
                         redact_rejects=None if red is None else red.reject,
                         allow_truncated=allow_truncated,
                         progress=bytes_callback(progress))
            ingest_info = {"records_read": rep.records_read, "turns_kept": rep.turns_kept,
                           "rejected": rep.rejected, "rejects_by_rule": dict(rep.rejects_by_rule),
                           "rejects_file": rejects.name if rep.rejected else None}
            if not rep.rejected:
                rejects.unlink(missing_ok=True)
        timings["read"] = time.perf_counter() - t0
        bundle.check_compatible(pl.scan_parquet(source))

        timing_info: dict[str, Any] = {"budget_seconds": None, "rows_per_second": None}

        def quota_fn(feats: pl.DataFrame) -> int:
            if attribution_budget is None:
                return attr.per_class_quota(attribution_sample)
            t = attr.measure(bundle, feats)
            timing_info.update(budget_seconds=attribution_budget,
                               rows_per_second=round(t.rows_per_second, 1))
            return attr.per_class_quota(attr.sample_size(t, attribution_budget))

        t1 = time.perf_counter()
        scratch_predictions = scratch / "predictions.parquet"
        total = pl.scan_parquet(source).select(pl.len()).collect().item()
        note("predict", 0, total)
        acc = _stream(source, bundle, total=total, mode=attribution, batch_turns=batch_turns,
                      quota_fn=quota_fn, examples=examples, seed=seed,
                      predictions=scratch_predictions,
                      progress=(lambda n: note("predict", n, total)), red=red)
        if source.parent == scratch:
            source.unlink()  # the ingested copy is no longer needed
        timings["features_predict"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        note("rates", 0, None)
        if acc.rows != acc.total:  # pragma: no cover - the file changed under us
            raise InputError(f"{source}: read {acc.rows} turns, expected {acc.total}")
        probs, sessions, labels = acc.probs, acc.sessions, acc.labels
        pred = probs.argmax(axis=1)
        slices = acc.slices_frame()
        prior = bundle.manifest["training"]["class_prior"]
        train_prior = np.array([prior[c] for c in CLASSES], dtype=np.float64)
        heldout = bundle.manifest.get("heldout") or {}
        conf_arr, soft_arr = (None if heldout.get(key) is None
                              else np.asarray(heldout[key], dtype=np.float64)
                              for key in ("confusion", "soft_confusion"))
        rates = estimate_rates(probs, train_prior=train_prior, confusion=conf_arr,
                               soft_confusion=soft_arr, groups=sessions,
                               confidence=confidence, n_boot=n_boot, seed=seed)
        rates_dict = rates.to_dict()
        slice_doc = slice_rates(slices, probs, rates, train_prior=train_prior,
                                confusion=conf_arr, soft_confusion=soft_arr,
                                min_support=min_support)
        same_turns = slices_compare.same_turn_groups(slices, min_support)
        slice_doc.update(top=slices_compare.collapse(slice_doc["top"], same_turns),
                         same_turns=same_turns)
        timings["aggregate"] = time.perf_counter() - t2

        # Attribution
        t3 = time.perf_counter()
        n = len(pred)
        predicted_counts = np.bincount(pred, minlength=len(CLASSES))
        contrib_rows = np.zeros(0, dtype=np.int64)
        contrib_values = np.zeros((0, len(attr.GROUP_COLUMNS)))
        z = _z(confidence)
        if attribution == "all":
            values = np.vstack(acc.values)
            contrib_rows, contrib_values = np.arange(n), values
            attr_doc = attr.summarize(values, pred, predicted_counts, mode="all", slices=slices,
                                      slice_targets=slice_doc["top"], z=z)
        elif attribution == "sample" and acc.reservoir is not None:
            res = acc.reservoir.sort("_row")
            feat_names = list(bundle.input_columns)
            rpred = res["_pred"].to_numpy()
            contrib = _contributions(bundle, res.select([*KEY_COLUMNS, *feat_names]), note)
            values = attr.for_class(attr.grouped(contrib, bundle.features), rpred)
            contrib_rows, contrib_values = res["_row"].to_numpy(), values
            attr_doc = attr.summarize(values, rpred, predicted_counts, mode="sample",
                                      slices=res.select(pl.col(f"_slice_{c}").alias(c)
                                                        for c in slices.columns),
                                      slice_targets=slice_doc["top"], z=z)
        else:
            attr_doc = attr.summarize(np.zeros((0, len(attr.GROUP_COLUMNS))),
                                      np.zeros(0, dtype=np.int64), predicted_counts, mode="none")
        attr_doc.update(requested_sample=attribution_sample, **timing_info)
        note("examples", 0, None)
        example_doc = _examples(acc, bundle, red)
        timings["attribution"] = time.perf_counter() - t3

        labelled = labels >= 0
        label_doc = None
        if labelled.any():
            y, p = labels[labelled], pred[labelled]
            label_doc = {
                "turns": int(labelled.sum()),
                "accuracy": stable_round(float(np.mean(y == p)), 6),
                "macro_f1": stable_round(macro_f1_score(y, p), 6),
                "true_rates": {c: stable_round(float(np.mean(y == i)), 6)
                               for i, c in enumerate(CLASSES)},
            }

        failure = {
            "estimate": stable_round(1 - rates_dict["correct"]["estimate"], 6),
            "low": stable_round(1 - rates_dict["correct"]["high"], 6),
            "high": stable_round(1 - rates_dict["correct"]["low"], 6),
            "count": int(n - rates_dict["correct"]["count"]),
            "count_rate": stable_round(1 - rates_dict["correct"]["count_rate"], 6),
        }
        summary: dict[str, Any] = {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "fpi_version": __version__,
            "versions": _runtime_versions(),
            "inputs": [Path(p).name for p in paths],
            "turns": n,
            "sessions": acc.n_sessions,
            "ingest": ingest_info,
            "model": _model_info(bundle),
            "method": {
                "estimator": ESTIMATOR_NAMES[rates.estimator],
                "estimator_key": rates.estimator,
                "weight": None if rates.weight is None else round(float(rates.weight[0]), 6),
                "interval": INTERVAL_NAMES[rates.estimator],
                "alternatives": {"count_rate": ESTIMATOR_NAMES["cc"],
                                 "mean_probability": ESTIMATOR_NAMES["pcc"],
                                 "acc": ESTIMATOR_NAMES["acc"], "pacc": ESTIMATOR_NAMES["pacc"],
                                 "em": ESTIMATOR_NAMES["em"]},
                "confidence": confidence,
                "bootstrap": n_boot,
                "seed": seed,
            },
            "rates": rates_dict,
            "failure": failure,
            "labels": label_doc,
            "slices": slice_doc,
            "traffic": acc.traffic.to_dict(slices, sessions),
            "attribution": attr_doc,
            "baseline": None,
            "gates": [],
            "gate_status": "none",
            "examples": example_doc,
            "redacted": redact,
            "redaction": None if red is None else red.describe(),
        }
        if base is not None:
            summary["baseline"] = {
                "inputs": base.get("inputs", []),
                "turns": base.get("turns"),
                **base_info,
                "changes": compare_rates(rates_dict, base["rates"], confidence=confidence),
            }
            _against_baseline(summary, base, same_turns, confidence)
        results = [r.to_dict() for r in evaluate_gates(gate_list, summary, base)]
        summary["gates"] = results
        summary["gate_status"] = overall_status(results)
        summary["headline"] = headline(summary)
        summary["focus_examples"] = pick(acc.pool, summary,
                                         lambda rows: _render_focus(rows, bundle, red))

        summary["run"] = runmeta.run_info(
            span=acc.span, inputs=input_files, summary=summary,
            baseline=runmeta.baseline_info(base, baseline),
            wall_seconds=time.perf_counter() - t0)
        t4 = time.perf_counter()
        note("writing", 0, None)
        _write_predictions(scratch_predictions, contrib_rows, contrib_values,
                           stage / "predictions.parquet")
        written = {"predictions": stage / "predictions.parquet", **write_reports(summary, stage)}
        if junit_inside is not None:
            (stage / junit_inside).parent.mkdir(parents=True, exist_ok=True)
            written["junit"] = write_text_atomic(stage / junit_inside, junit_xml(results))
        if ingest_info["rejects_file"]:
            written["rejects"] = stage / "rejects.jsonl"
    files = {k: out / p.relative_to(stage) for k, p in written.items()}
    if junit is not None and junit_inside is None:
        files["junit"] = write_text_atomic(junit, junit_xml(results))
    timings["write"] = time.perf_counter() - t4
    log.info("diagnose timings: %s", {k: round(v, 2) for k, v in timings.items()})
    return DiagnoseResult(summary=summary, out_dir=out, files=files, timings=timings)


# ---------------------------------------------------------------------------
# One turn
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """One turn's call: probabilities, per-component contributions, top features."""

    session_id: str
    turn_index: int
    predicted: str
    probabilities: dict[str, float]
    #: class -> component -> contribution (log-odds), plus ``bias``
    components: dict[str, dict[str, float]]
    features: list[dict[str, Any]]
    turn: dict[str, Any]
    #: every feature's contribution toward the predicted class, its value, and the bias
    feature_names: tuple[str, ...] = ()
    feature_values: tuple[Any, ...] = ()
    contributions: tuple[float, ...] = ()
    bias: float = 0.0

    def to_shap(self) -> Any:
        """The call as a :class:`shap.Explanation` (e.g. for ``shap.plots.waterfall``).

        Needs the ``shap`` extra (``pip install 'fpi[shap]'``); raises
        :class:`~fpi.errors.MissingExtra` without it.
        """
        try:
            import shap
        except ImportError as exc:
            raise MissingExtra(f"Explanation.to_shap needs shap, which is not installed "
                               f"({exc}): pip install 'fpi[shap]'") from exc

        return shap.Explanation(values=np.asarray(self.contributions), base_values=self.bias,
                                data=np.asarray(self.feature_values, dtype=object),
                                feature_names=list(self.feature_names))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"session_id": self.session_id, "turn_index": self.turn_index,
                "predicted": self.predicted, "probabilities": self.probabilities,
                "components": self.components, "features": self.features, "turn": self.turn}


def _resolve_session(lf: pl.LazyFrame, session_id: str, salt: str | None) -> str:
    """The real id behind a pseudonym (``anon-...``); any other id unchanged."""
    if not session_id.startswith(ID_PREFIX):
        return session_id
    if lf.filter(pl.col("session_id") == session_id).select(pl.len()).collect().item():
        return session_id  # a real id that happens to look like a pseudonym
    red = redactor(salt)
    if not red.stable:
        raise InputError(f"session {session_id!r} is a pseudonym from a redacted report: give "
                         f"the salt it was made with ({SALT_ENV} or --redact-salt)")
    ids = lf.select(pl.col("session_id").unique()).collect()["session_id"]
    found = ids.filter(red.ids(ids) == session_id)
    if found.len() == 0:
        raise InputError(f"session {session_id!r} is not in the input under this salt "
                         f"(salt id {red.describe()['salt_id']})")
    return str(found[0])


def explain(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    model: str | os.PathLike[str] | Any,
    session_id: str,
    turn_index: int,
    top: int = 8,
    redact_salt: str | None = None,
    allow_truncated: bool = False,
) -> Explanation:
    """Explain the call on one turn (its session supplies the context features).

    ``session_id`` may also be a pseudonym from a redacted report (``anon-...``):
    the session is then found with the salt the report was made with
    (``redact_salt``, else ``$FPI_REDACT_SALT``).
    """
    from fpi.ingest import read_traces

    bundle = _load_model(model)
    paths = _as_list(inputs)
    canonical = _canonical_parquet(paths)
    if canonical is not None:
        # ingested Parquet: read only the session's rows
        lf = pl.scan_parquet(canonical)
        bundle.check_compatible(lf)
    else:
        turns, _ = read_traces(paths, allow_truncated=allow_truncated)
        bundle.check_compatible(turns)
        lf = turns.lazy()
    session_id = _resolve_session(lf, session_id, redact_salt)
    session = lf.filter(pl.col("session_id") == session_id).collect()
    if session.height == 0:
        raise InputError(f"session {session_id!r} is not in the input")
    pos = session["turn_index"].to_list()
    if turn_index not in pos:
        raise InputError(f"session {session_id!r} has no turn {turn_index} "
                         f"(its turns: {', '.join(map(str, pos[:20]))})")
    i = pos.index(turn_index)
    feats = build_features(session)
    probs = bundle.predict_proba(feats)[i]
    contrib = bundle.contributions(feats[i: i + 1])[0]
    p = int(probs.argmax())
    g = contrib @ attr.group_matrix(bundle.features)
    row = {**_turn_view(session).row(i, named=True), "_feats": feats.row(i, named=True)}
    ex = _example(row, probs[p], p, contrib[p], bundle.features, red=None)
    return Explanation(
        session_id=session_id, turn_index=turn_index, predicted=CLASSES[p],
        probabilities={c: stable_round(float(probs[k]), 6) for k, c in enumerate(CLASSES)},
        components={c: {col: stable_round(float(g[k, j]), 4) for j, col in
                        enumerate(attr.GROUP_COLUMNS)} for k, c in enumerate(CLASSES)},
        features=attr.top_features(contrib[p], bundle.features, row["_feats"], n=top),
        turn={k: v for k, v in ex.items() if k not in ("components", "features")},
        feature_names=tuple(f.name for f in bundle.features),
        feature_values=tuple(row["_feats"].get(f.name) for f in bundle.features),
        contributions=tuple(float(v) for v in contrib[p, :-1]),
        bias=float(contrib[p, -1]),
    )
