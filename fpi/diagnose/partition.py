"""Scoring one partition of whole sessions, and the small statistics that merge on the driver.

Every function here that an engine runs (:func:`score_partition`, :func:`partition_stats`,
:func:`em_step`) is module-level and pure: its inputs are picklable records and its output
depends only on them, so a :class:`~fpi.engine.LocalEngine` over the batches of one file
and a Dask cluster over part files give the same statistics. The driver's side is
:func:`merge_stats` (sums, and re-selection of the bounded samples) and :func:`fit_em`
(EM prior adjustment, one ``em_step`` round per iteration; probabilities stay in the
handles)::

    tasks = [PartitionTask(i, src, ModelRef.of(bundle), settings) for i, src in ...]
    handles = engine.map(score_partition, tasks)
    stats = merge_stats(engine.gather(engine.map(partition_stats, handles, spec)))
    stats = fetch_chosen(engine, handles, stats)
    em = fit_em(engine, handles, train_prior)

What makes the merge independent of the partitioning:

- counts, probability sums, slice sums and the labelled confusion are sums;
- the session bootstrap's Poisson(1) weights come from ``hash(session, seed, replicate)``
  (:func:`session_weights`), so every partitioning draws the same replicates, and a
  partition returns its per-replicate weighted sums;
- the attribution sample keeps the turns with the lowest ``hash(session, turn, seed)``
  per predicted class: each partition keeps its lowest, the driver the lowest of the union;
- examples are the top-N per predicted class by probability, ties by session and turn.

The samples travel in two rounds: :func:`partition_stats` sends each candidate's key and
ranking columns only; once the driver has chosen (:func:`merge_stats`),
:func:`fetch_chosen` maps :func:`fetch_rows` over the handles for the chosen rows'
features and example text.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import zstandard

from fpi import __version__, runmeta
from fpi.diagnose import attribution as attr
from fpi.diagnose.drift import TrafficCounts
from fpi.diagnose.examples import ExamplePool, turn_view_rows
from fpi.diagnose.rates import (
    RateTable,
    SliceSums,
    Strata,
    rates_from_sums,
    slice_columns,
    stratum_sums,
)
from fpi.diagnose.slices_compare import Fingerprints
from fpi.diagnose.summary import LabelMetrics
from fpi.errors import ModelError
from fpi.features import build_features
from fpi.hashing import combine, hash_series, unit_interval
from fpi.metrics import labels_to_index, strata_values
from fpi.progress import Progress, report
from fpi.redact import Redactor
from fpi.schema import CLASSES, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.engine import Engine
    from fpi.model import ModelBundle

#: Seed of the per-turn keys whose sums fingerprint a slice's turns.
_FINGERPRINT_SEED = 14
#: Replicates per chunk of the bootstrap's (replicates x sessions) weight matrix.
_BOOT_CHUNK = 16


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """The model a worker loads: where, and what the driver expects it to be."""

    path: str
    bundle_hash: str
    fpi_version: str

    @classmethod
    def of(cls, bundle: ModelBundle) -> ModelRef:
        """The driver's reference to a loaded bundle (a bundle never saved has no path:
        only this process can use it, through :func:`keep_loaded`)."""
        from fpi.diagnose.baseline import bundle_id

        return cls("" if bundle.path is None else str(bundle.path), bundle_id(bundle),
                   __version__)


@dataclass(frozen=True)
class PartitionSource:
    """Where a partition's turns are: a canonical Parquet file (path or fsspec URL) and
    a row range of whole sessions (``length=None``: to the end: a whole part file)."""

    path: str
    offset: int = 0
    length: int | None = None
    #: for a part file of ``fpi ingest --partitions N``: (its bucket, N); the whole file is
    #: read and checked (every session must hash to that bucket: ``check_partition``)
    bucket: tuple[int, int] | None = None

    def read(self) -> pl.DataFrame:
        """The partition's turns; a part file is checked first (canonical, sorted, its
        sessions in its bucket: :func:`fpi.ingest.partition.check_partition`)."""
        if self.bucket is not None:
            from fpi.ingest.partition import read_partition

            return read_partition(self.path, *self.bucket)
        lf = pl.scan_parquet(self.path)
        if self.offset or self.length is not None:
            lf = lf.slice(self.offset, self.length)
        return lf.collect()


@dataclass(frozen=True)
class ScoreSettings:
    """What a worker keeps of a scored partition besides its probabilities."""

    seed: int = 0
    #: example turns per predicted failure class
    examples: int = 3
    #: ``sample``, ``all`` or ``none``
    attribution: str = "sample"
    #: turns per predicted class in the attribution sample
    attribution_quota: int = attr.per_class_quota(1200)


@dataclass(frozen=True)
class PartitionTask:
    """One partition to score: picklable, so any engine can ship it to a worker."""

    index: int
    source: PartitionSource
    model: ModelRef
    settings: ScoreSettings = field(default_factory=ScoreSettings)


def session_ranges(path: str, turns_per_partition: int) -> list[PartitionSource]:
    """Row ranges of a sorted canonical Parquet file, each ending at a session boundary
    and (but the last) holding at least ``turns_per_partition`` turns."""
    sid = pl.scan_parquet(path).select("session_id").collect()["session_id"]
    if sid.len() == 0:
        return []
    ends = sid.rle().struct.field("len").cum_sum().to_numpy()
    out, start = [], 0
    while start < sid.len():
        i = int(np.searchsorted(ends, start + max(turns_per_partition, 1), side="left"))
        end = int(ends[min(i, len(ends) - 1)])
        out.append(PartitionSource(path, start, end - start))
        start = end
    return out


def split_sessions(path: str, partitions: int) -> list[PartitionSource]:
    """``path`` cut into about ``partitions`` row ranges of whole sessions."""
    total = pl.scan_parquet(path).select(pl.len()).collect().item()
    return session_ranges(path, math.ceil(total / max(partitions, 1)))


# ---------------------------------------------------------------------------
# The worker's model
# ---------------------------------------------------------------------------

_BUNDLES: dict[str, ModelBundle] = {}


def worker_bundle(ref: ModelRef) -> ModelBundle:
    """The bundle ``ref`` names, loaded once per process (keyed by its hash); ModelError
    when this process runs another fpi or the files hold another model."""
    from fpi.diagnose.baseline import bundle_id
    from fpi.model import load_bundle

    if ref.fpi_version != __version__:
        raise ModelError(f"{ref.path}: the driver runs fpi {ref.fpi_version}, a worker runs fpi "
                         f"{__version__}: install the same fpi on the driver and every worker")
    bundle = _BUNDLES.get(ref.bundle_hash)
    if bundle is None and not ref.path:
        raise ModelError("the model was not loaded from a bundle directory: workers need a "
                         "path they can read (save the bundle with fpi train --out first)")
    if bundle is None:
        bundle = load_bundle(ref.path)
        found = bundle_id(bundle)
        if found != ref.bundle_hash:
            raise ModelError(f"{ref.path}: a worker read model {_short(found)}, the driver uses "
                             f"{_short(ref.bundle_hash)}: every worker must read the same bundle")
        _BUNDLES[found] = bundle
    return bundle


def keep_loaded(ref: ModelRef, bundle: ModelBundle) -> None:
    """Let tasks run in this process (the local engine) use the driver's bundle as is."""
    _BUNDLES[ref.bundle_hash] = bundle


def _short(model_id: str) -> str:
    return model_id.removeprefix("sha256:")[:12]


# ---------------------------------------------------------------------------
# Scoring (on a worker)
# ---------------------------------------------------------------------------


@dataclass
class Scored:
    """One scored partition, kept where it was scored (a handle's value): per-turn
    probabilities and what the statistics and samples are computed from."""

    index: int
    keys: pl.DataFrame  # (n,) session_id, turn_index
    probs: np.ndarray  # (n, k)
    labels: np.ndarray  # (n,) class index, -1 unlabelled
    session_codes: np.ndarray  # (n,) 0..s-1 within the partition
    session_hashes: np.ndarray  # (s,) stable hash of each session id
    slices: pl.DataFrame  # (n, dims) slice values as strings
    examples: pl.DataFrame | None  # top-N candidates per predicted failure class
    attribution: pl.DataFrame | None  # lowest-key candidates per predicted class
    #: --attribution all: each turn's grouped contributions toward its predicted class
    values: np.ndarray | None = None
    span: runmeta.Span | None = None  # the first and last turn's timestamp
    traffic: TrafficCounts = field(default_factory=TrafficCounts)
    pool: pl.DataFrame | None = None  # focus-example candidates (ExamplePool)
    #: with the bundle's strata: each turn's probabilities corrected by its stratum's
    #: matrix (n, k), and the probability sums per stratum (strata, k)
    adjusted: np.ndarray | None = None
    stratum_probs: np.ndarray | None = None

    @property
    def turns(self) -> int:
        return len(self.probs)

    def em_weights(self, seed: int, replicates: Sequence[int]) -> np.ndarray:
        """(b, n) each turn's Poisson bootstrap weight in ``replicates``."""
        return session_weights(self.session_hashes, seed,
                               np.asarray(replicates))[:, self.session_codes]


def turn_keys(session_hashes: np.ndarray, turn_index: np.ndarray, seed: int) -> np.ndarray:
    """The attribution sample's key of each turn: ``hash(session, turn, seed)``."""
    return combine(session_hashes, turn_index, seed)


def score_partition(task: PartitionTask) -> Scored:
    """Features, calibrated probabilities and the bounded samples of one partition."""
    bundle = worker_bundle(task.model)
    batch = task.source.read()
    feats = build_features(batch)
    probs = bundle.predict_proba(feats)
    pred = probs.argmax(axis=1)
    codes = batch["session_id"].rle_id().cast(pl.Int64).to_numpy()
    firsts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else codes
    hashes = hash_series(batch["session_id"][firsts]) if len(codes) else np.zeros(0, np.uint64)
    sl = slice_columns(batch)
    s = task.settings
    scored = Scored(task.index, batch.select(KEY_COLUMNS), probs,
                    labels_to_index(batch["label"].struct.field("failure_point")),
                    codes, hashes, sl, None, None,
                    span=runmeta.widen(None, batch["timestamp"]))
    scored.traffic.add(batch)
    strata = Strata.of_manifest(bundle.manifest)
    if strata is not None:
        codes_s = strata.codes(strata_values(batch))
        scored.adjusted = strata.adjusted(probs, codes_s)
        scored.stratum_probs = stratum_sums(probs, codes_s, len(strata.sums))
    if s.examples > 0:
        scored.examples = _top_examples(batch, feats, probs, pred, s.examples)
        pool = ExamplePool(2)
        pool.add(batch, feats, probs, sl)
        scored.pool = pool.pool
    if s.attribution == "sample":
        keys = turn_keys(hashes[codes], batch["turn_index"].to_numpy(), s.seed)
        keep = attr.bottom_k(keys, pred, s.attribution_quota)
        scored.attribution = pl.concat(
            [feats[keep], sl[keep].select(pl.all().name.prefix("_slice_"))],
            how="horizontal").with_columns(pl.Series("_key", keys[keep]),
                                           pl.Series("_pred", pred[keep].astype(np.int64)))
    elif s.attribution == "all":
        scored.values = attr.for_class(attr.grouped(bundle.contributions(feats, pred),
                                                    bundle.features), pred)
    return scored


def _top_examples(batch: pl.DataFrame, feats: pl.DataFrame, probs: np.ndarray,
                  pred: np.ndarray, per_class: int) -> pl.DataFrame:
    """:func:`top_examples` of the predicted failures (their turn view, features,
    probability and class), chosen on the keys and built for the chosen rows only."""
    slim = batch.select(KEY_COLUMNS).with_columns(
        pl.Series("_prob", probs[np.arange(len(pred)), pred]),
        pl.Series("_pred", pred.astype(np.int64)), pl.Series("_i", np.arange(len(pred))))
    chosen = top_examples(slim.filter(pl.col("_pred") > 0), per_class)
    idx = chosen["_i"].to_numpy()
    return turn_view_rows(batch, idx).with_columns(
        feats[idx].drop(KEY_COLUMNS).to_struct("_feats"), chosen["_prob"], chosen["_pred"])


def top_examples(frame: pl.DataFrame, per_class: int) -> pl.DataFrame:
    """The ``per_class`` most probable turns of each predicted class (ties: session, turn)."""
    return (frame.sort(["_prob", "session_id", "turn_index"], descending=[True, False, False])
            .group_by("_pred", maintain_order=True).head(per_class)
            .select(frame.columns)
            .sort(["_pred", "_prob", "session_id", "turn_index"],
                  descending=[False, True, False, False]))


# ---------------------------------------------------------------------------
# Mergeable statistics
# ---------------------------------------------------------------------------


def _poisson_cdf() -> np.ndarray:
    """Poisson(1)'s CDF at 0, 1, ..., 38, each value summed from the last as floats."""
    p = cdf = math.exp(-1.0)
    out = [cdf]
    for i in range(1, 39):
        p /= i
        cdf += p
        out.append(cdf)
    return np.array(out)


_POISSON_CDF = _poisson_cdf()


def poisson_one(u: np.ndarray) -> np.ndarray:
    """Poisson(1) draws from uniforms on [0, 1) by the inverse CDF: how many of the CDF's
    values each ``u`` reaches. Counted by comparison up to 3 (98% of draws), by binary
    search above."""
    u = np.asarray(u, dtype=np.float64)
    small = np.zeros(u.shape, dtype=np.uint8)
    for c in _POISSON_CDF[:3]:
        small += u >= c
    k = small.astype(np.int64)
    tail = u >= _POISSON_CDF[2]
    k[tail] = np.searchsorted(_POISSON_CDF, u[tail], side="right")
    return k


def session_weights(session_hashes: np.ndarray, seed: int, replicates: np.ndarray
                    ) -> np.ndarray:
    """(b, s) Poisson(1) bootstrap weights of sessions: ``hash(session, seed, replicate)``,
    the same whichever partition a session is in."""
    h = combine(np.asarray(session_hashes, np.uint64)[None, :], seed,
                np.asarray(replicates, np.int64)[:, None])
    return poisson_one(unit_interval(h)).astype(np.float64)


@dataclass(frozen=True)
class StatsSpec:
    """What :func:`partition_stats` computes: the bootstrap's seed and replicate count."""

    seed: int = 0
    n_boot: int = 200


@dataclass(frozen=True)
class PartitionStats:
    """The small statistics of one partition (or, merged, of the night)."""

    turns: int
    sessions: int
    counts: np.ndarray  # (k,) argmax counts, int64
    prob_sums: np.ndarray  # (k,)
    confusion: np.ndarray  # (k, k) labelled turns: true class x predicted, int64
    boot_turns: np.ndarray  # (b,) Poisson-weighted turns per replicate
    boot_counts: np.ndarray  # (b, k)
    boot_probs: np.ndarray  # (b, k)
    slices: dict[str, SliceSums]
    examples: pl.DataFrame | None
    attribution: pl.DataFrame | None
    attribution_moments: attr.AllMoments | None
    #: per slice dimension, which turns each value selects (same-turn slices)
    fingerprints: dict[str, Fingerprints] = field(default_factory=dict)
    span: runmeta.Span | None = None
    traffic: TrafficCounts = field(default_factory=TrafficCounts)
    pool: pl.DataFrame | None = None  # focus-example candidates
    #: with the bundle's strata: probability sums per stratum, and the replicates'
    #: Poisson-weighted sums of the corrected probabilities (b, k)
    stratum_probs: np.ndarray | None = None
    boot_adjusted: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a worker sends to the driver: the frames as zstd-compressed Arrow IPC
        (a copy of just their rows; a fraction of the size of Polars' own pickling,
        which can carry the buffers of the frame they were cut from)."""
        state = dict(self.__dict__)
        for name in _FRAMES:
            if state[name] is not None:
                state[name] = _ipc(state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in _FRAMES:
            if isinstance(state[name], bytes):
                state[name] = _from_ipc(state[name])
        for key, value in state.items():
            object.__setattr__(self, key, value)


#: The PartitionStats fields that are frames (compressed when pickled).
_FRAMES = ("examples", "attribution", "pool")


def _ipc(frame: pl.DataFrame) -> bytes:
    """``frame``'s rows as Arrow IPC (just its rows, whatever it was cut from), compressed
    whole with zstd: for the few rows a sample holds, the schema and the per-buffer
    framing outweigh the data, and compressing the whole stream shrinks them too (Arrow's
    own per-buffer compression does not)."""
    buf = io.BytesIO()
    frame.write_ipc(buf, compression="uncompressed")
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(buf.getvalue())


def _from_ipc(data: bytes) -> pl.DataFrame:
    """The frame :func:`_ipc` wrote."""
    return pl.read_ipc(io.BytesIO(zstandard.ZstdDecompressor().decompress(data)))


#: zstd level of the frames that travel to the driver (fast; higher levels gain little).
_ZSTD_LEVEL = 6


def _session_sums(scored: Scored, pred: np.ndarray) -> np.ndarray:
    """(c, s) per-session sums, one row each: turns, argmax counts per class, probability
    sums per class and (with strata) adjusted probability sums per class."""
    codes, s, k = scored.session_codes, len(scored.session_hashes), scored.probs.shape[1]
    counts = np.bincount(codes * k + pred, minlength=s * k).reshape(s, k).T
    rows = [np.bincount(codes, minlength=s)[None], counts]
    for values in (scored.probs, scored.adjusted):
        if values is not None:
            rows += [np.bincount(codes, values[:, j], minlength=s)[None] for j in range(k)]
    return np.concatenate(rows).astype(np.float64)


def _bootstrap_sums(scored: Scored, pred: np.ndarray, spec: StatsSpec) -> np.ndarray:
    """(b, c) each replicate's Poisson-weighted sums of :func:`_session_sums`' rows.

    numpy's own loops (``einsum``), not BLAS: the sums do not depend on how many threads
    the BLAS library runs, and no BLAS worker threads spin between the small products.
    """
    sums = _session_sums(scored, pred)
    out = np.zeros((spec.n_boot, len(sums)))
    for start in range(0, spec.n_boot, _BOOT_CHUNK):
        reps = np.arange(start, min(start + _BOOT_CHUNK, spec.n_boot))
        w = session_weights(scored.session_hashes, spec.seed, reps)
        out[reps] = np.einsum("rs,cs->rc", w, sums)
    return out


def partition_stats(scored: Scored, spec: StatsSpec) -> PartitionStats:
    """Everything the night's estimates need from one scored partition, as sums."""
    probs, codes = scored.probs, scored.session_codes
    n, k = probs.shape
    s = len(scored.session_hashes)
    pred = probs.argmax(axis=1) if n else np.zeros(0, np.int64)
    adj = scored.adjusted
    boot = _bootstrap_sums(scored, pred, spec)
    boot_turns, boot_counts, boot_probs = boot[:, 0], boot[:, 1:k + 1], boot[:, k + 1:2 * k + 1]
    boot_adjusted = None if adj is None else boot[:, 2 * k + 1:]
    fp_keys = turn_keys(scored.session_hashes[codes], scored.keys["turn_index"].to_numpy(),
                        _FINGERPRINT_SEED)
    labelled = scored.labels >= 0
    confusion = np.bincount(scored.labels[labelled].astype(np.int64) * k + pred[labelled],
                            minlength=k * k).reshape(k, k).astype(np.int64)
    return PartitionStats(
        turns=n, sessions=s, counts=np.bincount(pred, minlength=k).astype(np.int64),
        prob_sums=probs.sum(axis=0), confusion=confusion, boot_turns=boot_turns,
        boot_counts=boot_counts, boot_probs=boot_probs,
        slices={dim: SliceSums.of(scored.slices[dim], probs if adj is None else adj, pred)
                for dim in scored.slices.columns},
        examples=_slim(scored.examples, "examples"),
        attribution=_slim(scored.attribution, "attribution"),
        attribution_moments=(None if scored.values is None else
                             attr.AllMoments.of(scored.values, pred, scored.slices)),
        fingerprints={dim: Fingerprints.of(scored.slices[dim], fp_keys)
                      for dim in scored.slices.columns},
        span=scored.span, traffic=scored.traffic, pool=_slim(scored.pool, "pool"),
        stratum_probs=scored.stratum_probs, boot_adjusted=boot_adjusted)


#: What a partition's samples send first: the columns the driver chooses by (the rest of
#: each chosen row comes later, from :func:`fetch_rows`, for the chosen rows only).
_RANKING = {"examples": ("_prob", "_pred"), "attribution": ("_key", "_pred"),
            "pool": ("_prob", "_margin", "_pred")}


def _slim(frame: pl.DataFrame | None, name: str) -> pl.DataFrame | None:
    if frame is None:
        return None
    extra = [c for c in frame.columns if name == "pool" and c.startswith("_slice_")]
    return frame.select(*KEY_COLUMNS, *_RANKING[name], *extra)


def fetch_rows(scored: Scored, chosen: dict[str, pl.DataFrame]) -> dict[str, bytes]:
    """The whole rows (features, example text) of the chosen turns this partition holds:
    per sample name, ``chosen``'s keys (session_id, turn_index) semi-joined to its rows,
    as compressed Arrow IPC; a sample none of whose chosen rows are here is left out (but
    for one with no chosen rows at all, whose columns the driver still needs)."""
    out = {}
    for name, keys in chosen.items():
        frame = getattr(scored, name)
        if frame is None:
            continue
        rows = frame.join(keys, on=KEY_COLUMNS, how="semi", maintain_order="left")
        if rows.height or not keys.height:
            out[name] = _ipc(rows)
    return out


def fetch_chosen(engine: Engine, handles: Sequence[object], stats: PartitionStats
                 ) -> PartitionStats:
    """The merged statistics with their chosen samples' whole rows, fetched from the
    handles (a second round, so only the ranking columns travel for every candidate)."""
    slim = {name: getattr(stats, name) for name in _FRAMES}
    chosen = {name: f.select(KEY_COLUMNS) for name, f in slim.items() if f is not None}
    if not chosen:
        return stats
    rows = engine.gather(engine.map(fetch_rows, handles, chosen))
    whole = {}
    for name, keys in chosen.items():
        found = [_from_ipc(r[name]) for r in rows if name in r]
        full = (pl.concat(found) if name == "attribution"
                else pl.concat(found, how="vertical_relaxed"))
        whole[name] = keys.join(full, on=KEY_COLUMNS, how="left",
                                maintain_order="left").select(full.columns)
    return replace(stats, **whole)


def merge_stats(parts: Sequence[PartitionStats], *, examples: int = 3,
                attribution_quota: int = attr.per_class_quota(1200)) -> PartitionStats:
    """The night's statistics from its partitions' (in any order)."""
    if not parts:
        raise ValueError("no partitions to merge")
    ex = [p.examples for p in parts if p.examples is not None]
    at = [p.attribution for p in parts if p.attribution is not None]
    attribution = None
    if at:
        cand = pl.concat(at)
        attribution = cand[attr.bottom_k(cand["_key"].to_numpy(), cand["_pred"].to_numpy(),
                                         attribution_quota)].sort("_key")
    moments = [p.attribution_moments for p in parts if p.attribution_moments is not None]
    traffic = parts[0].traffic
    for p in parts[1:]:
        traffic = traffic.merge(p.traffic)
    spans = [p.span for p in parts if p.span is not None]
    pools = [p.pool for p in parts if p.pool is not None]
    return PartitionStats(
        turns=sum(p.turns for p in parts), sessions=sum(p.sessions for p in parts),
        counts=np.sum([p.counts for p in parts], axis=0),
        prob_sums=np.sum([p.prob_sums for p in parts], axis=0),
        confusion=np.sum([p.confusion for p in parts], axis=0),
        boot_turns=np.sum([p.boot_turns for p in parts], axis=0),
        boot_counts=np.sum([p.boot_counts for p in parts], axis=0),
        boot_probs=np.sum([p.boot_probs for p in parts], axis=0),
        slices={dim: SliceSums.merge([p.slices[dim] for p in parts]) for dim in parts[0].slices},
        examples=top_examples(pl.concat(ex, how="vertical_relaxed"), examples) if ex else None,
        attribution=attribution,
        attribution_moments=attr.AllMoments.merge(moments) if moments else None,
        fingerprints={dim: Fingerprints.merge([p.fingerprints[dim] for p in parts])
                      for dim in parts[0].fingerprints},
        span=(min(sp[0] for sp in spans), max(sp[1] for sp in spans)) if spans else None,
        traffic=traffic, pool=ExamplePool.merge(pools, 2) if pools else None,
        stratum_probs=_sum_or_none([p.stratum_probs for p in parts]),
        boot_adjusted=_sum_or_none([p.boot_adjusted for p in parts]))


def _sum_or_none(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The sum of every partition's array, or None when any lacks it."""
    present = [a for a in arrays if a is not None]
    return np.sum(present, axis=0) if len(present) == len(arrays) else None


# ---------------------------------------------------------------------------
# EM prior adjustment across partitions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EmStep:
    """One EM iteration's input: the current priors (one row per replicate; one row
    without the bootstrap), the training prior, and whose weights to apply."""

    priors: np.ndarray  # (r, k)
    train_prior: np.ndarray  # (k,)
    seed: int = 0
    #: replicate numbers of the rows (their Poisson weights), or None: unweighted
    replicates: tuple[int, ...] | None = None


def em_step(scored: Scored, step: EmStep) -> tuple[np.ndarray, np.ndarray]:
    """A partition's (r, k) weighted sums of re-weighted posteriors and (r,) weight totals."""
    base = np.clip(np.asarray(step.train_prior, np.float64), 1e-12, None)
    base = base / base.sum()
    priors = np.atleast_2d(np.asarray(step.priors, np.float64))
    r, k = priors.shape
    sums, totals = np.zeros((r, k)), np.zeros(r)
    weights = (None if step.replicates is None else
               session_weights(scored.session_hashes, step.seed,
                               np.asarray(step.replicates))[:, scored.session_codes])
    for j in range(r):
        adj = scored.probs * (priors[j] / base)
        adj /= np.clip(adj.sum(axis=1, keepdims=True), 1e-300, None)
        if weights is None:
            sums[j], totals[j] = adj.sum(axis=0), scored.turns
        else:
            sums[j], totals[j] = weights[j] @ adj, weights[j].sum()
    return sums, totals


def fit_em(engine: Engine, handles: Sequence[object], train_prior: np.ndarray, *,
           init: np.ndarray | None = None, seed: int = 0,
           replicates: Sequence[int] | None = None, tol: float = 1e-7,
           max_iter: int = 500) -> np.ndarray:
    """EM estimate of the night's prior (Saerens et al. 2002) over scored partitions:
    (k,), or (r, k) for bootstrap ``replicates``; a few floats per partition per round."""
    base = np.clip(np.asarray(train_prior, dtype=np.float64), 1e-12, None)
    base = base / base.sum()
    rows = 1 if replicates is None else len(replicates)
    start = base if init is None else np.clip(np.asarray(init, np.float64), 1e-12, None)
    prior = np.tile(start, (rows, 1))
    reps = None if replicates is None else tuple(int(x) for x in replicates)
    for _ in range(max_iter):
        out = engine.gather(engine.map(em_step, handles, EmStep(prior, base, seed, reps)))
        sums = np.sum([o[0] for o in out], axis=0)
        totals = np.sum([o[1] for o in out], axis=0)
        if not (totals > 0).all():
            prior = np.where((totals > 0)[:, None], prior, base)
            totals = np.where(totals > 0, totals, 1.0)
        new = sums / totals[:, None]
        done = np.max(np.abs(new - prior)) < tol
        prior = new
        if done:
            break
    prior = prior / prior.sum(axis=1, keepdims=True)
    return prior[0] if replicates is None else prior


# ---------------------------------------------------------------------------
# On the driver
# ---------------------------------------------------------------------------


def label_metrics(confusion: np.ndarray) -> LabelMetrics | None:
    """Label metrics from the merged (true x predicted) confusion of labelled turns."""
    conf = np.asarray(confusion, dtype=np.int64)
    k = conf.shape[0]
    true, pred = np.divmod(np.repeat(np.arange(k * k), conf.reshape(-1)), k)
    return LabelMetrics.of(true, pred)


def rates_from_stats(stats: PartitionStats, em: np.ndarray, *,
                     confusion: np.ndarray | None, soft_confusion: np.ndarray | None,
                     confidence: float = 0.95, seed: int = 0,
                     em_replicates: Callable[[np.ndarray], np.ndarray] | None = None,
                     strata: Strata | None = None) -> RateTable:
    """The night's :class:`~fpi.diagnose.rates.RateTable` from its merged statistics."""
    return rates_from_sums(turns=stats.turns, counts=stats.counts, prob_sums=stats.prob_sums,
                           boot_turns=stats.boot_turns, boot_counts=stats.boot_counts,
                           boot_probs=stats.boot_probs, em=em, confusion=confusion,
                           soft_confusion=soft_confusion, em_replicates=em_replicates,
                           confidence=confidence, seed=seed, strata=strata,
                           stratum_probs=stats.stratum_probs, boot_adjusted=stats.boot_adjusted)


def score_with_stats(task: PartitionTask, spec: StatsSpec) -> tuple[Scored, PartitionStats]:
    """:func:`score_partition` and its :func:`partition_stats` in one task (for an engine
    whose handles are the values: this process), so no partition's statistics wait for
    the last partition to be scored."""
    scored = score_partition(task)
    return scored, partition_stats(scored, spec)


def score_night(engine: Engine, tasks: Sequence[PartitionTask], spec: StatsSpec,
                train_prior: np.ndarray, progress: Progress | None = None,
                total: int | None = None,
                merged: Callable[[PartitionStats], None] | None = None
                ) -> tuple[list[object], PartitionStats, np.ndarray]:
    """Score every partition on ``engine`` and merge: the handles (probabilities stay
    where they were scored), the night's statistics and its EM prior. ``progress``
    hears ``("predict", turns scored, total)`` as each partition's statistics arrive
    (in partition order). ``merged`` is called with the merged statistics (their samples
    whole) before EM is fitted, e.g. to start work on them beside it.

    On the local engine a partition's statistics are computed in its scoring task
    (:func:`score_with_stats`); elsewhere (Dask) in a second round over the handles, so
    the per-turn data stays on the workers. The statistics are the same."""
    from fpi.engine import LocalEngine

    if not tasks:
        raise ValueError("no partitions to score")
    settings = tasks[0].settings
    arriving: Iterable[PartitionStats]
    if isinstance(engine, LocalEngine):
        pairs = engine.map(score_with_stats, tasks, spec)
        handles: list[object] = [scored for scored, _ in pairs]
        arriving = (part for _, part in pairs)
    else:
        handles = engine.map(score_partition, tasks)
        arriving = (engine.gather([pending])[0]
                    for pending in engine.map(partition_stats, handles, spec))
    parts: list[PartitionStats] = []
    for part in arriving:
        parts.append(part)
        report(progress, "predict", sum(p.turns for p in parts), total)
    stats = merge_stats(parts, examples=settings.examples,
                        attribution_quota=settings.attribution_quota)
    stats = fetch_chosen(engine, handles, stats)
    if merged is not None:
        merged(stats)
    return handles, stats, fit_em(engine, handles, train_prior)


# ---------------------------------------------------------------------------
# Slices of the EM estimator: EM per slice value, over the partitions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceEmStep:
    """One EM iteration for every listed value of one slice dimension at once."""

    dimension: str
    values: tuple[str, ...]
    priors: np.ndarray  # (v, k)
    train_prior: np.ndarray  # (k,), normalised


def slice_em_step(scored: Scored, step: SliceEmStep) -> tuple[np.ndarray, np.ndarray]:
    """A partition's (v, k) sums of re-weighted posteriors of each value's turns, and
    its (v,) turns per value."""
    v, k = len(step.values), scored.probs.shape[1]
    index = {value: i for i, value in enumerate(step.values)}
    codes = (scored.slices[step.dimension]
             .replace_strict(index, default=-1, return_dtype=pl.Int64).to_numpy())
    sel = codes >= 0
    c, p = codes[sel], scored.probs[sel]
    adj = p * (np.asarray(step.priors)[c] / step.train_prior)
    adj /= np.clip(adj.sum(axis=1, keepdims=True), 1e-300, None)
    sums = np.stack([np.bincount(c, adj[:, j], minlength=v) for j in range(k)], 1)
    return sums.reshape(v, k), np.bincount(c, minlength=v).astype(np.float64)


def fit_slice_em(engine: Engine, handles: Sequence[object], train_prior: np.ndarray,
                 dimension: str, values: Sequence[str], init: np.ndarray, *,
                 tol: float = 1e-6, max_iter: int = 500) -> np.ndarray:
    """(v, k) EM prior of each value's turns (warm-started from ``init``); each value stops
    when its own prior moves less than ``tol``, as EM on that slice alone would."""
    base = np.clip(np.asarray(train_prior, np.float64), 1e-12, None)
    base = base / base.sum()
    prior = np.tile(np.clip(np.asarray(init, np.float64), 1e-12, None), (len(values), 1))
    active = np.ones(len(values), bool)
    for _ in range(max_iter):
        if not active.any():
            break
        step = SliceEmStep(dimension, tuple(values), prior, base)
        out = engine.gather(engine.map(slice_em_step, handles, step))
        sums = np.sum([o[0] for o in out], axis=0)
        totals = np.sum([o[1] for o in out], axis=0)
        new = np.where((totals > 0)[:, None], sums / np.clip(totals, 1e-300, None)[:, None],
                       base)
        moved = np.max(np.abs(new - prior), axis=1) >= tol
        prior = np.where(active[:, None], new, prior)
        active &= moved
    return prior / prior.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Predictions, one file per partition
# ---------------------------------------------------------------------------


def write_predictions(scored: Scored, out_dir: str, contributions: pl.DataFrame | None,
                      red: Redactor | None) -> str:
    """Write ``out_dir/predictions/part-NNNNN.parquet`` (atomically): the partition's keys,
    predicted class, probabilities and the attributed turns' contributions (``all``: every
    turn's; else joined from ``contributions`` on session and turn; null elsewhere)."""
    from fpi.files import atomic_path
    from fpi.ingest.partition import part_name

    pred = scored.probs.argmax(axis=1)
    frame = scored.keys.with_columns(
        pl.Series("predicted", np.asarray(CLASSES, dtype=object)[pred], dtype=pl.String),
        *[pl.Series(f"p_{c}", scored.probs[:, i]) for i, c in enumerate(CLASSES)])
    names = [f"contrib_{g}" for g in attr.GROUP_COLUMNS]
    if scored.values is not None:
        frame = frame.with_columns(pl.Series(n, scored.values[:, j]) for j, n in enumerate(names))
    elif contributions is not None:
        frame = frame.join(contributions.select(*KEY_COLUMNS, *names), on=KEY_COLUMNS,
                           how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(n) for n in names)
    if red is not None:
        frame = frame.with_columns(red.ids(frame["session_id"]))
    target = f"{out_dir}/predictions/{part_name(scored.index)}"
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd")
    return target
