"""The streaming pass: batches of whole sessions scored, and what the run keeps of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from fpi import runmeta
from fpi.diagnose import attribution as attr
from fpi.diagnose import drift as traffic_drift
from fpi.diagnose.examples import ExamplePool
from fpi.diagnose.inputs import batches
from fpi.diagnose.rates import slice_columns
from fpi.features import build_features
from fpi.metrics import labels_to_index
from fpi.redact import Redactor
from fpi.schema import CLASSES, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.model import ModelBundle


@dataclass
class StreamState:
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


def turn_view(turns: pl.DataFrame) -> pl.DataFrame:
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


def _keep_examples(state: StreamState, view: pl.DataFrame, feats: pl.DataFrame, probs: np.ndarray,
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
    if state.examples is not None:
        cand = pl.concat([state.examples, cand], how="vertical_relaxed")
    state.examples = (cand.sort(["_prob", "session_id", "turn_index"],
                              descending=[True, False, False])
                    .group_by("_pred", maintain_order=True).head(per_class)
                    .select(cand.columns))


def prediction_frame(batch: pl.DataFrame, probs: np.ndarray, pred: np.ndarray,
                      red: Redactor | None = None) -> pl.DataFrame:
    keys = batch.select(KEY_COLUMNS)
    if red is not None:
        keys = keys.with_columns(red.ids(keys["session_id"]))
    return keys.with_columns(
        pl.Series("predicted", np.asarray(CLASSES, dtype=object)[pred], dtype=pl.String),
        *[pl.Series(f"p_{c}", probs[:, i]) for i, c in enumerate(CLASSES)],
    )


def score_stream(path: Path, bundle: ModelBundle, *, total: int, mode: str, batch_turns: int,
            quota_fn: Callable[
        [pl.DataFrame], int], examples: int, seed: int, predictions: Path,
        progress: Callable[[int], None] | None, red: Redactor | None = None) -> StreamState:
    import pyarrow.parquet as pq

    state = StreamState(total)
    state.pool = ExamplePool(2 if examples > 0 else 0)
    rng = np.random.default_rng(seed)
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches(path, batch_turns):
            start = state.rows
            _one_batch(state, batch, bundle, mode, quota_fn, examples, rng, state.quota)
            probs = state.probs[start: state.rows]
            table = prediction_frame(batch, probs, probs.argmax(axis=1), red).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(predictions, table.schema, compression="zstd")
            writer.write_table(table)
            if progress is not None:
                progress(state.rows)
    finally:
        if writer is not None:
            writer.close()
    return state


def _one_batch(state: StreamState, batch: pl.DataFrame, bundle: ModelBundle, mode: str,
               quota_fn: Callable[[pl.DataFrame], int], examples: int,
               rng: np.random.Generator, quota: int | None) -> None:
    """Features, probabilities and what the run keeps, for one batch of whole sessions."""
    feats = build_features(batch)
    probs = bundle.predict_proba(feats)
    pred = probs.argmax(axis=1)
    n = batch.height
    start = state.rows
    state.probs[start: start + n] = probs
    sess = batch["session_id"].rle_id().cast(pl.Int32).to_numpy() + state.n_sessions
    state.sessions[start: start + n] = sess
    state.n_sessions = int(sess[-1]) + 1
    state.span = runmeta.widen(state.span, batch["timestamp"])
    state.traffic.add(batch)
    sl = slice_columns(batch)
    state.add_slices(sl, start)
    state.labels[start: start + n] = labels_to_index(batch["label"].struct.field("failure_point"))
    if mode == "all":
        contrib = bundle.contributions(feats)
        state.values.append(attr.for_class(attr.grouped(contrib, bundle.features), pred))
    elif mode == "sample":
        if quota is None:
            quota = quota_fn(feats)
        keys = rng.random(n)
        keep = attr.bottom_k(keys, pred, quota)
        # slice columns prefixed: a feature may share a dimension's name
        cand = pl.concat([feats[keep], sl[keep].select(pl.all().name.prefix("_slice_"))],
                         how="horizontal").with_columns(
            pl.Series("_key", keys[keep]), pl.Series("_pred", pred[keep].astype(np.int64)),
            pl.Series("_row", np.arange(state.rows, state.rows + n)[keep]))
        if state.reservoir is not None:
            cand = pl.concat([state.reservoir, cand])
        sel = attr.bottom_k(cand["_key"].to_numpy(), cand["_pred"].to_numpy(), quota)
        state.reservoir = cand[sel]
    state.quota = quota
    view = turn_view(batch)
    _keep_examples(state, view, feats, probs, pred, examples)
    state.pool.add(view, feats, probs, sl)
    state.rows += n

