"""Fit the failure-point model (LightGBM multiclass) in memory, and train = fit + save.

:func:`fit` turns labelled canonical turns into a :class:`~fpi.model.bundle.ModelBundle`
in memory, writing nothing; :func:`train` checks the output directory, fits and saves
the bundle (:func:`fpi.model.bundle.save`). The same data, seed and thread count give
byte-identical bundles.

The steps of :func:`fit`: labelled rows and their features (:func:`_labelled_data`);
sessions set aside and folds (:func:`_split_rows`); the model's columns, fixed and
learned (:func:`feature_set`); the model cross-fitted and calibrated
(:func:`_fit_model`, :mod:`fpi.model.crossfit`); the no-context model and the rule
baseline on the same folds; the manifest (:func:`_manifest`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi import __version__
from fpi.errors import InputError, ModelError, SchemaError
from fpi.features import FEATURES, Feature, build_features, context_free
from fpi.metrics import (
    brief_metrics,
    classification_metrics,
    human_agreement,
    labels_to_index,
    soft_confusion,
    strata_values,
    stratified_soft_confusion,
)
from fpi.model.baselines import RuleBaseline, fit_rule_baseline
from fpi.model.bundle import (
    BUNDLE_FORMAT,
    LEARNED_FILE,
    MODEL_FILE,
    NO_CONTEXT_FILE,
    ModelBundle,
    check_bundle_out,
    load_bundle,
    model_matrix,
    runtime_versions,
    save,
)
from fpi.model.calibration import Calibration, fit_calibration
from fpi.model.crossfit import (
    CROSSFIT_PATIENCE,
    HOLDOUT_MIN,
    HOLDOUT_PARAMS,
    HOLDOUT_PARTS,
    HOLDOUT_PATIENCE,
    MAX_FIT_TURNS,
    NO_CONTEXT_MAX_TURNS,
    CrossFit,
    Protocol,
    assign_folds,
    binned,
    candidates,
    crossfit,
    default_folds,
    default_protocol,
    fit_final,
    test_mask,
)
from fpi.model.frame import sample_mask, training_input
from fpi.model.learned import (
    RAW_EXTRA,
    HashedTexts,
    Learned,
    TextModel,
    discover_extra,
    fit_text_models,
    hashed_texts,
    oof_text_scores,
)
from fpi.model.manifest import bundle_hash
from fpi.model.parallel import Fits, fits_at_once
from fpi.model.vocab import VocabInputs, Vocabulary, oof_vocab_columns
from fpi.progress import Progress, report
from fpi.schema import CLASSES, COMPONENTS, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.engine import Engine
    from fpi.model.distributed import DaskTrainer, DistributedFit

log = logging.getLogger(__name__)

#: Fewest labelled examples of a class the trainer accepts.
MIN_CLASS_COUNT: Final = 10

#: LightGBM parameters; seed, threads and determinism flags are added by :func:`train`.
DEFAULT_PARAMS: Final[dict[str, Any]] = {
    "objective": "multiclass",
    "num_class": len(CLASSES),
    "learning_rate": 0.1,
    "num_leaves": 63,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "max_cat_to_onehot": 8,
    "cat_smooth": 10.0,
    "verbosity": -1,
}

Split = Literal["session", "time"]
ProtocolChoice = Literal["auto", "crossfit", "holdout"]


@dataclass(frozen=True)
class FitOptions:
    """How :func:`fit` trains (the keyword arguments of :func:`train`, checked)."""

    seed: int = 0
    threads: int = 1
    folds: int | None = None
    split: Split = "session"
    test_size: float = 0.0
    num_boost_round: int = 1000
    early_stopping_rounds: int | None = None  # None: by protocol (:meth:`patience`)
    params: dict[str, Any] | None = None
    search: bool = True
    learn_features: bool = True
    class_weight_power: float = 0.5
    min_class_count: int = MIN_CLASS_COUNT
    no_context: bool = True
    protocol: ProtocolChoice = "auto"
    holdout_min: int = HOLDOUT_MIN
    no_context_max_turns: int = NO_CONTEXT_MAX_TURNS
    holdout_refit: bool = False
    max_fit_turns: int | None = MAX_FIT_TURNS
    #: cores for fitting models at once (None: all available); not in the manifest,
    #: since the models are the same whatever it is (:mod:`fpi.model.parallel`)
    jobs: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.test_size < 1:
            raise InputError(f"test size must be at least 0 and below 1, got {self.test_size}")
        if self.protocol not in ("auto", "crossfit", "holdout"):
            raise InputError(f"unknown protocol {self.protocol!r}: use 'auto', 'crossfit' "
                             "or 'holdout'")
        if self.no_context_max_turns < 1:
            raise InputError("no-context max turns must be at least 1, got "
                             f"{self.no_context_max_turns}")
        if self.max_fit_turns is not None and self.max_fit_turns < 1:
            raise InputError("max fit turns must be at least 1 (or none: no cap), got "
                             f"{self.max_fit_turns}")
        if self.folds is not None and self.folds < 2:
            raise InputError(f"folds must be at least 2, got {self.folds}")
        if self.jobs is not None and self.jobs < 1:
            raise InputError(f"jobs must be at least 1, got {self.jobs}")

    def patience(self, protocol: Protocol) -> int:
        """Early stopping's rounds: as given, else 20 when cross-fitting and 10 under the
        holdout protocol (:data:`fpi.model.crossfit.HOLDOUT_PATIENCE`)."""
        if self.early_stopping_rounds is not None:
            return self.early_stopping_rounds
        return HOLDOUT_PATIENCE if protocol == "holdout" else CROSSFIT_PATIENCE


class _Laps:
    """Wall seconds per step, into ``timings`` (not in the manifest: no clock there)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = round(now - self.clock, 3)
        self.clock = now


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: where the bundle is and its manifest (with held-out metrics)."""

    path: Path
    manifest: dict[str, Any]
    bundle: ModelBundle
    #: Wall seconds per step (features, learned, model, no_context, rules, manifest,
    #: write); not in the
    #: manifest, which must not depend on the clock.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def heldout(self) -> dict[str, Any]:
        """Held-out metrics of the model (``manifest["heldout"]["metrics"]``)."""
        return self.manifest["heldout"]["metrics"]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: held-out metrics in the :mod:`fpi.evaluate` layout plus counts."""
        h = self.manifest["heldout"]
        return {"model": str(self.path), "classes": list(CLASSES), **h["metrics"],
                "baselines": self.manifest["baselines"]["heldout"], "human": h.get("human"),
                "training": self.manifest["training"]}



def class_weights(y: np.ndarray, power: float) -> np.ndarray:
    """Weight per class: ``(n / (k * count)) ** power`` (0 for an absent class)."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = np.where(counts > 0, (len(y) / (len(CLASSES) * np.maximum(counts, 1))) ** power, 0.0)
    return w


def _fingerprint(turns: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    digest.update(turns.select(pl.col("session_id", "turn_index")).hash_rows(seed=0)
                  .to_numpy().tobytes())
    digest.update(turns.hash_rows(seed=0).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def category_levels(features: pl.DataFrame, feats: Sequence[Feature]) -> dict[str, list[str]]:
    """Sorted levels seen of each categorical feature in ``feats``."""
    return {
        f.name: features[f.name].drop_nulls().unique().sort().to_list()
        for f in feats if f.kind == "categorical"
    }


@dataclass(frozen=True)
class FeatureSet:
    """The model's columns: fixed features plus those learned from the data."""

    features: tuple[Feature, ...]
    levels: dict[str, list[str]]
    learned: Learned | None
    columns: dict[str, np.ndarray]  # learned columns of the labelled rows (OOF on fit rows)


def _rows(hashed: dict[str, HashedTexts], mask: np.ndarray) -> dict[str, HashedTexts]:
    if mask.all():  # every row (no test part): no copy
        return hashed
    return {f: m.take(mask) for f, m in hashed.items()}


def feature_set(feats: pl.DataFrame, y: np.ndarray, fit: np.ndarray, folds: np.ndarray,
                init: ModelBundle | None, learn: bool,
                weight: np.ndarray | None = None) -> FeatureSet:
    """Features of a new model: the init bundle's (warm start) or fixed + learned ones."""
    fit_feats = feats.filter(pl.Series(fit))
    fw = None if weight is None else weight[fit]
    if init is not None:
        if init.learned is None:
            return FeatureSet(init.features, init.levels, None, {})
        # the same columns, their text models refitted on this data: a text feature
        # means "log-posterior of a class given this field's text" whatever the language
        hashed = hashed_texts(feats, tuple(init.learned.text))  # hashed once, sliced
        vocab_in = VocabInputs.of(fit_feats) if init.learned.vocab is not None else None
        learned = Learned({f: TextModel.fit_texts(hashed[f].take(fit), y[fit], weight=fw)
                           for f in init.learned.text},
                          init.learned.extra,
                          None if vocab_in is None else Vocabulary.fit(vocab_in))
        features, levels = init.features, init.levels
    elif not learn:
        return FeatureSet(FEATURES, category_levels(fit_feats, FEATURES), None, {})
    else:
        hashed = hashed_texts(feats)
        vocab_in = VocabInputs.of(fit_feats)
        learned = Learned(fit_text_models(fit_feats, y[fit], _rows(hashed, fit), fw),
                          tuple(discover_extra(fit_feats[RAW_EXTRA])), Vocabulary.fit(vocab_in))
        extra = tuple(Feature(n, g) for n, g in learned.names_groups())
        features, levels = FEATURES + extra, category_levels(fit_feats, FEATURES)
    # the full-data models on the rows outside the fit (a test part); fit rows get
    # out-of-fold values below
    cols = learned.columns(feats, hashed, rows=~fit)
    for name, oof in oof_text_scores(fit_feats, y[fit], folds[fit], tuple(learned.text),
                                     _rows(hashed, fit), fw).items():
        cols[name][fit] = oof  # fit rows: out-of-fold scores only
    if vocab_in is not None:  # the same for the word and mention counts
        for name, oof in oof_vocab_columns(vocab_in, folds[fit]).items():
            cols[name][fit] = oof
    return FeatureSet(features, levels, learned, cols)


@dataclass(frozen=True)
class _Data:
    """The labelled rows: turns, features, classes, which rows are fitted, their folds."""

    turns: pl.DataFrame
    feats: pl.DataFrame
    y: np.ndarray
    fit: np.ndarray  # fit rows (the rest is the test part)
    fold: np.ndarray  # fold per row
    folds: int
    protocol: Protocol
    weight: np.ndarray | None = None  # per-row training weight (``weights``), or none

    @property
    def valid(self) -> np.ndarray:
        """Rows with out-of-fold margins: every fit row, or the holdout's validation part
        (the fit rows of the lowest fold, as :func:`fpi.model.crossfit.crossfit` holds out)."""
        if self.protocol == "crossfit":
            return self.fit
        return self.fit & (self.fold == self.fold[self.fit].min())

    @property
    def ev(self) -> np.ndarray:
        """Rows the held-out metrics are on: the test part, or the out-of-fold rows."""
        return ~self.fit if (~self.fit).any() else self.valid


def turn_weights(lab_turns: pl.DataFrame, weights: pl.DataFrame) -> np.ndarray:
    """Each labelled turn's weight from ``weights`` (``session_id, turn_index, weight``;
    turns it does not list weigh 1).

    Raises
    ------
    InputError
        ``weights`` lacks a column, has a negative, missing or non-finite weight or a
        turn twice, or every labelled turn weighs 0.
    """
    missing = [c for c in (*KEY_COLUMNS, "weight") if c not in weights.columns]
    if missing:
        raise InputError(f"weights lack column(s) {', '.join(missing)}: give session_id, "
                         "turn_index and weight per turn")
    try:
        w = weights.select(pl.col("session_id").cast(pl.String),
                           pl.col("turn_index").cast(pl.Int64),
                           pl.col("weight").cast(pl.Float64))
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"weights: session_id, turn_index and weight must be text, "
                         f"integer and number: {exc}") from None
    bad = w.filter(pl.col("weight").is_null() | ~pl.col("weight").is_finite()
                   | (pl.col("weight") < 0))
    if bad.height:
        r = bad.row(0, named=True)
        raise InputError(f"weights: {bad.height} turn(s) have a missing, negative or "
                         f"non-finite weight (first: session {r['session_id']!r} turn "
                         f"{r['turn_index']}: {r['weight']})")
    if w.select(*KEY_COLUMNS).is_duplicated().any():
        raise InputError("weights: a turn (session_id, turn_index) is listed twice")
    out = lab_turns.select(*KEY_COLUMNS).join(w, on=list(KEY_COLUMNS), how="left",
                                              maintain_order="left")
    arr = out["weight"].fill_null(1.0).to_numpy()
    if not arr.sum() > 0:
        raise InputError("weights: every labelled turn weighs 0: nothing to learn from")
    return arr


def _labelled_data(turns: pl.DataFrame, features: pl.DataFrame | None, options: FitOptions,
                   progress: Progress | None, lap: _Laps,
                   weights: pl.DataFrame | None = None) -> _Data:
    """The labelled turns and their features (built if not given), split and folded."""
    y_all = labels_to_index(turns["label"].struct.field("failure_point"))
    labelled = y_all >= 0
    if not labelled.any():
        raise InputError(f"none of the {turns.height} turns has a label.failure_point: "
                         "training needs labelled turns")
    if features is None:
        report(progress, "features", 0, None)
        features = build_features(turns)
        report(progress, "features", turns.height, turns.height)
    lap("features")
    lab_mask = pl.Series(labelled)
    lab_turns = turns.filter(lab_mask)
    y = y_all[labelled]
    protocol: Protocol = (default_protocol(len(y), options.holdout_min)
                          if options.protocol == "auto" else options.protocol)
    folds = options.folds
    if folds is None:  # large data: fewer folds (or one validation part) keep it sane
        folds = HOLDOUT_PARTS if protocol == "holdout" else default_folds(len(y))
    fit, fold = _split_rows(lab_turns, options.split, options.test_size, options.seed, folds)
    _check_classes(y[fit], options.min_class_count)
    weight = None if weights is None else turn_weights(lab_turns, weights)
    return _Data(lab_turns, features.filter(lab_mask), y, fit, fold, folds, protocol, weight)


def _split_rows(lab_turns: pl.DataFrame, split: Split, test_size: float, seed: int,
                folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit mask, fold per row): sessions set aside as a test part, folds of the rest."""
    sessions = lab_turns["session_id"]
    if split == "time" and test_size > 0:
        first = lab_turns.group_by("session_id").agg(pl.col("timestamp").min()).sort(
            "timestamp", "session_id")
        n_test = max(1, round(first.height * test_size))
        newest = first["session_id"].tail(n_test)
        test = sessions.is_in(newest.implode()).to_numpy()
    elif split in ("session", "time"):
        test = test_mask(sessions, test_size, seed)
    else:
        raise InputError(f"unknown split {split!r}: use 'session' or 'time'")
    fit = ~test
    n_fit = sessions.filter(pl.Series(fit)).n_unique()
    fold = assign_folds(sessions, folds, seed)
    if n_fit < max(folds, 4) or len(np.unique(fold[fit])) < 2:
        raise InputError(f"only {n_fit} labelled session(s) to cross-fit: training needs at "
                         f"least {max(folds, 4)} (sessions are never split across folds)")
    return fit, fold


def _check_classes(y: np.ndarray, min_class_count: int) -> None:
    counts = np.bincount(y, minlength=len(CLASSES))
    few = [(c, int(counts[i])) for i, c in enumerate(CLASSES) if counts[i] < min_class_count]
    if few:
        listed = ", ".join(f"{c!r} has {n}" for c, n in few)
        raise InputError(f"too few labelled examples to learn: {listed} (need at least "
                         f"{min_class_count} per class)")


def _base_params(n_fit: int, seed: int, threads: int) -> dict[str, Any]:
    p = {**DEFAULT_PARAMS, "seed": seed, "num_threads": threads, "deterministic": True,
         "force_col_wise": True}
    # On large data, bag fewer rows per tree: each round costs in proportion to the rows
    # bagged, and a few hundred thousand rows per tree are plenty for 6 classes.
    p["bagging_fraction"] = float(np.clip(200_000 / max(n_fit, 1), 0.3, 0.8))
    if n_fit > 300_000:  # plenty of data: bigger steps, fewer rounds
        p["learning_rate"] = 0.15
    return p


def _rules_oof(feats: pl.DataFrame, y: np.ndarray, fit: np.ndarray, folds: np.ndarray,
               seed: int, holdout: bool = False) -> tuple[RuleBaseline, np.ndarray]:
    """The rule baseline fitted on all fit rows, and its out-of-fold predictions (on
    the first fold only with ``holdout``; -1 where there is none)."""
    pred = np.full(len(y), -1)
    ks = np.unique(folds[fit])
    for k in ks[:1] if holdout else ks:
        held = fit & (folds == k)
        rule = fit_rule_baseline(feats.filter(pl.Series(fit & ~held)), y[fit & ~held],
                                 seed=seed)
        pred[held] = rule.predict(feats.filter(pl.Series(held)))
    final = fit_rule_baseline(feats.filter(pl.Series(fit)), y[fit], seed=seed)
    test = ~fit
    if test.any():
        pred[test] = final.predict(feats.filter(pl.Series(test)))
    return final, pred


@dataclass(frozen=True)
class _Fitted:
    """One cross-fitted model: shipped booster, calibration, evaluated probabilities."""

    booster: lgb.Booster
    text: str
    calibration: Calibration
    proba: np.ndarray  # on the evaluated rows (OOF fit rows, or the test part)
    cv: CrossFit
    train_turns: int  # rows the shipped model trained on
    refit: bool  # the shipped model was refitted (else: the validated model itself)
    #: what the manifest says of a model grown by lightgbm.dask (None: grown here)
    distributed: dict[str, Any] | None = None
    #: the labelled rows the shipped model trained on (None: every fit row)
    trained: np.ndarray | None = None


def _fit_model(x: np.ndarray, y: np.ndarray, w: np.ndarray, data: _Data,
               which: Sequence[Feature], base: dict[str, Any],
               cands: list[dict[str, Any]], rounds_cap: tuple[int, int],
               init: lgb.Booster | None, progress: Progress | None, stage: str,
               keep: np.ndarray | None = None, refit: bool = True,
               grow: Callable[[dict[str, Any], int], DistributedFit] | None = None,
               turn_w: np.ndarray | None = None, fits: Fits | None = None) -> _Fitted:
    """Cross-fit (or, by ``data.protocol``, hold out), calibrate and fit the shipped model.

    ``keep`` (holdout only): the fit rows the models may train on, a sample; the
    validation part is scored whole, so the metrics are on the same rows as without it.
    ``refit=False`` (holdout only) ships the validated model itself instead of a refit.
    ``grow`` grows the shipped model on a cluster instead (distributed training);
    ``turn_w`` weighs the calibration's rows (per-turn weights); ``fits`` runs the
    model fits (:mod:`fpi.model.parallel`).
    """
    holdout = data.protocol == "holdout"
    rows = data.fit if keep is None else data.fit & (keep | data.valid)
    trainable = None if keep is None else keep[rows]
    xf, yf = (x, y) if rows.all() else (x[rows], y[rows])  # all: no copy of the matrix
    ds = binned(xf, yf, w[rows], which, base, keep_raw=init is not None)
    refit = refit or not holdout
    cv = crossfit(ds, xf, yf, data.fold[rows], base, cands, *rounds_cap, init, progress,
                  f"cross-fitting{stage}", holdout, trainable, keep_model=not refit,
                  fits=fits)
    if grow is not None:  # grown on the workers: held out of the whole sample
        report(progress, "boosting (lightgbm.dask)", 0, None)
        grown = grow(cv.params, cv.rounds)
        raw = np.asarray(grown.booster.predict(x, raw_score=True))
        calib = fit_calibration(raw[data.fit], y[data.fit])
        ev = ~data.fit if (~data.fit).any() else data.fit
        return _Fitted(grown.booster, grown.text, calib, calib.apply(raw[ev]), cv,
                       int(data.fit.sum()), True, grown.info)
    oof_raw = cv.oof_raw[cv.held]
    calib = fit_calibration(oof_raw, yf[cv.held],
                            weight=None if turn_w is None else turn_w[rows][cv.held])
    if refit:
        booster, text = (fits or Fits()).fit(partial(
            fit_final, ds, cv.params, cv.rounds, init, progress, f"boosting{stage}",
            trainable, fits))
    else:
        assert cv.model is not None
        booster, text = lgb.Booster(model_str=cv.model), cv.model
    test = ~data.fit
    raw = np.asarray(booster.predict(x[test], raw_score=True)) if test.any() else oof_raw
    trained = data.fit if keep is None else data.fit & keep
    if not refit:
        trained = trained & ~data.valid
    return _Fitted(booster, text, calib, calib.apply(raw), cv, int(trained.sum()), refit,
                   trained=trained)


@dataclass(frozen=True)
class _Baselines:
    """The no-context model (if trained), the rule baseline and their held-out metrics."""

    no_context: _Fitted | None
    no_context_features: tuple[Feature, ...]
    rules: RuleBaseline
    heldout: dict[str, Any]


def _sample_rows(data: _Data, most: int | None, seed: int) -> np.ndarray | None:
    """Holdout protocol: a seeded, class-stratified sample of at most ``most`` fit rows
    (:func:`fpi.model.frame.sample_mask`: whole sessions but at the cut), else None."""
    if data.protocol != "holdout" or most is None or data.fit.sum() <= most:
        return None
    y = np.where(data.fit, data.y, -1)
    return sample_mask(data.turns, y, most, seed)


def _no_context_rows(data: _Data, options: FitOptions) -> np.ndarray | None:
    """Holdout protocol: at most ``no_context_max_turns`` (and ``max_fit_turns``) fit
    rows (:func:`_sample_rows`), else None."""
    most = min(options.no_context_max_turns, options.max_fit_turns or data.y.size)
    return _sample_rows(data, most, options.seed)


_RuleJob = Callable[[], tuple[RuleBaseline, np.ndarray]]


def _start_rules(data: _Data, options: FitOptions) -> _RuleJob:
    """The rule baseline and its held-out predictions (:func:`_rules_oof`), as a call that
    returns them. With two threads or more they are begun now on a second thread: serial
    NumPy and Polars work, overlapping the text models (also serial) and the trees."""
    args = (data.feats, data.y, data.fit, data.fold, options.seed, data.protocol == "holdout")
    if options.threads < 2:
        return partial(_rules_oof, *args)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fpi-rules")
    job = pool.submit(_rules_oof, *args)
    pool.shutdown(wait=False)  # the thread ends with its job
    return job.result


def _fit_no_context(data: _Data, fs: FeatureSet, x: np.ndarray, w: np.ndarray,
                    params: dict[str, Any], init: ModelBundle | None, options: FitOptions,
                    progress: Progress | None, fits: Fits) -> _Fitted:
    """The no-context model: the main model's parameters (``params``, no search)."""
    idx = [i for i, f in enumerate(fs.features) if f.group != "context"]
    nc_init = (init.no_context_booster if init is not None else None)
    return _fit_model(x[:, idx], data.y, w, data, context_free(fs.features), params,
                      [{}], (options.num_boost_round, options.patience(data.protocol)),
                      nc_init, progress, " (no context)", _no_context_rows(data, options),
                      options.holdout_refit, turn_w=data.weight, fits=fits)


def _fit_baselines(data: _Data, fs: FeatureSet, nc: _Fitted | None, options: FitOptions,
                   progress: Progress | None, lap: _Laps, rules_job: _RuleJob) -> _Baselines:
    """The baselines' held-out metrics: the no-context model's (``nc``, if trained) and
    the rule baseline's (``rules_job``, :func:`_start_rules`)."""
    y_ev = data.y[data.ev]
    heldout: dict[str, Any] = {}
    if nc is not None:
        heldout["no_context"] = brief_metrics(
            classification_metrics(y_ev, nc.proba.argmax(axis=1)))
    report(progress, "rule baseline", 0, None)
    rules, rule_pred = rules_job()
    heldout["rules"] = brief_metrics(classification_metrics(y_ev, rule_pred[data.ev]))
    lap("rules")
    return _Baselines(nc, context_free(fs.features), rules, heldout)


def _fit_models(x: np.ndarray, w: np.ndarray, data: _Data, fs: FeatureSet,
                base: dict[str, Any], cands: list[dict[str, Any]], keep: np.ndarray | None,
                grow: Callable[[dict[str, Any], int], DistributedFit] | None,
                init: ModelBundle | None, options: FitOptions, progress: Progress | None,
                lap: _Laps) -> tuple[_Fitted, _Fitted | None]:
    """The main model and (if asked for) the no-context one. With one candidate their
    parameters are known at the start, so the two are prepared in threads side by side
    and train side by side when several fits may run at once; else one boosts while the
    other's matrix is cut and binned, or calibrated (the same models either way)."""
    # a warm start's folds would all predict with the one init booster: one at a time
    fits = Fits(1 if init is not None else fits_at_once(options.jobs, options.threads))
    fit_main = partial(_fit_model, x, data.y, w, data, fs.features, base, cands,
                       (options.num_boost_round, options.patience(data.protocol)),
                       init.booster if init is not None else None, progress, "",
                       keep=keep, refit=options.holdout_refit, grow=grow,
                       turn_w=data.weight, fits=fits)
    if options.no_context and grow is None and len(cands) == 1 and init is None:
        nc = partial(_fit_no_context, data, fs, x, w, {**base, **cands[0]}, init, options,
                     None, fits)  # progress: the main model's stages only
        main, no_context = fits.together([fit_main, nc])
        lap("model")
        return main, no_context
    main = fit_main()
    lap("model")
    if not options.no_context:
        return main, None
    no_context = _fit_no_context(data, fs, x, w, main.cv.params, init, options, progress,
                                 fits)
    lap("no_context")
    return main, no_context


def fit(turns: pl.DataFrame, options: FitOptions | None = None, *,
        features: pl.DataFrame | None = None, init: ModelBundle | None = None,
        progress: Progress | None = None,
        timings: dict[str, float] | None = None,
        distributed: DaskTrainer | None = None,
        weights: pl.DataFrame | None = None) -> ModelBundle:
    """Fit the failure-point model on labelled canonical turns: a bundle in memory.

    What :func:`train` does, without writing: see there. ``init`` is a bundle to
    continue from (its features; warm start); ``timings``, if given, receives the wall
    seconds per step. ``distributed`` grows the shipped model on a cluster, with
    ``turns`` the driver's sample (:mod:`fpi.model.distributed`).
    ``weights``, per-turn training weights (:func:`turn_weights`).

    Raises
    ------
    InputError
        No labelled turns, too few sessions, or a class with too few examples.
    """
    options = options or FitOptions()
    lap = _Laps(timings)
    data = _labelled_data(turns, features, options, progress, lap, weights)
    rules_job = _start_rules(data, options)
    fs = feature_set(data.feats, data.y, data.fit, data.fold, init, options.learn_features,
                     data.weight)
    x = model_matrix(data.feats, fs.features, fs.levels, fs.columns)
    lap("learned")
    n_fit = int(data.fit.sum())
    keep = _sample_rows(data, options.max_fit_turns, options.seed)
    n_trees = n_fit if keep is None else int(keep.sum())  # the rows the trees train on
    base = _base_params(n_trees, options.seed, options.threads)
    cands = ([dict(options.params)] if options.params
             else (candidates(n_trees) if options.search else [{}]))
    if data.protocol == "holdout" and not options.params:  # bigger steps, fewer rounds
        cands = [{**c, **HOLDOUT_PARAMS} for c in cands]
    cw = class_weights(data.y[data.fit], options.class_weight_power)
    w = cw[data.y] if data.weight is None else cw[data.y] * data.weight
    log.info("cross-fitting on %d turns (%d features)", n_fit, len(fs.features))
    grow = None
    if distributed is not None:
        from fpi.model.distributed import MatrixSpec

        grow = partial(distributed, MatrixSpec(fs.features, fs.levels, fs.learned, cw))
    main, no_context = _fit_models(x, w, data, fs, base, cands, keep, grow, init, options,
                                   progress, lap)
    baselines = _fit_baselines(data, fs, no_context, options, progress, lap, rules_job)
    files = {MODEL_FILE: main.text}
    if fs.learned is not None:
        files[LEARNED_FILE] = fs.learned.to_json()
    if baselines.no_context is not None:
        files[NO_CONTEXT_FILE] = baselines.no_context.text
    manifest = _manifest(turns, data, fs, main, baselines, cw, options, init, files)
    lap("manifest")
    nc_booster = baselines.no_context.booster if baselines.no_context is not None else None
    return ModelBundle(manifest, main.booster, nc_booster, None, fs.learned, files=files)


def _count(data: _Data, mask: np.ndarray) -> dict[str, Any]:
    """Turns, sessions and turns per class among the labelled rows in ``mask``."""
    return {"turns": int(mask.sum()),
            "sessions": data.turns["session_id"].filter(pl.Series(mask)).n_unique(),
            "per_class": {c: int(n) for c, n in
                          zip(CLASSES, np.bincount(data.y[mask], minlength=len(CLASSES)),
                              strict=True)}}


def _training_block(turns: pl.DataFrame, data: _Data, main: _Fitted, options: FitOptions,
                    init: ModelBundle | None) -> dict[str, Any]:
    """The manifest's ``training`` section: the data, the protocol and the counts."""
    y = data.y
    heldout_is = "test part" if (~data.fit).any() else (
        "out-of-fold" if data.protocol == "crossfit" else "validation part")
    if main.distributed is not None:
        heldout_is = ("test part" if (~data.fit).any()
                      else "driver sample (held out of distributed training)")
    block: dict[str, Any] = {
        "fingerprint": _fingerprint(turns),
        "turns": turns.height,
        "labelled_turns": len(y),
        "protocol": data.protocol, "folds": data.folds, "split": options.split,
        "seed": options.seed, "threads": options.threads, "test_size": options.test_size,
        "fold_rounds": main.cv.fold_rounds,
        "rounds": main.cv.rounds if main.refit else main.cv.fold_rounds[0],
        "shipped": _shipped(data, main),
        "search": main.cv.search,
        "init_model": init.model_id if init is not None else None,
        "heldout_is": heldout_is,
        "counts": {"train": _count(data, data.fit if main.trained is None else main.trained),
                   "valid": _count(data, data.valid),
                   "calibration": _count(data, data.valid), "test": _count(data, data.ev)},
        **({} if data.weight is None else {"weights": _weight_block(data)}),
        "class_prior": {c: round(float(n) / len(y), 6) for c, n in
                        zip(CLASSES, np.bincount(y, minlength=len(CLASSES)), strict=True)},
    }
    if data.protocol == "holdout":  # only there: cross-fitted bundles keep their bytes
        block["max_fit_turns"] = options.max_fit_turns
    if main.distributed is not None:  # only then: local bundles keep their bytes
        block["distributed"] = main.distributed
    return block


def _shipped(data: _Data, main: _Fitted) -> str:
    """What the shipped model is (``training.shipped``)."""
    if not main.refit:
        return "the validated model"
    if main.trained is None or main.train_turns == int(data.fit.sum()):
        return "refit on all fit rows"
    return "refit on a sample of the fit rows (max_fit_turns)"


def _weight_block(data: _Data) -> dict[str, Any]:
    """How the turns were weighted (only in a weighted model's manifest)."""
    assert data.weight is not None
    w = data.weight[data.fit]
    return {"turns_not_1": int((w != 1).sum()), "turns_0": int((w == 0).sum()),
            "sum": round(float(w.sum()), 6)}


def _manifest(turns: pl.DataFrame, data: _Data, fs: FeatureSet, main: _Fitted,
              baselines: _Baselines, cw: np.ndarray, options: FitOptions,
              init: ModelBundle | None, files: dict[str, str]) -> dict[str, Any]:
    """The bundle's manifest (:mod:`fpi.model.manifest`), with file hashes and its own."""
    y_ev = data.y[data.ev]
    metrics = classification_metrics(y_ev, main.proba.argmax(axis=1), main.proba)
    second = labels_to_index(data.turns["label"].struct.field("failure_point_2"))
    nc = baselines.no_context
    manifest: dict[str, Any] = {
        "fpi_version": __version__,
        "format_version": BUNDLE_FORMAT,
        "versions": runtime_versions(),
        "classes": list(CLASSES),
        "components": list(COMPONENTS),
        "features": [
            {"name": f.name, "group": f.group, "kind": f.kind, "dtype":
             "string" if f.kind == "categorical" else "float64",
             "levels": fs.levels.get(f.name) if f.kind == "categorical" else None}
            for f in fs.features
        ],
        "params": {**main.cv.params, "num_boost_round": options.num_boost_round,
                   "early_stopping_rounds": options.patience(data.protocol),
                   "best_iteration": main.booster.current_iteration(),
                   "class_weight_power": options.class_weight_power,
                   "class_weights": dict(zip(CLASSES, (round(float(v), 6) for v in cw),
                                             strict=True))},
        "calibration": main.calibration.to_dict(),
        "training": _training_block(turns, data, main, options, init),
        "heldout": {"metrics": metrics, "confusion": metrics["confusion"],
                    "soft_confusion": soft_confusion(y_ev, main.proba),
                    "soft_confusion_strata": stratified_soft_confusion(
                        y_ev, main.proba, strata_values(data.turns.filter(pl.Series(data.ev)))),
                    "human": human_agreement(y_ev, second[data.ev], metrics["per_class"])},
        "no_context": None if nc is None else {
            "features": [f.name for f in baselines.no_context_features],
            "calibration": nc.calibration.to_dict(),
            "best_iteration": nc.booster.current_iteration(),
            "train_turns": nc.train_turns},
        "baselines": {
            "rules": {"thresholds": baselines.rules.to_dict()},
            "heldout": baselines.heldout,
        },
    }
    manifest["files"] = {name: hashlib.sha256(text.encode("utf-8")).hexdigest()
                         for name, text in files.items()}
    manifest["bundle_hash"] = bundle_hash(manifest)
    return manifest


def _init_bundle(path: str | os.PathLike[str] | None, turns: pl.DataFrame) -> ModelBundle | None:
    """The bundle to warm-start from, checked: this fpi must compute all its features."""
    if path is None:
        return None
    init = load_bundle(path)
    try:
        init.check_compatible(turns)
    except SchemaError as exc:
        raise ModelError(f"cannot warm-start from {path}: {exc}") from None
    return init


def train(
    turns: pl.DataFrame | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    threads: int = 1,
    jobs: int | None = None,
    folds: int | None = None,
    split: Split = "session",
    test_size: float = 0.0,
    num_boost_round: int = 1000,
    early_stopping_rounds: int | None = None,
    params: dict[str, Any] | None = None,
    search: bool = True,
    learn_features: bool = True,
    class_weight_power: float = 0.5,
    min_class_count: int = MIN_CLASS_COUNT,
    no_context: bool = True,
    features: pl.DataFrame | None = None,
    init_model: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
    max_train_turns: int | None = None,
    distributed_training: bool = False,
    distributed_rounds: int | None = None,
    weights: pl.DataFrame | None = None,
    protocol: ProtocolChoice = "auto",
    holdout_min: int = HOLDOUT_MIN,
    no_context_max_turns: int = NO_CONTEXT_MAX_TURNS,
    holdout_refit: bool = False,
    max_fit_turns: int | None = MAX_FIT_TURNS,
) -> TrainResult:
    """Train the failure-point model on labelled canonical turns and write a bundle.

    Cross-fitting by session (``folds`` folds, by default 5, 3 above 20,000
    labelled turns; a hash of seed and session id): each
    fold's model is trained on the other folds and early-stopped on its own, giving
    out-of-fold margins for every labelled turn. They fit the calibration, the
    held-out metrics and confusion matrices (of the model, the no-context model and
    the rule baseline, on the same folds), and the rounds of the shipped model,
    which is then trained on all labelled turns. A small parameter search (by data
    size, :func:`fpi.model.crossfit.candidates`) runs on the first fold. With
    ``test_size`` > 0, that fraction of sessions (random, or the newest with
    ``split="time"``) is set aside first and the metrics are measured on it.
    ``learn_features`` adds the text models and ``extra`` numbers (:mod:`fpi.model.learned`);
    ``init_model`` continues from another bundle (same features; warm start).
    ``jobs`` cores (``None``: all available) fit the fold models, and the no-context
    model beside the main one, ``jobs // threads`` at a time (:mod:`fpi.model.parallel`):
    the same bundle whatever ``jobs`` is.

    ``turns`` may instead be a path (or URL) the ``engine`` reads: a partitioned
    directory of ``fpi ingest --partitions`` or one canonical Parquet file; the
    features are then built per partition on the engine (:mod:`fpi.model.frame`; a
    Dask cluster with :class:`fpi.engine.dask.DaskEngine`) and the model trained
    here, the same model as from the frame. ``max_train_turns`` trains on a seeded,
    class-stratified sample of at most that many labelled turns (the rule:
    :mod:`fpi.model.frame`).

    ``distributed_training`` (with a Dask ``engine`` and ``max_train_turns``) grows the
    shipped model with ``lightgbm.dask`` on every labelled turn outside that sample, for
    the rounds cross-fitting on the sample picks (``distributed_rounds``, if given,
    instead); the sample calibrates and measures it. Such models differ from run to
    run (:mod:`fpi.model.distributed`).
    ``weights`` (``session_id, turn_index, weight``; unlisted labelled turns weigh 1,
    e.g. from ``fpi labels check --fix weight``) multiply each turn's class weight in
    the LightGBM datasets of cross-fitting, early stopping and the shipped model, weigh
    the calibration's log loss and the text models' counts; weight 0 is the same as no
    label for learning. The held-out metrics stay unweighted: every labelled turn counts
    once, with its label as given.
    ``protocol="holdout"`` (``"auto"``: from ``holdout_min`` labelled turns on,
    :func:`fpi.model.crossfit.default_protocol`) runs only the first of the folds
    (``folds``, by default 5): its sessions are the validation part, which gives the
    early-stopped rounds, the calibration and the held-out metrics (``heldout_is``
    ``validation part``). Its trees train at learning rate 0.25 with half the features
    per tree (:data:`fpi.model.crossfit.HOLDOUT_PARAMS`, unless ``params``) and stop
    early after 10 rounds without a better validation loss (20 when cross-fitting;
    ``early_stopping_rounds``, if given, either way), on a
    seeded, class-stratified sample of at most ``max_fit_turns`` fit turns if given
    (the ``max_train_turns`` rule; the default ``None``: all); the text models still
    learn from every label and the whole validation part is scored. The validated
    model itself is shipped; ``holdout_refit=True`` refits it on all fit turns (or
    the sample) for 1.1x its rounds instead.
    The no-context baseline trains on at most ``no_context_max_turns`` (and
    ``max_fit_turns``) of the fit turns, the same way, and the rule baseline is scored
    on the validation part.

    Raises
    ------
    InputError
        No labelled turns, too few sessions, a class with too few examples, or
        ``out_dir`` is not absent, empty or a previous bundle (checked first).
    ModelError
        ``init_model`` is not a bundle this fpi can continue from.
    """
    options = FitOptions(seed=seed, threads=threads, jobs=jobs, folds=folds, split=split,
                         test_size=test_size, num_boost_round=num_boost_round,
                         early_stopping_rounds=early_stopping_rounds, params=params,
                         search=search, learn_features=learn_features,
                         class_weight_power=class_weight_power,
                         min_class_count=min_class_count, no_context=no_context,
                         protocol=protocol, holdout_min=holdout_min,
                         no_context_max_turns=no_context_max_turns,
                         holdout_refit=holdout_refit, max_fit_turns=max_fit_turns)
    check_bundle_out(out_dir)  # before the slow part
    trainer = None
    if distributed_training:
        if init_model is not None:
            raise InputError("distributed training starts from scratch: not with an init "
                             "model")
        if weights is not None:
            raise InputError("distributed training grows the shipped model without per-turn "
                             "weights: not with --weights or a weight column in --labels")
        from fpi.model.distributed import prepare

        turns, features, trainer = prepare(turns, engine, max_train_turns, seed, test_size,
                                           split, distributed_rounds)
    else:
        if distributed_rounds is not None:
            raise InputError("distributed rounds (--rounds) need distributed training")
        turns, features = training_input(turns, features, engine, max_train_turns, seed)
    init = _init_bundle(init_model, turns)
    timings: dict[str, float] = {}
    bundle = fit(turns, options, features=features, init=init, progress=progress,
                 timings=timings, distributed=trainer, weights=weights)
    clock = time.perf_counter()
    bundle = save(bundle, out_dir)
    timings["write"] = round(time.perf_counter() - clock, 3)
    assert bundle.path is not None
    return TrainResult(bundle.path, bundle.manifest, bundle, timings)
