"""Distributed training: ``fpi train --engine dask --distributed-training``.

The shipped model's trees are grown by ``lightgbm.dask`` across the workers, on every
labelled turn the driver does not hold. What runs where:

- **On the driver, on a sample** (``--max-train-turns``, the class-stratified sample of
  :mod:`fpi.model.frame`): the learned features (text models, ``extra`` keys) and the
  category levels; cross-fitting by session, which picks the parameters and the fixed
  round count (1.1 x the mean early-stopped rounds of the folds); the no-context model
  and the rule baseline (both exactly as with the local engine, on the sample).
- **On the workers, every labelled turn outside the sample and outside the test part**
  (``test_size`` sessions, the same hash of seed and session id as on the driver): each
  partition's model matrix is built where the partition is read
  (:func:`partition_matrix`), with the driver's features, levels, text models and class
  weights, and ``lightgbm.dask`` grows the shipped model with the cross-fitted
  parameters for exactly that many rounds (or ``--rounds``). No early stopping (``lightgbm.dask``'s
  validation sets die with socket errors); ports are left to ``lightgbm.dask`` to pick.
- **Back on the driver:** the shipped model never saw the sample, so its margins there
  are held out. The calibration is fitted on them (the fit rows of the sample) and the
  held-out metrics and confusion matrices are the shipped model's own, on the sample
  (or on its test part with ``test_size`` > 0).

The sample's membership is decided on the workers without shipping its keys: per class,
the highest (key, session id, turn index) the sample holds (:func:`sample_bounds`) is
enough, because the sample keeps each class's lowest keys in that order.

``lightgbm.dask`` models differ from run to run (which rows each worker holds and the
order the workers' histograms are summed in), so a warning is logged and the manifest
says ``training.distributed.reproducible: false``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi.errors import EngineError, InputError
from fpi.features import Feature
from fpi.hashing import combine, hash_series
from fpi.lightgbm_import import with_wrappers
from fpi.metrics import labels_to_index
from fpi.model.bundle import model_matrix
from fpi.model.crossfit import test_mask
from fpi.model.frame import TrainTask, TurnSample, partition_frame, train_sources, training_frame
from fpi.model.learned import Learned
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.diagnose.partition import PartitionSource
    from fpi.engine import Engine

__all__ = ["WARNING", "DaskTrainer", "DistributedFit", "MatrixSpec", "partition_matrix",
           "prepare", "sample_bounds"]

log = logging.getLogger(__name__)

#: The one-line warning every distributed training logs.
WARNING = ("--distributed-training: lightgbm.dask models differ from run to run (the same "
           "data and seed give other trees); the bundle records this")

#: Per class, the highest (key, session id, turn index) of the sample; None: none sampled.
Bounds = tuple[tuple[int, str, int] | None, ...]


def _keys(turns: pl.DataFrame, y: np.ndarray, seed: int) -> pl.DataFrame:
    return pl.DataFrame({"_key": pl.Series(combine(hash_series(turns["session_id"]), seed),
                                           dtype=pl.UInt64),
                         "_y": y, "session_id": turns["session_id"],
                         "turn_index": turns["turn_index"]})


def sample_bounds(sample: pl.DataFrame, seed: int) -> Bounds:
    """Per class, the highest (key, session id, turn index) among ``sample``'s labelled
    turns (the sample of :func:`fpi.model.frame.sample_turns` drawn with ``seed``)."""
    y = labels_to_index(sample["label"].struct.field("failure_point"))
    top = (_keys(sample, y, seed).filter(pl.col("_y") >= 0)
           .sort("_key", "session_id", "turn_index").group_by("_y").last())
    found = {int(r["_y"]): (int(r["_key"]), str(r["session_id"]), int(r["turn_index"]))
             for r in top.iter_rows(named=True)}
    return tuple(found.get(c) for c in range(len(CLASSES)))


def in_sample(turns: pl.DataFrame, y: np.ndarray, bounds: Bounds, seed: int) -> np.ndarray:
    """Which of ``turns`` (classes ``y``) the sample with ``bounds`` holds."""
    cond = pl.lit(False)
    for c, bound in enumerate(bounds):
        if bound is None:
            continue
        key, sid, turn = bound
        k = pl.lit(key, dtype=pl.UInt64)
        below = ((pl.col("_key") < k)
                 | ((pl.col("_key") == k) & ((pl.col("session_id") < sid)
                                             | ((pl.col("session_id") == sid)
                                                & (pl.col("turn_index") <= turn)))))
        cond = cond | ((pl.col("_y") == c) & below)
    return _keys(turns, y, seed).select(cond.alias("in"))["in"].to_numpy()


@dataclass(frozen=True)
class MatrixSpec:
    """How a worker turns a partition into model rows: the driver's columns, text models
    and class weights, and which turns to leave out (the sample and the test part)."""

    features: tuple[Feature, ...]
    levels: dict[str, list[str]]
    learned: Learned | None
    class_weights: np.ndarray
    seed: int = 0
    test_size: float = 0.0
    bounds: Bounds = ()


def partition_matrix(source: PartitionSource, spec: MatrixSpec
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix, class, weight) of one partition's labelled turns outside the sample and
    the test part. Runs on a worker; the arrays stay there for ``lightgbm.dask``."""
    part = partition_frame(TrainTask(source))
    y = labels_to_index(part.turns["label"].struct.field("failure_point"))
    keep = ((y >= 0) & ~test_mask(part.turns["session_id"], spec.test_size, spec.seed)
            & ~in_sample(part.turns, y, spec.bounds, spec.seed))
    feats = part.features.filter(pl.Series(keep))
    cols = spec.learned.columns(feats) if spec.learned is not None else None
    x = model_matrix(feats, spec.features, spec.levels, cols)
    return x, y[keep].astype(np.int64), spec.class_weights[y[keep]]


def _rows(matrix: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[int]:
    """Rows per class of one partition's matrix (what the driver needs to know of it)."""
    return np.bincount(matrix[1], minlength=len(CLASSES)).tolist()


@dataclass(frozen=True)
class DistributedFit:
    """The shipped model grown by ``lightgbm.dask`` and what the manifest says of it."""

    booster: lgb.Booster
    text: str
    info: dict[str, Any]


@dataclass(frozen=True)
class DaskTrainer:
    """Grows the shipped model on the workers (:func:`partition_matrix` per partition)."""

    engine: Engine
    sources: tuple[PartitionSource, ...]
    sample_turns: int
    seed: int = 0
    test_size: float = 0.0
    bounds: Bounds = ()
    #: grow this many rounds instead of the cross-fitted count (``--rounds``)
    rounds: int | None = None

    def __call__(self, spec: MatrixSpec, params: dict[str, Any], rounds: int
                 ) -> DistributedFit:
        """Grow the shipped model with ``params`` for ``rounds`` (the cross-fitted count;
        :attr:`rounds` overrides it) on every partition's rows outside the sample."""
        rounds_from = "cross-fitting" if self.rounds is None else "--rounds"
        rounds = rounds if self.rounds is None else self.rounds
        log.warning(WARNING)
        client = self.engine.client  # type: ignore[attr-defined]
        # lightgbm.dask is built on LightGBM's scikit-learn wrappers, which fpi's lean
        # import leaves out: restore them here and on every worker
        with_wrappers()
        client.run(with_wrappers)
        from lightgbm.dask import DaskLGBMClassifier

        spec = MatrixSpec(spec.features, spec.levels, spec.learned, spec.class_weights,
                          self.seed, self.test_size, self.bounds)
        mats = self.engine.map(partition_matrix, self.sources, spec)
        counts = np.array(self.engine.gather(self.engine.map(_rows, mats)), dtype=np.int64)
        per_class = counts.sum(axis=0)
        if (per_class == 0).any():
            absent = ", ".join(c for c, n in zip(CLASSES, per_class, strict=True) if n == 0)
            raise InputError(f"--distributed-training: no labelled turn of {absent} outside "
                             "the driver's sample; lower --max-train-turns")
        held = [(m, int(n)) for m, n in zip(mats, counts.sum(axis=1), strict=True) if n]
        x, y, w = (_column(held, i, shape, dtype) for i, shape, dtype in (
            (0, (len(spec.features),), np.float64), (1, (), np.int64), (2, (), np.float64)))
        model = DaskLGBMClassifier(client=client, n_estimators=rounds,
                                   **_sklearn_params(params))
        chatter = io.StringIO()  # lightgbm.dask prints on stdout, which --json owns
        try:
            with (client.as_current(), warnings.catch_warnings(),
                  contextlib.redirect_stdout(chatter)):
                # the wrapper's n_jobs: lightgbm.dask uses each worker's threads instead
                warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored")
                model.fit(x, y, sample_weight=w, feature_name=[f.name for f in spec.features],
                          categorical_feature=[i for i, f in enumerate(spec.features)
                                               if f.kind == "categorical"] or "auto")
        except lgb.basic.LightGBMError as exc:
            raise EngineError(f"--distributed-training: lightgbm.dask failed: "
                              f"{' '.join(str(exc).split())[:200]}") from None
        finally:
            log.debug("lightgbm.dask: %s", " / ".join(chatter.getvalue().split("\n")))
        text = model.booster_.model_to_string()
        info = {"library": "lightgbm.dask", "workers": self.engine.workers,
                "partitions": len(self.sources), "rounds": rounds,
                "rounds_from": rounds_from, "early_stopping": False,
                "turns": int(per_class.sum()),
                "per_class": dict(zip(CLASSES, per_class.tolist(), strict=True)),
                "sample_turns": self.sample_turns, "reproducible": False,
                "heldout": "the driver's sample (the shipped model never saw it)"}
        return DistributedFit(lgb.Booster(model_str=text), text, info)


def _column(held: list[tuple[Any, int]], i: int, shape: tuple[int, ...], dtype: Any) -> Any:
    """Item ``i`` of every partition's (matrix, class, weight) handle, as one dask array
    whose chunks stay on the workers that built them."""
    import dask.array as da
    from dask import delayed

    return da.concatenate([da.from_delayed(delayed(operator.itemgetter(i))(m),
                                           shape=(n, *shape), dtype=dtype) for m, n in held])


#: Parameters the sklearn wrapper sets itself or ``lightgbm.dask`` overrides per worker.
_WRAPPER_SET = ("num_class", "num_threads")


def _sklearn_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if k not in _WRAPPER_SET}
    out["random_state"] = out.pop("seed", None)
    return out


def prepare(turns: pl.DataFrame | str | os.PathLike[str], engine: Engine | None,
            max_train_turns: int | None, seed: int, test_size: float, split: str,
            rounds: int | None = None) -> tuple[pl.DataFrame, pl.DataFrame, DaskTrainer]:
    """The driver's sample (turns and features) and the trainer of the shipped model.

    Raises :class:`~fpi.errors.InputError` for what distributed training cannot do: no
    cluster, a frame instead of a path, no ``max_train_turns``, a time split.
    """
    if engine is None or engine.name != "dask":
        raise InputError("distributed training needs the dask engine (--engine dask)")
    if isinstance(turns, pl.DataFrame):
        raise InputError("distributed training reads its input on the workers: give a path "
                         "every worker can read, not a frame")
    if max_train_turns is None:
        raise InputError("distributed training needs --max-train-turns: the driver's sample, "
                         "which picks the rounds and calibrates the model the workers grow "
                         "on every other labelled turn")
    if rounds is not None and rounds < 1:
        raise InputError(f"--rounds must be at least 1, got {rounds}")
    if split == "time" and test_size > 0:
        raise InputError("distributed training sets aside a test part by session hash only: "
                         "use --split session")
    sources = tuple(train_sources(turns, max(2 * engine.workers, 1)))
    sample, features = training_frame(engine, sources, TurnSample(max_train_turns, seed))
    trainer = DaskTrainer(engine, sources, sample.height, seed, test_size,
                          sample_bounds(sample, seed), rounds)
    return sample, features, trainer
