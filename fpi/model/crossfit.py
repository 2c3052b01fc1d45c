"""Cross-fitting by session: fold assignment, parameter candidates and fold fits.

Every labelled turn is used (issue 13): ``k`` folds of whole sessions give
out-of-fold (OOF) raw margins for every labelled turn, from which the trainer
fits the calibration, measures the held-out metrics and the confusion matrices,
and takes the number of boosting rounds; the shipped model is then trained on
all labelled turns (:func:`fit_final`). A session's fold is a hash of the seed and its id
alone, so it does not depend on row order or on which other sessions are in the data.

On large data (:func:`default_protocol`) the *holdout* protocol runs only the first
fold: its sessions are the validation part, which gives the rounds, the calibration
and the held-out metrics (issue 12: at a million turns every label is worth little,
and each fold model costs as much as the shipped one).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi.features import Feature
from fpi.model.parallel import Fits
from fpi.progress import Progress, boosting_callback, report
from fpi.schema import CLASSES

log = logging.getLogger(__name__)

#: Test-part hash salt (``test_size`` > 0 sets aside sessions before cross-fitting).
_TEST_SALT: Final = "fpi-test"


def _unit(seed: int, salt: str, ids: Sequence[str]) -> np.ndarray:
    """A uniform number in [0, 1) per id from SHA-256 of seed, salt and id."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}/{salt}/{s}".encode()).digest()[:8],
                                    "big") / 2.0**64 for s in ids])


def assign_folds(session_ids: pl.Series, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per row: a hash of the seed and the row's session id."""
    uniq = session_ids.unique().sort()
    fold = np.minimum((_unit(seed, "fold", uniq.to_list()) * k).astype(np.int64), k - 1)
    lookup = pl.DataFrame({"session_id": uniq, "_fold": fold})
    return (session_ids.to_frame("session_id")
            .join(lookup, on="session_id", how="left", maintain_order="left")["_fold"]
            .to_numpy())


def test_mask(session_ids: pl.Series, test_size: float, seed: int = 0) -> np.ndarray:
    """Rows whose session is set aside as a final test part (``test_size`` of sessions)."""
    if test_size <= 0:
        return np.zeros(session_ids.len(), dtype=bool)
    uniq = session_ids.unique().sort()
    lookup = pl.DataFrame({"session_id": uniq,
                           "_t": _unit(seed, _TEST_SALT, uniq.to_list()) < test_size})
    return (session_ids.to_frame("session_id")
            .join(lookup, on="session_id", how="left", maintain_order="left")["_t"]
            .to_numpy())


#: Cross-fitting folds by default: (most labelled turns, folds), the first that fits;
#: 3 above the last. Fewer folds on large data: each fold model still trains on
#: 13,000+ turns, and a fold model costs about as much as the shipped one. (Not 2
#: on a million: on 1M turns the held-out macro-F1 still moves by 0.002 when the rows
#: each tree sees drop from 200,000 to 150,000, see docs/model.md.)
AUTO_FOLDS: Final = ((20_000, 5),)


def default_folds(n: int) -> int:
    """Cross-fitting folds for ``n`` labelled turns (:data:`AUTO_FOLDS`)."""
    return next((k for most, k in AUTO_FOLDS if n <= most), 3)


Protocol = Literal["crossfit", "holdout"]

#: Fewest labelled turns for which ``protocol="auto"`` picks the holdout protocol.
HOLDOUT_MIN: Final = 300_000
#: Parts of the holdout protocol: the first (1/5 of the sessions) is the validation part.
HOLDOUT_PARTS: Final = 5
#: Most training turns of the no-context baseline under the holdout protocol.
NO_CONTEXT_MAX_TURNS: Final = 200_000
#: Most turns the model's boosted trees train on under the holdout protocol (a
#: class-stratified sample of whole sessions; the text models, calibration and metrics
#: still use every label): issue 12. None (all) by default: on 1M turns a sample of
#: 400,000 scored 0.0032 lower on a separate night and saved only 63 of 216 CPU-s of
#: the fit (docs/model.md).
MAX_FIT_TURNS: Final[int | None] = None
#: Learning rate of the holdout protocol's trees (instead of the candidates' 0.1): on a
#: fit sample of 400,000 (200,000) turns of 1M it early-stopped after 123 (91) rounds;
#: at 0.1 a fit of 200,000 ran past 200 (docs/model.md).
HOLDOUT_LEARNING_RATE: Final = 0.25
#: LightGBM settings of the holdout protocol's trees over the candidates' (unless
#: ``params``): the learning rate above, and half the features per tree (issue 12: on
#: 1M turns a round cost 12% less CPU than at 0.7, see docs/model.md).
HOLDOUT_PARAMS: Final[dict[str, Any]] = {"learning_rate": HOLDOUT_LEARNING_RATE,
                                         "feature_fraction": 0.5}
#: Early stopping's patience under the holdout protocol (rounds without a better
#: validation loss; 20 under cross-fitting): at learning rate 0.25 ten rounds more
#: rarely find a better model, and each round costs a tenth of the fit's rounds' CPU.
HOLDOUT_PATIENCE: Final = 10
#: Early stopping's patience under cross-fitting.
CROSSFIT_PATIENCE: Final = 20


def default_protocol(n: int, holdout_min: int = HOLDOUT_MIN) -> Protocol:
    """``holdout`` from ``holdout_min`` labelled turns on, else ``crossfit``."""
    return "holdout" if n >= holdout_min else "crossfit"


def candidates(n: int) -> list[dict[str, Any]]:
    """A handful of LightGBM parameter sets for ``n`` labelled turns (searched in order).

    Smaller data gets fewer leaves, fewer rows per leaf, more regularisation and a
    smaller learning rate (rounds are cheap there); large data a single candidate,
    today's setting, so training time stays sane.
    """
    if n <= 2_500:
        return [
            {"num_leaves": 15, "min_data_in_leaf": 10, "lambda_l2": 5.0,
             "feature_fraction": 0.6, "learning_rate": 0.05},
            {"num_leaves": 7, "min_data_in_leaf": 20, "lambda_l2": 10.0,
             "feature_fraction": 0.5, "learning_rate": 0.05},
            {"num_leaves": 31, "min_data_in_leaf": 20, "lambda_l2": 1.0,
             "feature_fraction": 0.8, "learning_rate": 0.05},
        ]
    if n <= 12_000:
        return [
            {"num_leaves": 31, "min_data_in_leaf": 20, "lambda_l2": 5.0,
             "feature_fraction": 0.6, "learning_rate": 0.08},
            {"num_leaves": 15, "min_data_in_leaf": 30, "lambda_l2": 10.0,
             "feature_fraction": 0.5, "learning_rate": 0.08},
            {"num_leaves": 63, "min_data_in_leaf": 40, "lambda_l2": 1.0,
             "feature_fraction": 0.8, "learning_rate": 0.1},
        ]
    return [{"num_leaves": 63, "min_data_in_leaf": 40, "lambda_l2": 2.0,
             "feature_fraction": 0.7, "learning_rate": 0.1}]


@dataclass(frozen=True)
class FoldFit:
    """One fold's model: its raw margins on the held-out fold and its early-stopped rounds."""

    raw: np.ndarray
    best_iteration: int
    score: float  # weighted multi_logloss on the held-out fold at the best iteration
    model: str | None = None  # its text at the best iteration, if asked for (keep_model)


def binned(x: np.ndarray, y: np.ndarray, w: np.ndarray, which: Sequence[Feature],
           params: dict[str, Any], keep_raw: bool) -> lgb.Dataset:
    """The fit rows binned once (LightGBM Dataset): the folds' models train on subsets.

    Bin boundaries come from feature values alone (no labels), so sharing them with
    the held-out fold leaks nothing. ``feature_pre_filter`` is off so the candidates
    may differ in ``min_data_in_leaf``; ``keep_raw`` keeps the matrix (warm start
    needs it for the init model's scores).
    """
    ds = lgb.Dataset(x, label=y, weight=w, feature_name=[f.name for f in which],
                     categorical_feature=[i for i, f in enumerate(which)
                                          if f.kind == "categorical"] or "auto",
                     free_raw_data=not keep_raw,
                     params={**params, "feature_pre_filter": False})
    return ds.construct()


class _BestMargins:
    """A training callback keeping the validation rows' margins at the best iteration so
    far, from the scores LightGBM updates as it boosts (no second pass over the rows).

    LightGBM hands a multiclass model's scores out as probabilities (softmax); their logs
    are the margins less a per-row constant, which the softmax and the calibration
    (temperature and biases) ignore. "Best" is early stopping's rule: a strictly lower
    validation loss; the callback runs before :func:`lightgbm.early_stopping` (order 30).
    """

    order = 25

    def __init__(self) -> None:
        self.loss = float("inf")
        self.iteration = 0
        self.proba: np.ndarray | None = None

    def __call__(self, env: Any) -> None:
        loss = float(env.evaluation_result_list[0][2])
        if loss < self.loss:
            self.loss, self.iteration = loss, env.iteration + 1
            # the validation set's softmax scores, (rows, classes); a buffer LightGBM reuses
            self.proba = np.array(env.model._Booster__inner_predict(data_idx=1))

    def margins(self, best: int) -> np.ndarray | None:
        """Log-probabilities at iteration ``best`` (None if not kept or one underflowed)."""
        if self.proba is None or self.iteration != best or not (self.proba > 0).all():
            return None
        return np.log(self.proba)


def fit_fold(ds: lgb.Dataset, x: np.ndarray, train: np.ndarray, held: np.ndarray,
             params: dict[str, Any], num_boost_round: int, early_stopping_rounds: int,
             init_model: lgb.Booster | None = None, keep_model: bool = False,
             fits: Fits | None = None, inner: bool = False) -> FoldFit:
    """Train on ``train`` rows of ``ds``, early-stop on ``held`` rows; margins on ``held``.

    ``inner`` (no ``init_model``) takes the margins from training's own validation scores
    (:class:`_BestMargins`: equal up to a per-row shift and rounding) instead of
    predicting the held rows again. ``fits``: the fits this one runs beside, which may
    stop it."""
    clock = time.process_time()
    keeper = _BestMargins() if inner and init_model is None else None
    more = [cb for cb in (keeper, None if fits is None else fits.callback()) if cb is not None]
    booster = lgb.train(params, ds.subset(np.flatnonzero(train).tolist()),
                        num_boost_round=num_boost_round,
                        valid_sets=[ds.subset(np.flatnonzero(held).tolist())],
                        valid_names=["valid"], init_model=init_model,
                        keep_training_booster=True,  # see fit_final
                        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False),
                                   *more])
    best = booster.best_iteration or booster.current_iteration()
    score = float(booster.best_score["valid"]["multi_logloss"])
    raw = keeper.margins(best) if keeper is not None else None
    if raw is None:
        raw = np.asarray(booster.predict(x[held], raw_score=True, num_iteration=best))
    start = init_model.current_iteration() if init_model is not None else 0
    model = booster.model_to_string(num_iteration=best) if keep_model else None
    log.debug("fold fit: %d rows, early-stopped on %d: %d rounds grown, best %d; %.1f CPU-s",
              int(train.sum()), int(held.sum()), booster.current_iteration(), best,
              time.process_time() - clock)
    return FoldFit(raw, max(1, best - start), score, model)


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold margins of the fit rows, rounds for the shipped model, the search."""

    params: dict[str, Any]
    oof_raw: np.ndarray  # zeros outside ``held``
    rounds: int
    fold_rounds: list[int]
    search: list[dict[str, Any]]
    held: np.ndarray  # rows with out-of-fold margins (all, or the holdout's first fold)
    model: str | None = None  # the first fold's model (holdout without refit)


def crossfit(ds: lgb.Dataset, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
             base: dict[str, Any], cands: list[dict[str, Any]],
             num_boost_round: int, early_stopping_rounds: int,
             init: lgb.Booster | None, progress: Progress | None, stage: str,
             holdout: bool = False, trainable: np.ndarray | None = None,
             keep_model: bool = False, fits: Fits | None = None) -> CrossFit:
    """Search ``cands`` on the first fold (lowest held-out log loss wins), then fit the
    other folds with the winner; rounds = 1.1 x the mean early-stopped rounds.

    ``ds`` is :func:`binned` of the fit rows ``x`` (labels ``y``, fold per row ``folds``).
    ``holdout`` stops after the first fold (the validation part), whose margins come
    from training's own scores (``fit_fold``'s ``inner``); ``trainable``, if
    given, are the only rows the fold models train on (every row is still scored);
    ``keep_model`` keeps the first fold's model text (:attr:`CrossFit.model`).
    ``fits`` runs the fold fits (several at once, if it may; the same models): with one
    candidate every fold fits at once, else the candidates and then the other folds.
    """
    fits = fits or Fits()
    ks = [int(k) for k in np.unique(folds)]
    rest = [] if holdout else ks[1:]
    total = len(cands) + len(rest)
    report(progress, stage, 0, total)

    def run(k: int, p: dict[str, Any]) -> Callable[[], FoldFit]:
        train = folds != k if trainable is None else (folds != k) & trainable
        return partial(fit_fold, ds, x, train, folds == k, p, num_boost_round,
                       early_stopping_rounds, init, keep_model and k == ks[0], fits, holdout)

    def done(offset: int) -> Callable[[int], None]:
        return lambda n: report(progress, stage, offset + n, total)

    if len(cands) == 1:  # the parameters are known: every fold at once
        params = {**base, **cands[0]}
        fitted = fits.map([run(k, params) for k in ks[:1] + rest], done(0))
        tried, others = [(fitted[0], cands[0])], fitted[1:]
    else:  # the candidates on the first fold, then the other folds with the winner
        tried = list(zip(fits.map([run(ks[0], {**base, **c}) for c in cands], done(0)),
                         cands, strict=True))
        params = {**base, **min(tried, key=lambda t: t[0].score)[1]}
        others = fits.map([run(k, params) for k in rest], done(len(cands)))
    first = min(tried, key=lambda t: t[0].score)[0]
    oof = np.zeros((len(y), len(CLASSES)))
    oof[folds == ks[0]] = first.raw
    for k, r in zip(rest, others, strict=True):
        oof[folds == k] = r.raw
    fold_rounds = [first.best_iteration, *(r.best_iteration for r in others)]
    rounds = max(1, round(1.1 * float(np.mean(fold_rounds))))
    search = [{**c, "fold0_logloss": round(f.score, 6), "rounds": f.best_iteration}
              for f, c in tried]
    held = folds == ks[0] if holdout else np.ones(len(y), dtype=bool)
    return CrossFit(params, oof, rounds, fold_rounds, search, held, first.model)


def fit_final(ds: lgb.Dataset, params: dict[str, Any], rounds: int,
              init: lgb.Booster | None, progress: Progress | None,
              stage: str, rows: np.ndarray | None = None,
              fits: Fits | None = None) -> tuple[lgb.Booster, str]:
    """The shipped model: all fit rows (``ds``, :func:`binned`; or its ``rows``, a mask),
    the cross-fitted rounds (``fits``: the fits this one runs beside)."""
    train = ds if rows is None else ds.subset(np.flatnonzero(rows).tolist())
    clock = time.process_time()
    stop = None if fits is None else fits.callback()
    # keep_training_booster: no round trip through the model text inside lgb.train (the
    # text below is the same either way; about a tenth of a fit's CPU on small data)
    booster = lgb.train(params, train, num_boost_round=rounds, init_model=init,
                        keep_training_booster=True,
                        callbacks=[cb for cb in (boosting_callback(progress, stage), stop)
                                   if cb is not None])
    text = booster.model_to_string()
    log.debug("shipped model: %d rows, %d rounds; %.1f CPU-s", train.num_data(), rounds,
              time.process_time() - clock)
    # reload from the text so the booster in memory is exactly the one saved
    return lgb.Booster(model_str=text), text
