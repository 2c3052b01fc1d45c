"""Training labels that are probably wrong: out-of-fold probabilities + confident learning.

1. **Out-of-fold probabilities.** Sessions are split into ``folds`` groups (seeded);
   a small LightGBM model on fpi's features (:func:`fpi.features.build_features`,
   plus the learned text and vocabulary features of :mod:`fpi.model.learned`, fitted
   on that fold model's own training rows as ``fpi train`` fits them) is trained on
   the labels of the other folds and predicts each fold's turns, so no turn is
   scored by a model that saw its label. ``repeats`` fold assignments (seeds
   ``seed``, ``seed + 1``, ...) are averaged: steadier probabilities.
2. **Confident learning** (Northcutt et al., 2021; the rule cleanlab implements):
   each class ``j`` gets the threshold ``t_j`` = the mean out-of-fold probability of
   ``j`` over turns labelled ``j``. A turn's *confident class* is the most probable
   class among those whose probability reaches their threshold; a turn whose
   confident class differs from its label is a **suspect**.
3. **Ranking.** Suspects first, then the rest, each by *self-confidence* (the
   out-of-fold probability of the given label), lowest first.
4. **How many are wrong.** The confident joint (given label x confident class)
   is calibrated so each row sums to its label's count; its off-diagonal mass is
   the estimated number of wrong labels (``estimated_errors``). Dropping that many
   from the top of the ranking removes fewer correct labels than dropping every
   suspect.
5. **A cleaned label set** (:meth:`LabelCheck.fixed`): the turns :meth:`LabelCheck.prune`
   picks (by class or by rank, ``quota`` times the estimated count; every suspect; or
   the suspects whose self-confidence is below ``max_confidence``) are dropped,
   relabelled (to the suggested class where the out-of-fold model gives it at least
   ``relabel_min``, dropped otherwise: confident learning's prune/relabel) or
   down-weighted (weight ``p(label) / (p(label) + p(suggested))``, the given label's
   share of the two contested classes), for ``fpi train --labels`` (``--weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi.errors import InputError
from fpi.features import FEATURES, Feature, build_features
from fpi.metrics import labels_to_index
from fpi.model.bundle import model_matrix
from fpi.model.parallel import Fits, fits_at_once
from fpi.model.training import DEFAULT_PARAMS, category_levels, class_weights, feature_set
from fpi.schema import CLASSES, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.model import ModelBundle

KEY = list(KEY_COLUMNS)
#: What :meth:`LabelCheck.fixed` can do to the picked turns.
FIXES = ("drop", "relabel", "weight")
#: Which turns :meth:`LabelCheck.prune` picks.
PRUNES = ("confident", "class", "rank", "suspects")
#: ``prune("confident")``: the self-confidence below which a suspect is picked.
MAX_CONFIDENCE = 0.1


@dataclass(frozen=True)
class CheckOptions:
    """The small, fast model used for out-of-fold probabilities."""

    folds: int = 5
    seed: int = 0
    threads: int = 1
    rounds: int = 60
    learning_rate: float = 0.2
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    max_bin: int = 63
    #: Fold assignments averaged (seeds ``seed``, ``seed + 1``, ...): each turn's
    #: probabilities are the mean of ``repeats`` out-of-fold predictions.
    repeats: int = 3
    #: Give the fold models fpi's learned features too (text models and vocabulary,
    #: :mod:`fpi.model.learned`), each fitted on that fold's training rows alone.
    learn_features: bool = True
    #: Cores for fitting fold models at once (None: all available); the same
    #: probabilities whatever it is (:mod:`fpi.model.parallel`).
    jobs: int | None = None

    def params(self) -> dict[str, Any]:
        """LightGBM parameters (deterministic, fpi's defaults otherwise)."""
        return {**DEFAULT_PARAMS, "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "max_bin": self.max_bin,
                "seed": self.seed, "num_threads": self.threads, "deterministic": True,
                "force_col_wise": True}


@dataclass(frozen=True)
class LabelCheck:
    """Every labelled turn ranked by how likely its label is wrong."""

    ranked: pl.DataFrame  #: one row per labelled turn, most suspect first
    thresholds: dict[str, float]
    options: CheckOptions
    #: Estimated number of wrong labels (calibrated confident joint, off the diagonal).
    estimated_errors: int = 0
    #: The same per given label (the rows of that joint).
    errors_by_label: dict[str, int] | None = None

    def prune(self, by: str = "rank", max_confidence: float = MAX_CONFIDENCE,
              quota: float = 1.0) -> pl.DataFrame:
        """The ranked turns to drop or re-annotate: ``rank``, the top
        ``estimated_errors`` of the ranking; ``class``, for each given label its own
        estimated count, lowest self-confidence first (cleanlab's prune by class);
        ``suspects``, every suspect; ``confident``, the suspects whose self-confidence
        is below ``max_confidence`` (the out-of-fold model all but rules their label
        out: a slip, not a hard case)."""
        if by == "rank":
            return self.ranked.head(round(quota * self.estimated_errors))
        if by == "suspects":
            return self.suspects
        if by == "confident":
            return self.suspects.filter(pl.col("self_confidence") < max_confidence)
        if by != "class":
            raise InputError(f"prune by {', '.join(map(repr, PRUNES))}, not {by!r}")
        counts = self.errors_by_label or {}
        per_label = pl.DataFrame({"label": list(counts.keys()),
                                  "_n": [round(quota * n) for n in counts.values()]},
                                 schema={"label": pl.String, "_n": pl.Int64})
        return self.ranked.sort("self_confidence", *KEY).join(
            per_label, on="label", maintain_order="left").filter(
            pl.int_range(pl.len()).over("label") < pl.col("_n")).drop("_n").sort("rank")

    def fixed(self, fix: str, by: str = "class", relabel_min: float = 0.5,
              max_confidence: float = MAX_CONFIDENCE, quota: float = 1.0) -> pl.DataFrame:
        """Every labelled turn's label, ``fix`` applied to the turns :meth:`prune` picks
        (``by``): ``session_id, turn_index, failure_point, weight, fix`` (``fix``: what was
        done to the turn, or null), sorted by turn. ``drop`` leaves the picks out;
        ``relabel`` gives a pick its suggested class if the out-of-fold probability of
        that class is at least ``relabel_min``, and leaves the other picks out;
        ``weight`` keeps a pick's label with weight ``p(label) / (p(label) +
        p(suggested))``. Every other turn keeps its label with weight 1."""
        if fix not in FIXES:
            raise InputError(f"--fix must be one of {', '.join(FIXES)}, not {fix!r}")
        picked = self.prune(by, max_confidence, quota).select(*KEY, pl.lit(True).alias("_pick"))
        rows = self.ranked.join(picked, on=KEY, how="left", maintain_order="left").with_columns(
            pl.col("_pick").fill_null(False))
        sure = pl.col("_pick") & (pl.col("suggested_probability") >= relabel_min)
        what = {"drop": pl.when("_pick").then(pl.lit("drop")),
                "relabel": pl.when(sure).then(pl.lit("relabel"))
                .when("_pick").then(pl.lit("drop")),
                "weight": pl.when("_pick").then(pl.lit("weight"))}[fix]
        share = pl.col("self_confidence") / (pl.col("self_confidence")
                                             + pl.col("suggested_probability"))
        return rows.with_columns(what.alias("fix")).filter(
            pl.col("fix").fill_null("") != "drop").select(
            *KEY,
            pl.when(pl.col("fix") == "relabel").then("suggested").otherwise("label")
            .alias("failure_point"),
            pl.when(pl.col("fix") == "weight").then(share.fill_nan(0.0)).otherwise(1.0)
            .alias("weight"),
            pl.when(pl.col("fix") == "relabel").then(pl.format("relabel (was {})", "label"))
            .otherwise("fix").alias("fix")).sort(KEY)

    @property
    def suspects(self) -> pl.DataFrame:
        """The turns whose confident class differs from their label."""
        return self.ranked.filter(pl.col("suspect"))

    def to_dict(self, top: int = 50) -> dict[str, Any]:
        """JSON document: counts, thresholds and the ``top`` suspects."""
        sus = self.suspects
        by_pair = (sus.group_by("label", "suggested").len().sort("len", "label", "suggested",
                                                                  descending=[True, False, False]))
        return {"classes": list(CLASSES), "labelled_turns": self.ranked.height,
                "suspects": sus.height, "estimated_errors": self.estimated_errors,
                "estimated_errors_by_label": self.errors_by_label,
                "folds": self.options.folds, "seed": self.options.seed,
                "thresholds": self.thresholds,
                "suspects_by_label_and_suggestion": by_pair.to_dicts(),
                "top": sus.head(top).drop("context_turns", strict=False).to_dicts()}


def session_folds(turns: pl.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold number of each turn; whole sessions share a fold (seeded, order-free)."""
    sessions = turns["session_id"].unique().sort()
    order = np.random.default_rng(seed).permutation(sessions.len())
    fold_of = pl.DataFrame({"session_id": sessions,
                            "_fold": (np.argsort(order) % folds).astype(np.int64)})
    return turns.select("session_id").join(fold_of, on="session_id", how="left",
                                           maintain_order="left")["_fold"].to_numpy()


def out_of_fold_proba(x: np.ndarray | None, y: np.ndarray, fold: np.ndarray, cat_idx: list[int],
                      params: dict[str, Any], rounds: int, *, learn: pl.DataFrame | None = None,
                      init: ModelBundle | None = None, fits: Fits | None = None) -> np.ndarray:
    """``(n, k)`` probabilities, each row from the model trained without its fold.

    With ``learn`` (the features of the ``y`` rows), each fold's matrix also has the
    learned features (of ``init``, if given) fitted on that fold's training rows alone,
    as ``fpi train`` fits them; ``x`` (may be None) and ``cat_idx`` are then not used. ``fits`` runs
    the fold models (several at once, if it may: the same probabilities)."""
    ks = np.unique(fold)
    parts = (fits or Fits()).map([partial(_fold_proba, x, y, fold == k, cat_idx, params,
                                          rounds, learn, init, fold) for k in ks])
    proba = np.zeros((len(y), len(CLASSES)))
    for k, part in zip(ks, parts, strict=True):
        proba[fold == k] = part
    return proba


def _fold_proba(x: np.ndarray | None, y: np.ndarray, score: np.ndarray, cat_idx: list[int],
                params: dict[str, Any], rounds: int, learn: pl.DataFrame | None,
                init: ModelBundle | None, fold: np.ndarray) -> np.ndarray:
    """The probabilities of the ``score`` rows from a model of the other rows."""
    fit = ~score
    if learn is not None:
        fs = feature_set(learn, y, fit, fold, init, True)
        x = model_matrix(learn, fs.features, fs.levels, fs.columns)
        cat_idx = [i for i, c in enumerate(fs.features) if c.kind == "categorical"]
    assert x is not None, "the fixed features' matrix, or learn"
    w = class_weights(y[fit], 0.5)[y[fit]]
    data = lgb.Dataset(x[fit], label=y[fit], weight=w, categorical_feature=cat_idx or "auto",
                       params={"max_bin": params["max_bin"], "verbosity": -1})
    booster = lgb.train(params, data, num_boost_round=rounds)
    return np.asarray(booster.predict(x[score]))


def confident_learning(proba: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class thresholds (mean self-confidence) and each row's confident class (-1: none)."""
    k = proba.shape[1]
    thresholds = np.array([proba[y == j, j].mean() if (y == j).any() else 1.0
                           for j in range(k)])
    above = np.where(proba >= thresholds, proba, -1.0)
    confident = np.where(above.max(axis=1) >= 0, above.argmax(axis=1), -1)
    return thresholds, confident


def errors_by_label(y: np.ndarray, confident: np.ndarray, k: int = len(CLASSES)) -> np.ndarray:
    """Per given label, the off-diagonal mass of its row of the confident joint
    calibrated to the label counts: the estimated number of wrong labels of that class."""
    ok = confident >= 0
    joint = np.bincount(y[ok] * k + confident[ok], minlength=k * k).reshape(k, k).astype(float)
    rows = joint.sum(axis=1, keepdims=True)
    counts = np.bincount(y, minlength=k)[:, None]
    calibrated = np.divide(joint * counts, rows, out=np.zeros_like(joint), where=rows > 0)
    return np.asarray(calibrated.sum(axis=1) - np.diag(calibrated))


def estimated_errors(y: np.ndarray, confident: np.ndarray, k: int = len(CLASSES)) -> int:
    """Off-diagonal mass of the confident joint calibrated to the label counts."""
    return round(float(errors_by_label(y, confident, k).sum()))


def _design(features: pl.DataFrame, labelled: np.ndarray, bundle: ModelBundle | None,
            options: CheckOptions) -> tuple[np.ndarray | None, list[int], dict[str, Any], int]:
    """The fold models' fixed matrix (None with ``learn_features``: each fold builds its
    own, :func:`out_of_fold_proba`), its categorical columns, parameters and rounds."""
    feats: tuple[Feature, ...]
    lab_feats = features.filter(pl.Series(labelled))
    if bundle is not None:
        # not the bundle's fitted learned features: its text models saw the labels
        # (with options.learn_features they are refitted per fold instead)
        feats = tuple(f for f in bundle.features if f.name in lab_feats.columns)
        levels = bundle.levels
        p = bundle.manifest.get("params", {})
        params = {**options.params(), **{k: p[k] for k in ("num_leaves", "min_data_in_leaf",
                                                         "learning_rate") if k in p}}
        rounds = int(min(p.get("best_iteration") or options.rounds, 300))
    else:
        feats, levels = FEATURES, category_levels(lab_feats, FEATURES)
        params, rounds = options.params(), options.rounds
    if options.learn_features:
        return None, [], params, rounds
    x = model_matrix(lab_feats, feats, levels)
    return x, [i for i, f in enumerate(feats) if f.kind == "categorical"], params, rounds


def check_labels(turns: pl.DataFrame, options: CheckOptions | None = None, *,
                 bundle: ModelBundle | None = None,
                 features: pl.DataFrame | None = None) -> LabelCheck:
    """Rank the labelled turns of ``turns`` (canonical frame) by how likely their
    ``label.failure_point`` is wrong.

    With ``bundle``, its features, category levels and tree parameters are used
    for the fold models (it is not itself used to score: it saw the labels).

    Raises
    ------
    InputError
        Too few labelled turns or sessions for the folds, or ``folds`` < 2.
    """
    opts = options or CheckOptions()
    if opts.folds < 2:
        raise InputError(f"--folds must be at least 2, not {opts.folds}")
    if opts.repeats < 1:
        raise InputError(f"--repeats must be at least 1, not {opts.repeats}")
    y_all = labels_to_index(turns["label"].struct.field("failure_point"))
    labelled = y_all >= 0
    lab = turns.filter(pl.Series(labelled))
    if lab["session_id"].n_unique() < opts.folds or lab.height < 10 * opts.folds:
        raise InputError(f"{lab.height} labelled turns in {lab['session_id'].n_unique()} "
                         f"sessions are too few for {opts.folds}-fold checking")
    if bundle is not None:
        bundle.check_compatible(turns)
    feats = build_features(turns) if features is None else features
    x, cat_idx, params, rounds = _design(feats, labelled, bundle, opts)
    y = y_all[labelled]
    learn = feats.filter(pl.Series(labelled)) if opts.learn_features else None
    fits = Fits(fits_at_once(opts.jobs, opts.threads))
    proba = np.mean([out_of_fold_proba(x, y, session_folds(lab, opts.folds, opts.seed + i),
                                       cat_idx, {**params, "seed": opts.seed + i}, rounds,
                                       learn=learn, init=bundle, fits=fits)
                     for i in range(opts.repeats)], axis=0)
    thresholds, confident = confident_learning(proba, y)
    names = np.asarray(CLASSES, dtype=object)
    self_conf = proba[np.arange(len(y)), y]
    suggested = np.where(confident >= 0, confident, proba.argmax(axis=1))
    ranked = lab.select(*KEY).with_columns(
        pl.Series("label", names[y], dtype=pl.String),
        pl.Series("suggested", names[suggested], dtype=pl.String),
        pl.Series("self_confidence", self_conf),
        pl.Series("suggested_probability", proba[np.arange(len(y)), suggested]),
        pl.Series("suspect", (confident >= 0) & (confident != y)),
    ).sort(pl.col("suspect").not_(), "self_confidence", *KEY).with_row_index("rank", offset=1)
    by_label = errors_by_label(y, confident)
    return LabelCheck(ranked, {c: round(float(t), 6) for c, t in zip(CLASSES, thresholds,
                                                                      strict=True)}, opts,
                      estimated_errors(y, confident),
                      {c: round(float(v)) for c, v in zip(CLASSES, by_label, strict=True)})


def cleaned_labels(result: LabelCheck, turns: pl.DataFrame, fix: str, by: str = "class",
                   relabel_min: float = 0.5, max_confidence: float = MAX_CONFIDENCE,
                   quota: float = 1.0) -> pl.DataFrame:
    """The cleaned label set of :meth:`LabelCheck.fixed` as a labels file (the columns
    of ``fpi labels import`` plus ``weight``): kept labels keep their annotator,
    relabelled ones are by ``fpi-check``; ``source`` says what was done, ``extra``
    holds ``{"fix": ...}`` for a changed turn."""
    from fpi.labels.importer import LABELS_SCHEMA

    who = turns.select(*KEY, pl.col("label").struct.field("annotator").alias("_by"))
    fixed = result.fixed(fix, by, relabel_min, max_confidence, quota).join(who, on=KEY, how="left",
                                                    maintain_order="left")
    changed = pl.col("fix").is_not_null()
    return fixed.select(
        *KEY,
        pl.when(pl.col("fix").str.starts_with("relabel")).then(pl.lit("fpi-check"))
        .otherwise(pl.col("_by").fill_null("logs")).alias("annotator"),
        "failure_point",
        pl.lit(f"fpi labels check --fix {fix}").alias("source"),
        pl.when(changed).then(pl.format('{{"fix": "{}"}}', "fix")).alias("extra"),
        "weight",
    ).cast(pl.Schema([*LABELS_SCHEMA.items(), ("weight", pl.Float64())]))
