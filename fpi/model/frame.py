"""The training frame (turns and their features), built through an engine.

``fpi train --engine dask`` builds the features on the cluster: each task is one
partition of whole sessions (a part of ``fpi ingest --partitions N``, or a row
range of one canonical Parquet file cut at session boundaries), and
:func:`partition_frame` returns its turns and features. The driver concatenates
them in partition order and LightGBM trains there exactly as with the local
engine: features are computed per session and in the input's row order, so the
frame, and hence the model, is the same whatever the engine or partition count.

``max_train_turns`` (:class:`TurnSample`) trains on a seeded, class-stratified
sample of at most N labelled turns. The rule, which depends neither on row order
nor on partitioning:

1. each labelled turn's key is ``hash(session_id, seed)``
   (:func:`fpi.hashing.combine` of :func:`fpi.hashing.hash_series`), ties broken
   by session id then turn index: a session's turns sit together in key order;
2. class ``c`` with ``n_c`` of the ``n`` labelled turns gets the quota
   ``floor(N * n_c / n)``; the turns left over go one each to the classes with
   the largest remainders (ties: class order), so the quotas sum to ``N``;
3. each class keeps its ``quota`` turns of lowest key: whole sessions, but at the
   cut, picked in the same order for every class.

Features are built before sampling, on whole sessions, so a sampled turn has the
features it has in the full data. Unlabelled turns are dropped from a sample (they
do not train). Each partition keeps only its lowest ``N`` keys per class (a
superset of what the driver can pick from it), so the driver holds at most
``partitions x classes x N`` candidate rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.features import build_features
from fpi.hashing import combine, hash_series
from fpi.metrics import labels_to_index
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.diagnose.partition import PartitionSource
    from fpi.engine import Engine

__all__ = ["TurnSample", "partition_frame", "sample_mask", "sample_quotas", "sample_turns",
           "train_sources", "training_frame", "training_input"]


@dataclass(frozen=True)
class TurnSample:
    """``--max-train-turns``: at most ``max_turns`` labelled turns, drawn with ``seed``."""

    max_turns: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise InputError(f"max train turns must be at least 1, got {self.max_turns}")


def sample_quotas(counts: np.ndarray, max_turns: int) -> np.ndarray:
    """Turns to keep per class: all if they fit, else shares of ``max_turns`` in
    proportion to ``counts`` (largest remainders get the turns left over)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total <= max_turns:
        return counts.copy()
    exact = counts * max_turns / total
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:max_turns - int(quota.sum())]] += 1
    return np.minimum(quota, counts)


def _class_index(turns: pl.DataFrame) -> np.ndarray:
    return labels_to_index(turns["label"].struct.field("failure_point"))


def _keep_lowest(turns: pl.DataFrame, y: np.ndarray, quotas: np.ndarray, seed: int
                 ) -> np.ndarray:
    """Mask of the rows kept: per class, the ``quotas[class]`` lowest keys (labelled only)."""
    keys = combine(hash_series(turns["session_id"]), seed)
    ranked = (pl.DataFrame({"_key": pl.Series(keys, dtype=pl.UInt64), "_y": y,
                            "session_id": turns["session_id"],
                            "turn_index": turns["turn_index"]})
              .with_row_index("_row").filter(pl.col("_y") >= 0)
              .sort("_key", "session_id", "turn_index")
              .with_columns(pl.int_range(pl.len()).over("_y").alias("_rank")))
    rank, cls = ranked["_rank"].to_numpy(), ranked["_y"].to_numpy()
    kept = ranked["_row"].to_numpy()[rank < quotas[cls]]
    mask = np.zeros(turns.height, dtype=bool)
    mask[kept] = True
    return mask


def _counts(y: np.ndarray) -> np.ndarray:
    return np.bincount(y[y >= 0], minlength=len(CLASSES)).astype(np.int64)


def sample_turns(turns: pl.DataFrame, features: pl.DataFrame, sample: TurnSample
                 ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The sampled rows of ``turns`` and ``features`` (same rows), in their order."""
    y = _class_index(turns)
    mask = pl.Series(_keep_lowest(turns, y, sample_quotas(_counts(y), sample.max_turns),
                                  sample.seed))
    return turns.filter(mask), features.filter(mask)


@dataclass(frozen=True)
class TrainTask:
    """One partition of whole sessions to build the training frame of."""

    source: PartitionSource
    sample: TurnSample | None = None


@dataclass(frozen=True)
class TrainPart:
    """One partition's turns and features (the sample's candidates, with a sample) and
    its labelled turns per class (before any sampling)."""

    turns: pl.DataFrame
    features: pl.DataFrame
    counts: np.ndarray


def partition_frame(task: TrainTask) -> TrainPart:
    """Read one partition, check it, build its features (and keep the sample's
    candidates: the lowest ``max_turns`` keys of each class). Runs on a worker."""
    from fpi.ingest.partition import check_partition
    from fpi.schema import TURN_SCHEMA

    source = task.source
    turns = source.read()
    if source.bucket is not None:
        check_partition(turns, *source.bucket, source.path)
    elif turns.schema != TURN_SCHEMA:
        raise InputError(f"{source.path}: not in the canonical layout (write it with "
                         "fpi ingest)")
    features = build_features(turns)
    y = _class_index(turns)
    counts = _counts(y)
    if task.sample is not None:
        quotas = np.full(len(CLASSES), task.sample.max_turns, dtype=np.int64)
        mask = pl.Series(_keep_lowest(turns, y, quotas, task.sample.seed))
        turns, features = turns.filter(mask), features.filter(mask)
    return TrainPart(turns, features, counts)


def train_sources(path: str | os.PathLike[str], partitions: int) -> list[PartitionSource]:
    """The partitions of a training input: the parts of a partitioned directory (``fpi
    ingest --partitions``), or one canonical Parquet file cut at session boundaries into
    about ``partitions`` row ranges (its sessions must be contiguous, as ingest writes)."""
    from fpi.diagnose.partition import PartitionSource, split_sessions
    from fpi.ingest.partition import MANIFEST, read_partitions

    text = os.fspath(path)
    if "://" in text or Path(text).is_dir():
        if "://" in text or (Path(text) / MANIFEST).exists():
            parts, manifest = read_partitions(text)
            return [PartitionSource(p, bucket=(i, manifest.partitions))
                    for i, p in enumerate(parts)]
        raise InputError(f"{text}: not a partitioned fpi directory (no {MANIFEST}); "
                         "--engine dask reads fpi ingest --partitions N output or one "
                         "canonical Parquet file")
    if not Path(text).is_file():
        raise InputError(f"{text}: no such file or directory")
    try:
        sid = pl.scan_parquet(text).select("session_id").collect()["session_id"]
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{text}: not a canonical Parquet file of fpi ingest "
                         f"({' '.join(str(exc).split())[:160]})") from None
    if sid.len() and sid.rle().len() != sid.n_unique():  # runs of one session id
        raise InputError(f"{text}: a session's turns are not together; write the file "
                         "with fpi ingest (sorted by session) first")
    return split_sessions(text, partitions)


def training_frame(engine: Engine, sources: Sequence[PartitionSource],
                   sample: TurnSample | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turns and features of every partition, built on ``engine`` and concatenated in
    partition order (then sampled on the driver, with ``sample``)."""
    if not sources:
        raise InputError("no partitions to train on")
    parts: list[TrainPart] = engine.gather(
        engine.map(partition_frame, [TrainTask(s, sample) for s in sources]))
    turns = pl.concat([p.turns for p in parts], how="vertical")
    features = pl.concat([p.features for p in parts], how="vertical")
    if sample is None:
        return turns, features
    counts = np.sum([p.counts for p in parts], axis=0)
    y = _class_index(turns)
    mask = pl.Series(_keep_lowest(turns, y, sample_quotas(counts, sample.max_turns),
                                  sample.seed))
    return turns.filter(mask), features.filter(mask)


def training_input(turns: pl.DataFrame | str | os.PathLike[str],
                   features: pl.DataFrame | None, engine: Engine | None,
                   max_train_turns: int | None, seed: int
                   ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """What :func:`fpi.model.train` fits on: ``turns`` (a frame, or a path ``engine``
    reads partition by partition) and their features, sampled to ``max_train_turns``."""
    sample = None if max_train_turns is None else TurnSample(max_train_turns, seed)
    if not isinstance(turns, pl.DataFrame):
        from fpi.engine import LocalEngine

        engine = engine or LocalEngine()
        sources = train_sources(turns, max(2 * engine.workers, 1))
        return training_frame(engine, sources, sample)
    if engine is not None and engine.name != "local":
        raise InputError(f"the {engine.name} engine reads its input itself: give train a "
                         "path every worker can read (a partitioned directory or a "
                         "canonical Parquet file), not a frame")
    if sample is None:
        return turns, features
    return sample_turns(turns, build_features(turns) if features is None else features,
                        sample)


def sample_mask(turns: pl.DataFrame, y: np.ndarray, max_turns: int, seed: int) -> np.ndarray:
    """Rows of :func:`sample_turns`' rule among the rows with ``y >= 0`` (class indices;
    -1 rows are never kept): at most ``max_turns``, class-stratified, seeded."""
    return _keep_lowest(turns, y, sample_quotas(_counts(y), max_turns), seed)
