"""Train, save, load and apply the failure-point model (LightGBM multiclass).

A *model bundle* is a directory::

    model.txt             LightGBM text model (with dialogue-context features)
    model_no_context.txt  the same model trained without context features (a baseline)
    learned.json          text models and extra-field names the model's learned
                          features come from (:mod:`fpi.learned`), if any
    manifest.json         versions, classes, features (group, kind, category levels),
                          parameters, calibration, training fingerprint and counts,
                          held-out metrics, baselines, file checksums, bundle_hash
    .fpi-output.json      marker: this directory is an fpi model output

No pickle: everything is text. The same data, seed and thread count give
byte-identical files. A bundle is built in a staging directory beside the target
and swapped into place (:func:`fpi.files.staged_output_dir`), so an existing bundle
is never half-replaced; :func:`load_bundle` checks the whole bundle
(:mod:`fpi.bundle_manifest`) before using any of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

# LightGBM's OpenMP threads busy-wait between parallel regions by default; on a shared
# machine (CI, several jobs on 2 cores) that spinning made training ~8x slower in our
# measurements. Passive waiting costs nothing when the cores are free. It must be set
# before libgomp loads (with lightgbm); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi import __version__
from fpi.baselines import RuleBaseline, fit_rule_baseline
from fpi.bundle_manifest import (
    MANIFEST_FILE,
    bundle_hash,
    check_bundle_files,
    validate_manifest,
)
from fpi.calibration import Calibration, fit_calibration
from fpi.compiled import raw_margins
from fpi.crossfit import FoldFit, assign_folds, candidates, fit_fold, test_mask
from fpi.errors import InputError, ModelError, SchemaError
from fpi.evaluation import classification_metrics, labels_to_index
from fpi.features import FEATURES, RAW_COLUMNS, Feature, build_features, context_free
from fpi.files import MARKER, check_output_dir, staged_output_dir
from fpi.learned import (
    RAW_EXTRA,
    RAW_TEXT,
    Learned,
    TextModel,
    discover_extra,
    fit_text_models,
    hashed_ngrams,
    oof_text_scores,
)
from fpi.progress import Progress, boosting_callback, report
from fpi.schema import CLASSES, COMPONENTS, TURN_SCHEMA

log = logging.getLogger(__name__)

#: Bundle format, ``major.minor``: a reader accepts any minor of its own major.
BUNDLE_FORMAT: Final = "2.1"
MODEL_FILE: Final = "model.txt"
NO_CONTEXT_FILE: Final = "model_no_context.txt"
LEARNED_FILE: Final = "learned.json"

#: Cross-fitting folds by default: (small data, large data, threshold in labelled turns).
AUTO_FOLDS: Final = (5, 3, 20_000)

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
    "max_bin": 255,
    "max_cat_to_onehot": 8,
    "cat_smooth": 10.0,
    "verbosity": -1,
}

Split = Literal["session", "time"]


# ---------------------------------------------------------------------------
# Results and the bundle
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: where the bundle is and its manifest (with held-out metrics)."""

    path: Path
    manifest: dict[str, Any]
    bundle: ModelBundle
    #: Wall seconds per step (features, model, no_context, rules, write); not in the
    #: manifest, which must not depend on the clock.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def heldout(self) -> dict[str, Any]:
        """Held-out metrics of the model (``manifest["heldout"]["metrics"]``)."""
        return self.manifest["heldout"]["metrics"]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: held-out metrics in the :mod:`fpi.evaluation` layout plus counts."""
        h = self.manifest["heldout"]
        return {"model": str(self.path), "classes": list(CLASSES), **h["metrics"],
                "baselines": self.manifest["baselines"]["heldout"], "human": h.get("human"),
                "training": self.manifest["training"]}


def _matrix(features: pl.DataFrame, which: Sequence[Feature],
            levels: dict[str, list[str]],
            learned: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Model input matrix; ``learned`` holds the columns not in ``features`` (fpi.learned)."""
    learned = learned or {}
    if learned:
        framed = [f for f in which if f.name not in learned]
        base = _matrix(features, framed, levels)
        out = np.empty((features.height, len(which)))
        j = 0
        for i, f in enumerate(which):
            if f.name in learned:
                out[:, i] = learned[f.name]
            else:
                out[:, i] = base[:, j]
                j += 1
        return out
    missing = [f.name for f in which if f.name not in features.columns]
    if missing:
        raise SchemaError(
            f"features frame lacks column(s) {', '.join(missing[:5])} the model needs "
            "(build it with fpi.features.build_features)"
        )
    exprs: list[pl.Expr] = []
    for f in which:
        col = pl.col(f.name)
        if f.kind == "categorical":
            codes = {v: float(i) for i, v in enumerate(levels[f.name])}
            exprs.append(col.cast(pl.String).replace_strict(codes, default=None,
                                                           return_dtype=pl.Float64))
        else:
            exprs.append(col.cast(pl.Float64))
    return features.select(exprs).to_numpy().astype(np.float64, copy=False)


def _features_from_manifest(entries: Sequence[dict[str, Any]]) -> tuple[tuple[Feature, ...],
                                                                         dict[str, list[str]]]:
    feats: list[Feature] = []
    levels: dict[str, list[str]] = {}
    try:
        for e in entries:
            f = Feature(str(e["name"]), str(e["group"]), e["kind"])
            feats.append(f)
            if f.kind == "categorical":
                levels[f.name] = [str(v) for v in e["levels"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model manifest has a malformed features list: {exc}") from exc
    return tuple(feats), levels


class ModelBundle:
    """A loaded model bundle: boosters, calibration, features and manifest.

    Use :func:`load_bundle` to create one. ``predict_proba`` and ``contributions``
    take a features frame from :func:`fpi.features.build_features`.
    """

    def __init__(self, manifest: dict[str, Any], booster: lgb.Booster,
                 no_context_booster: lgb.Booster | None, path: Path | None = None,
                 learned: Learned | None = None) -> None:
        self.manifest = manifest
        self.learned = learned
        self.path = path
        self.booster = booster
        self.no_context_booster = no_context_booster
        self.classes: tuple[str, ...] = tuple(manifest["classes"])
        self.features, self.levels = _features_from_manifest(manifest["features"])
        self.calibration = Calibration.from_dict(manifest["calibration"])
        nc = manifest.get("no_context") or {}
        self.no_context_features = tuple(f for f in self.features
                                         if f.name in set(nc.get("features", ())))
        self.no_context_calibration = (Calibration.from_dict(nc["calibration"])
                                       if nc.get("calibration") else None)
        rb = manifest.get("baselines", {}).get("rules")
        self.rule_baseline = RuleBaseline.from_dict(rb["thresholds"]) if rb else None

    def __repr__(self) -> str:
        return f"ModelBundle(path={str(self.path)!r}, features={len(self.features)})"

    @property
    def model_id(self) -> str:
        """The bundle's own hash (``sha256:...``): what reports show as the model."""
        return str(self.manifest.get("bundle_hash") or "")

    @property
    def has_no_context_model(self) -> bool:
        """Whether the bundle carries the no-context baseline model."""
        return self.no_context_booster is not None and self.no_context_calibration is not None

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns of a features frame this bundle reads: its fixed features and the raw
        inputs of its learned ones (:data:`fpi.features.RAW_COLUMNS`)."""
        learned = {n for n, _ in self.learned.names_groups()} if self.learned else set()
        return (*(f.name for f in self.features if f.name not in learned), *RAW_COLUMNS)

    @property
    def groups(self) -> tuple[str, ...]:
        """Component group of each feature, in model column order."""
        return tuple(f.group for f in self.features)

    def check_compatible(self, turns: pl.DataFrame | pl.LazyFrame) -> None:
        """Raise :class:`SchemaError` unless this bundle can score ``turns``.

        ``turns`` must be the canonical frame, and every feature the bundle uses must be
        one this version of fpi computes, with the same kind.
        """
        schema = turns.collect_schema() if isinstance(turns, pl.LazyFrame) else turns.schema
        missing = [c for c in TURN_SCHEMA if c not in schema]
        if missing:
            raise SchemaError(
                f"the data lacks column(s) {', '.join(missing)} the model needs: pass turns "
                "read with fpi.ingest.read_traces (the canonical frame)"
            )
        known = {f.name: f for f in FEATURES}
        if self.learned is not None:
            known.update((n, Feature(n, g)) for n, g in self.learned.names_groups())
        bad = [f.name for f in self.features
               if f.name not in known or known[f.name].kind != f.kind]
        if bad:
            raise SchemaError(
                f"model {self.path or ''} uses feature(s) {', '.join(bad[:5])} that this fpi "
                f"{__version__} does not compute: retrain the model with `fpi train`"
            )

    def matrix(self, features: pl.DataFrame,
               which: Sequence[Feature] | None = None) -> np.ndarray:
        """Model input matrix (float64; categoricals as level codes, unseen levels NaN).

        Learned features (:mod:`fpi.learned`) are computed here from the raw columns
        :func:`fpi.features.build_features` passes through.
        """
        which = self.features if which is None else which
        learned = None
        if self.learned is not None and any(f.name not in features.columns for f in which):
            learned = self.learned.columns(features)
        return _matrix(features, which, self.levels, learned)

    def raw_margin(self, features: pl.DataFrame) -> np.ndarray:
        """Uncalibrated multiclass margins ``(n, n_classes)``."""
        if features.height == 0:
            return np.zeros((0, len(self.classes)))
        return raw_margins(self.booster, self.matrix(features))

    def predict_proba(self, features: pl.DataFrame) -> np.ndarray:
        """Calibrated class probabilities ``(n, n_classes)``, classes in ``self.classes`` order."""
        return self.calibration.apply(self.raw_margin(features))

    def predict(self, features: pl.DataFrame) -> pl.Series:
        """Most probable class name per row."""
        idx = self.predict_proba(features).argmax(axis=1)
        return pl.Series("failure_point", np.asarray(self.classes, dtype=object)[idx],
                         dtype=pl.String)

    def predict_proba_no_context(self, features: pl.DataFrame) -> np.ndarray:
        """Calibrated probabilities of the no-context baseline model."""
        if not self.has_no_context_model:
            raise ModelError(f"model {self.path} has no no-context baseline model")
        assert self.no_context_booster is not None and self.no_context_calibration is not None
        if features.height == 0:
            return np.zeros((0, len(self.classes)))
        raw = raw_margins(self.no_context_booster,
                          self.matrix(features, self.no_context_features))
        return self.no_context_calibration.apply(raw)

    def contributions(self, features: pl.DataFrame) -> np.ndarray:
        """Exact TreeSHAP contributions on the raw margin.

        Returns ``(n, n_classes, n_features + 1)``; the last column is the bias, and each
        class's row sums to its raw margin.
        """
        k, m = len(self.classes), len(self.features)
        if features.height == 0:
            return np.zeros((0, k, m + 1))
        contrib = np.asarray(self.booster.predict(self.matrix(features), pred_contrib=True))
        return contrib.reshape(features.height, k, m + 1)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def _read_manifest(path: Path) -> dict[str, Any]:
    """The bundle's manifest, parsed, version-checked and validated whole."""
    manifest_path = path / MANIFEST_FILE
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ModelError(f"{path} is not a model bundle: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{manifest_path} is damaged: {exc}") from None
    version = manifest.get("format_version")
    if not isinstance(version, str) or version.split(".")[0] != BUNDLE_FORMAT.split(".")[0]:
        raise ModelError(
            f"{path} is a model bundle of format {version or 'unknown'}, this fpi {__version__} "
            f"reads format {BUNDLE_FORMAT.split('.')[0]}.x (checksummed bundles): retrain it "
            "with `fpi train`"
        )
    validate_manifest(manifest, str(manifest_path))
    if tuple(manifest["classes"]) != CLASSES:
        raise ModelError(f"{manifest_path}: model classes {manifest['classes']} are not "
                         f"{list(CLASSES)}")
    blocks = [("calibration", manifest["calibration"])]
    if manifest["no_context"] is not None:
        blocks.append(("no_context.calibration", manifest["no_context"]["calibration"]))
    for where, block in blocks:
        if len(block["bias"]) != len(CLASSES):
            raise ModelError(f"{manifest_path} is damaged or edited: {where}.bias has "
                             f"{len(block['bias'])} values for {len(CLASSES)} classes")
    kinds = {f["kind"] for f in manifest["features"]} - {"numeric", "categorical"}
    if kinds:
        raise ModelError(f"{manifest_path} is damaged or edited: unknown feature kind(s) "
                         f"{', '.join(sorted(kinds))}")
    return manifest


def load_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Load a model bundle directory written by :func:`train`, after checking it whole.

    The manifest is validated against its schema (:mod:`fpi.bundle_manifest`), its
    ``bundle_hash`` must match its content, the directory must hold exactly the files
    it lists (plain names, regular files) and each file must match its SHA-256.

    Raises
    ------
    ModelError
        The directory or a file is missing, unexpected, edited or damaged, the
        manifest is malformed or edited, or the bundle is from another major format.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no model bundle at {path}: train one with `fpi train ... --out {path}`")
    if not path.is_dir():
        raise ModelError(f"{path} is a file, not a model bundle directory")
    manifest = _read_manifest(path)
    check_bundle_files(path, manifest, allowed_extra=frozenset({MARKER}))
    listed = manifest["files"]
    if MODEL_FILE not in listed:
        raise ModelError(f"model bundle {path} is incomplete: {MODEL_FILE} is not listed")
    if (NO_CONTEXT_FILE in listed) != (manifest["no_context"] is not None):
        raise ModelError(f"{path / MANIFEST_FILE} is damaged: {NO_CONTEXT_FILE} and the "
                         "no_context section must come together")
    boosters: dict[str, lgb.Booster] = {}
    for name in (MODEL_FILE, NO_CONTEXT_FILE):
        if name not in listed:
            continue
        try:
            boosters[name] = lgb.Booster(model_str=(path / name).read_text(encoding="utf-8"))
        except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"model bundle {path} is damaged: cannot read {name}: {exc}"
                             ) from None
    learned = None
    if LEARNED_FILE in listed:
        learned = Learned.from_json((path / LEARNED_FILE).read_text(encoding="utf-8"),
                                    str(path / LEARNED_FILE))
    bundle = ModelBundle(manifest, boosters[MODEL_FILE], boosters.get(NO_CONTEXT_FILE), path,
                         learned)
    if bundle.booster.num_feature() != len(bundle.features):
        raise ModelError(f"model bundle {path} is damaged: {MODEL_FILE} has "
                         f"{bundle.booster.num_feature()} features, the manifest "
                         f"{len(bundle.features)}")
    return bundle


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def _class_weights(y: np.ndarray, power: float) -> np.ndarray:
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = np.where(counts > 0, (len(y) / (len(CLASSES) * np.maximum(counts, 1))) ** power, 0.0)
    return w


def _fingerprint(turns: pl.DataFrame) -> str:
    digest = hashlib.sha256()
    digest.update(turns.select(pl.col("session_id", "turn_index")).hash_rows(seed=0)
                  .to_numpy().tobytes())
    digest.update(turns.hash_rows(seed=0).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _is_legacy_bundle(path: Path) -> bool:
    """A bundle written before output markers existed: only bundle files, with a manifest."""
    names = {p.name for p in path.iterdir()}
    return MANIFEST_FILE in names and names <= {MANIFEST_FILE, MODEL_FILE, NO_CONTEXT_FILE}


def check_bundle_out(out_dir: str | os.PathLike[str]) -> Path:
    """Raise :class:`InputError` unless ``out_dir`` may receive a bundle (absent, empty,
    or a previous bundle); callers check it before reading data and training."""
    return check_output_dir(out_dir, "model", legacy=_is_legacy_bundle)


def write_bundle(out_dir: str | os.PathLike[str], files: dict[str, str]) -> Path:
    """Write a bundle's files as one set: staged beside ``out_dir``, then swapped in.

    ``out_dir`` must be absent, empty or a previous bundle (:mod:`fpi.files`).
    """
    with staged_output_dir(out_dir, "model", legacy=_is_legacy_bundle) as stage:
        for name, text in files.items():
            (stage / name).write_text(text, encoding="utf-8")
    return Path(out_dir)


def runtime_versions() -> dict[str, str]:
    """Versions that decide whether results reproduce: fpi, lightgbm, polars, numpy, python."""
    import platform

    return {"fpi": __version__, "lightgbm": lgb.__version__, "polars": pl.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _levels(features: pl.DataFrame, feats: Sequence[Feature]) -> dict[str, list[str]]:
    return {
        f.name: features[f.name].drop_nulls().unique().sort().to_list()
        for f in feats if f.kind == "categorical"
    }


@dataclass(frozen=True)
class _FeatureSet:
    """The model's columns: fixed features plus those learned from the data."""

    features: tuple[Feature, ...]
    levels: dict[str, list[str]]
    learned: Learned | None
    columns: dict[str, np.ndarray]  # learned columns of the labelled rows (OOF on fit rows)


def _feature_set(feats: pl.DataFrame, y: np.ndarray, fit: np.ndarray, folds: np.ndarray,
                 init: ModelBundle | None, learn: bool) -> _FeatureSet:
    """Features of a new model: the init bundle's (warm start) or fixed + learned ones."""
    fit_feats = feats.filter(pl.Series(fit))
    if init is not None:
        if init.learned is None:
            return _FeatureSet(init.features, init.levels, None, {})
        # the same columns, their text models refitted on this data: a text feature
        # means "log-posterior of a class given this field's text" whatever the language
        learned = Learned({f: TextModel.fit(hashed_ngrams(fit_feats[RAW_TEXT[f][0]].to_list()),
                                            y[fit]) for f in init.learned.text},
                          init.learned.extra)
        features, levels = init.features, init.levels
    elif not learn:
        return _FeatureSet(FEATURES, _levels(fit_feats, FEATURES), None, {})
    else:
        learned = Learned(fit_text_models(fit_feats, y[fit]),
                          tuple(discover_extra(fit_feats[RAW_EXTRA])))
        extra = tuple(Feature(n, g) for n, g in learned.names_groups())
        features, levels = FEATURES + extra, _levels(fit_feats, FEATURES)
    cols = learned.columns(feats)  # full-data models: right for a test part
    for name, oof in oof_text_scores(fit_feats, y[fit], folds[fit], tuple(learned.text)).items():
        cols[name][fit] = oof  # fit rows: out-of-fold scores only
    return _FeatureSet(features, levels, learned, cols)


@dataclass(frozen=True)
class _CrossFit:
    """Out-of-fold margins of the fit rows, rounds for the shipped model, the search."""

    params: dict[str, Any]
    oof_raw: np.ndarray
    rounds: int
    fold_rounds: list[int]
    search: list[dict[str, Any]]


def _crossfit(x: np.ndarray, y: np.ndarray, w: np.ndarray, folds: np.ndarray,
              which: Sequence[Feature], base: dict[str, Any], cands: list[dict[str, Any]],
              num_boost_round: int, early_stopping_rounds: int,
              init: lgb.Booster | None, progress: Progress | None, stage: str) -> _CrossFit:
    """Search ``cands`` on the first fold (lowest held-out log loss wins), then fit the
    other folds with the winner; rounds = 1.1 x the mean early-stopped rounds."""
    cat_idx = [i for i, f in enumerate(which) if f.kind == "categorical"]
    names = [f.name for f in which]
    ks = [int(k) for k in np.unique(folds)]
    total = len(cands) + len(ks) - 1
    report(progress, stage, 0, total)

    def run(k: int, p: dict[str, Any]) -> FoldFit:
        return fit_fold(x, y, w, folds != k, folds == k, cat_idx, names, p, num_boost_round,
                        early_stopping_rounds, init)

    tried = [(run(ks[0], {**base, **c}), c) for c in cands]
    report(progress, stage, len(cands), total)
    first, chosen = min(tried, key=lambda t: t[0].score)
    params = {**base, **chosen}
    oof = np.zeros((len(y), len(CLASSES)))
    oof[folds == ks[0]] = first.raw
    fold_rounds = [first.best_iteration]
    for i, k in enumerate(ks[1:]):
        r = run(k, params)
        oof[folds == k] = r.raw
        fold_rounds.append(r.best_iteration)
        report(progress, stage, len(cands) + i + 1, total)
    rounds = max(1, round(1.1 * float(np.mean(fold_rounds))))
    search = [{**c, "fold0_logloss": round(f.score, 6), "rounds": f.best_iteration}
              for f, c in tried]
    return _CrossFit(params, oof, rounds, fold_rounds, search)


def _fit_final(x: np.ndarray, y: np.ndarray, w: np.ndarray, which: Sequence[Feature],
               params: dict[str, Any], rounds: int, init: lgb.Booster | None,
               progress: Progress | None, stage: str) -> tuple[lgb.Booster, str]:
    """The shipped model: all fit rows, the cross-fitted number of rounds."""
    ds = lgb.Dataset(x, label=y, weight=w, feature_name=[f.name for f in which],
                     categorical_feature=[i for i, f in enumerate(which)
                                          if f.kind == "categorical"] or "auto",
                     free_raw_data=False, params={"max_bin": params["max_bin"], "verbosity": -1})
    booster = lgb.train(params, ds, num_boost_round=rounds, init_model=init,
                        callbacks=[cb for cb in (boosting_callback(progress, stage),)
                                   if cb is not None])
    text = booster.model_to_string()
    # reload from the text so the booster in memory is exactly the one saved
    return lgb.Booster(model_str=text), text


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
               seed: int) -> tuple[RuleBaseline, np.ndarray]:
    """The rule baseline fitted on all fit rows, and its out-of-fold predictions."""
    pred = np.full(len(y), -1)
    for k in np.unique(folds[fit]):
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
    cv: _CrossFit


def _fit_model(x: np.ndarray, y: np.ndarray, w: np.ndarray, fit: np.ndarray,
               folds: np.ndarray, which: Sequence[Feature], base: dict[str, Any],
               cands: list[dict[str, Any]], rounds_cap: tuple[int, int],
               init: lgb.Booster | None, progress: Progress | None, stage: str) -> _Fitted:
    cv = _crossfit(x[fit], y[fit], w[fit], folds[fit], which, base, cands, *rounds_cap,
                   init, progress, f"cross-fitting{stage}")
    calib = fit_calibration(cv.oof_raw, y[fit])
    booster, text = _fit_final(x[fit], y[fit], w[fit], which, cv.params, cv.rounds, init,
                               progress, f"boosting{stage}")
    test = ~fit
    raw = np.asarray(booster.predict(x[test], raw_score=True)) if test.any() else cv.oof_raw
    return _Fitted(booster, text, calib, calib.apply(raw), cv)


def train(
    turns: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    threads: int = 1,
    folds: int | None = None,
    split: Split = "session",
    test_size: float = 0.0,
    num_boost_round: int = 1000,
    early_stopping_rounds: int = 20,
    params: dict[str, Any] | None = None,
    search: bool = True,
    learn_features: bool = True,
    class_weight_power: float = 0.5,
    min_class_count: int = MIN_CLASS_COUNT,
    no_context: bool = True,
    features: pl.DataFrame | None = None,
    init_model: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the failure-point model on labelled canonical turns and write a bundle.

    Cross-fitting by session (``folds`` folds, by default 5, 3 above 20,000
    labelled turns; a hash of seed and session id): each
    fold's model is trained on the other folds and early-stopped on its own, giving
    out-of-fold margins for every labelled turn. They fit the calibration, the
    held-out metrics and confusion matrices (of the model, the no-context model and
    the rule baseline, on the same folds), and the rounds of the shipped model,
    which is then trained on all labelled turns. A small parameter search (by data
    size, :func:`fpi.crossfit.candidates`) runs on the first fold. With
    ``test_size`` > 0, that fraction of sessions (random, or the newest with
    ``split="time"``) is set aside first and the metrics are measured on it.
    ``learn_features`` adds the text models and ``extra`` numbers (:mod:`fpi.learned`);
    ``init_model`` continues from another bundle (same features; warm start).

    Raises
    ------
    InputError
        No labelled turns, too few sessions, a class with too few examples, or
        ``out_dir`` is not absent, empty or a previous bundle (checked first).
    ModelError
        ``init_model`` is not a bundle this fpi can continue from.
    """
    if not 0 <= test_size < 1:
        raise InputError(f"test size must be at least 0 and below 1, got {test_size}")
    if folds is not None and folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}")
    check_bundle_out(out_dir)  # before the slow part
    init = _init_bundle(init_model, turns)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

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
    feats = features.filter(lab_mask)
    y = y_all[labelled]
    if folds is None:  # large data: fewer folds keep training time sane
        folds = AUTO_FOLDS[0] if len(y) <= AUTO_FOLDS[2] else AUTO_FOLDS[1]
    fit, fold = _split_rows(lab_turns, split, test_size, seed, folds)
    _check_classes(y[fit], min_class_count)
    fs = _feature_set(feats, y, fit, fold, init, learn_features)
    x = _matrix(feats, fs.features, fs.levels, fs.columns)
    lap("learned")
    n_fit = int(fit.sum())
    base = _base_params(n_fit, seed, threads)
    cands = [dict(params)] if params else (candidates(n_fit) if search else [{}])
    cw = _class_weights(y[fit], class_weight_power)
    w = cw[y]
    caps = (num_boost_round, early_stopping_rounds)
    init_booster = init.booster if init is not None else None
    log.info("cross-fitting on %d turns (%d features)", n_fit, len(fs.features))
    main = _fit_model(x, y, w, fit, fold, fs.features, base, cands, caps, init_booster,
                      progress, "")
    lap("model")
    ev = ~fit if (~fit).any() else fit
    y_ev = y[ev]
    metrics = classification_metrics(y_ev, main.proba.argmax(axis=1), main.proba)
    files = {MODEL_FILE: main.text}
    if fs.learned is not None:
        files[LEARNED_FILE] = fs.learned.to_json()
    nc_block: dict[str, Any] | None = None
    nc_booster: lgb.Booster | None = None
    baselines_heldout: dict[str, Any] = {}
    if no_context:
        nc_feats = context_free(fs.features)
        idx = [i for i, f in enumerate(fs.features) if f.group != "context"]
        nc_init = (init.no_context_booster if init is not None else None)
        nc = _fit_model(x[:, idx], y, w, fit, fold, nc_feats, main.cv.params, [{}], caps,
                        nc_init, progress, " (no context)")
        files[NO_CONTEXT_FILE] = nc.text
        nc_booster = nc.booster
        nc_block = {"features": [f.name for f in nc_feats],
                    "calibration": nc.calibration.to_dict(),
                    "best_iteration": nc.booster.current_iteration()}
        baselines_heldout["no_context"] = _brief(
            classification_metrics(y_ev, nc.proba.argmax(axis=1)))
        lap("no_context")
    report(progress, "rule baseline", 0, None)
    rules, rule_pred = _rules_oof(feats, y, fit, fold, seed)
    baselines_heldout["rules"] = _brief(classification_metrics(y_ev, rule_pred[ev]))
    lap("rules")

    from fpi.evaluation import human_agreement

    second = labels_to_index(lab_turns["label"].struct.field("failure_point_2"))
    human = human_agreement(y_ev, second[ev], metrics["per_class"])
    sessions = lab_turns["session_id"]

    def count(mask: np.ndarray) -> dict[str, Any]:
        return {"turns": int(mask.sum()),
                "sessions": sessions.filter(pl.Series(mask)).n_unique(),
                "per_class": {c: int(n) for c, n in
                              zip(CLASSES, np.bincount(y[mask], minlength=len(CLASSES)),
                                  strict=True)}}

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
        "params": {**main.cv.params, "num_boost_round": num_boost_round,
                   "early_stopping_rounds": early_stopping_rounds,
                   "best_iteration": main.booster.current_iteration(),
                   "class_weight_power": class_weight_power,
                   "class_weights": dict(zip(CLASSES, (round(float(v), 6) for v in cw),
                                             strict=True))},
        "calibration": main.calibration.to_dict(),
        "training": {
            "fingerprint": _fingerprint(turns),
            "turns": turns.height,
            "labelled_turns": int(labelled.sum()),
            "protocol": "crossfit", "folds": folds, "split": split, "seed": seed,
            "threads": threads, "test_size": test_size,
            "fold_rounds": main.cv.fold_rounds, "rounds": main.cv.rounds,
            "search": main.cv.search,
            "init_model": init.model_id if init is not None else None,
            "heldout_is": "test part" if (~fit).any() else "out-of-fold",
            "counts": {"train": count(fit), "valid": count(fit), "calibration": count(fit),
                       "test": count(ev)},
            "class_prior": {c: round(float(n) / len(y), 6) for c, n in
                            zip(CLASSES, np.bincount(y, minlength=len(CLASSES)), strict=True)},
        },
        "heldout": {"metrics": metrics, "confusion": metrics["confusion"],
                    "soft_confusion": soft_confusion(y_ev, main.proba),
                    "human": human},
        "no_context": nc_block,
        "baselines": {
            "rules": {"thresholds": rules.to_dict()},
            "heldout": baselines_heldout,
        },
    }
    manifest["files"] = {name: hashlib.sha256(text.encode("utf-8")).hexdigest()
                         for name, text in files.items()}
    manifest["bundle_hash"] = bundle_hash(manifest)
    files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    out = Path(out_dir)
    write_bundle(out, files)
    lap("write")
    bundle = ModelBundle(manifest, main.booster, nc_booster, out, fs.learned)
    return TrainResult(out, manifest, bundle, timings)


def soft_confusion(y: np.ndarray, proba: np.ndarray) -> list[list[float]]:
    """Sum of calibrated probabilities per true class (rows true, columns predicted).

    The probabilistic counterpart of the confusion counts: row ``i`` divided by its
    sum is the mean calibrated posterior of class-``i`` turns, what the rate
    estimator (:func:`fpi.aggregate.estimate_rates`) uses to check and correct
    the calibration. Sums, so matrices of disjoint held-out parts (folds) add.
    """
    k = proba.shape[1]
    out = np.zeros((k, k))
    np.add.at(out, y, proba)
    return [[round(float(v), 6) for v in row] for row in out]


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "per_class": m["per_class"],
            "confusion": m["confusion"]}


