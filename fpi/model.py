"""Train, save, load and apply the failure-point model (LightGBM multiclass).

A *model bundle* is a directory::

    model.txt             LightGBM text model (with dialogue-context features)
    model_no_context.txt  the same model trained without context features (a baseline)
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
from fpi.errors import InputError, ModelError, SchemaError
from fpi.evaluation import classification_metrics, labels_to_index
from fpi.features import FEATURES, Feature, build_features, context_free
from fpi.files import MARKER, check_output_dir, staged_output_dir
from fpi.progress import Progress, boosting_callback, report
from fpi.schema import CLASSES, COMPONENTS, TURN_SCHEMA

log = logging.getLogger(__name__)

#: Bundle format, ``major.minor``: a reader accepts any minor of its own major.
BUNDLE_FORMAT: Final = "2.0"
MODEL_FILE: Final = "model.txt"
NO_CONTEXT_FILE: Final = "model_no_context.txt"

#: Fewest labelled examples of a class the trainer accepts (it must also reach the split parts).
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
            levels: dict[str, list[str]]) -> np.ndarray:
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
                 no_context_booster: lgb.Booster | None, path: Path | None = None) -> None:
        self.manifest = manifest
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
        bad = [f.name for f in self.features
               if f.name not in known or known[f.name].kind != f.kind]
        if bad:
            raise SchemaError(
                f"model {self.path or ''} uses feature(s) {', '.join(bad[:5])} that this fpi "
                f"{__version__} does not compute: retrain the model with `fpi train`"
            )

    def matrix(self, features: pl.DataFrame,
               which: Sequence[Feature] | None = None) -> np.ndarray:
        """Model input matrix (float64; categoricals as level codes, unseen levels NaN)."""
        return _matrix(features, self.features if which is None else which, self.levels)

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
    bundle = ModelBundle(manifest, boosters[MODEL_FILE], boosters.get(NO_CONTEXT_FILE), path)
    if bundle.booster.num_feature() != len(bundle.features):
        raise ModelError(f"model bundle {path} is damaged: {MODEL_FILE} has "
                         f"{bundle.booster.num_feature()} features, the manifest "
                         f"{len(bundle.features)}")
    return bundle


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Parts:
    train: np.ndarray  # boolean masks over the labelled rows
    valid: np.ndarray
    calib: np.ndarray
    test: np.ndarray


#: Names of the parts :func:`assign_parts` puts sessions in.
PARTS: Final = ("train", "valid", "calibration", "test")


def assign_parts(turns: pl.DataFrame, *, split: Split = "session", seed: int = 0,
                 test_size: float = 0.2, valid_size: float = 0.1,
                 calib_size: float = 0.1) -> pl.DataFrame:
    """Assign whole sessions to the parts ``train``, ``valid``, ``calibration``, ``test``.

    ``split="session"``: a seeded random choice of sessions. ``split="time"``: the
    newest sessions (by first timestamp) are the test part, the next newest the
    validation and calibration parts. A session is never in two parts.

    Returns
    -------
    polars.DataFrame
        ``session_id`` and ``part``, one row per session, sorted by ``session_id``.
    """
    sess = turns.group_by("session_id").agg(pl.col("timestamp").min()).sort("session_id")
    n = sess.height
    if n < 4:
        raise InputError(f"only {n} labelled session(s): training needs at least 4 sessions "
                         "(sessions are never split across training and held-out parts)")
    n_test = max(1, round(n * test_size))
    if split == "session":
        order = np.random.default_rng(seed).permutation(n)
        ids = sess["session_id"].to_numpy()[order]
        test, rest = ids[:n_test], ids[n_test:]
    elif split == "time":
        ids = sess.sort("timestamp", "session_id")["session_id"].to_numpy()
        # oldest sessions train, newest are held out; validation and calibration parts
        # come from the most recent training sessions
        test, rest = ids[n - n_test:], ids[: n - n_test][::-1]
    else:
        raise InputError(f"unknown split {split!r}: use 'session' or 'time'")
    n_valid = max(1, round(n * valid_size))
    n_calib = max(1, round(n * calib_size))
    valid, calib = rest[:n_valid], rest[n_valid:n_valid + n_calib]
    train_ids = rest[n_valid + n_calib:]
    if len(train_ids) == 0:
        raise InputError(f"only {n} labelled sessions: too few to carve training, validation, "
                         "calibration and held-out parts")
    frames = [pl.DataFrame({"session_id": ids_, "part": name},
                           schema={"session_id": pl.String, "part": pl.String})
              for ids_, name in zip((train_ids, valid, calib, test), PARTS, strict=True)]
    return pl.concat(frames).sort("session_id")


def _class_weights(y: np.ndarray, power: float) -> np.ndarray:
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = np.where(counts > 0, (len(y) / (len(CLASSES) * np.maximum(counts, 1))) ** power, 0.0)
    return w


def _fit_booster(x: np.ndarray, y: np.ndarray, w: np.ndarray, xv: np.ndarray, yv: np.ndarray,
                 wv: np.ndarray, cat_idx: list[int], names: list[str], params: dict[str, Any],
                 num_boost_round: int, early_stopping_rounds: int,
                 on_round: Any = None) -> tuple[lgb.Booster, str]:
    train_set = lgb.Dataset(x, label=y, weight=w, feature_name=names,
                            categorical_feature=cat_idx or "auto", free_raw_data=True,
                            params={"max_bin": params["max_bin"], "verbosity": -1})
    valid_set = lgb.Dataset(xv, label=yv, weight=wv, reference=train_set)
    booster = lgb.train(
        params, train_set, num_boost_round=num_boost_round, valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False),
                   *([on_round] if on_round is not None else [])],
    )
    text = booster.model_to_string(num_iteration=booster.best_iteration or None)
    # reload from the text so the booster in memory is exactly the one saved
    return lgb.Booster(model_str=text), text


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


def train(
    turns: pl.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    threads: int = 1,
    split: Split = "session",
    test_size: float = 0.2,
    valid_size: float = 0.1,
    calib_size: float = 0.1,
    num_boost_round: int = 1000,
    early_stopping_rounds: int = 20,
    params: dict[str, Any] | None = None,
    class_weight_power: float = 0.5,
    min_class_count: int = MIN_CLASS_COUNT,
    no_context: bool = True,
    features: pl.DataFrame | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the failure-point model on labelled canonical turns and write a bundle.

    Sessions are split whole (never on both sides) into training, validation (early
    stopping), calibration and held-out test parts; ``split="time"`` holds out the
    newest sessions instead of a seeded random choice. Classes are weighted by
    ``(n / (6 n_c)) ** class_weight_power``. The held-out metrics, the no-context
    model's and the fitted rule baseline's are stored in the manifest.

    Parameters
    ----------
    turns
        Canonical frame (``fpi.ingest.read_traces``); unlabelled turns still serve as
        dialogue context of their labelled neighbours.
    out_dir
        Bundle directory to write: built in staging beside it and swapped in whole
        (:func:`fpi.files.staged_output_dir`) if absent, empty or a previous bundle.
    seed, threads
        Same data, seed and threads give byte-identical model files.
    features
        Precomputed :func:`fpi.features.build_features` of ``turns`` (optional).
    progress
        Optional ``progress(stage, done, total)`` (:mod:`fpi.progress`): features,
        boosting rounds of each model, the rule baseline.

    Raises
    ------
    InputError
        No labelled turns, too few sessions, a class with too few examples, or
        ``out_dir`` is not absent, empty or a previous bundle (checked first).
    """
    if not 0 < test_size < 1:
        raise InputError(f"test size must be between 0 and 1, got {test_size}")
    check_bundle_out(out_dir)  # before the slow part
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
    y_lab = y_all[labelled]
    counts = np.bincount(y_lab, minlength=len(CLASSES))
    few = [(c, int(counts[i])) for i, c in enumerate(CLASSES) if counts[i] < min_class_count]
    if few:
        listed = ", ".join(f"{c!r} has {n}" for c, n in few)
        raise InputError(f"too few labelled examples to learn: {listed} (need at least "
                         f"{min_class_count} per class)")
    if features is None:
        report(progress, "features", 0, None)
        features = build_features(turns)
        report(progress, "features", turns.height, turns.height)
    lap("features")
    lab_mask = pl.Series(labelled)
    lab_turns = turns.filter(lab_mask)
    feats = features.filter(lab_mask)
    assigned = assign_parts(lab_turns, split=split, seed=seed, test_size=test_size,
                            valid_size=valid_size, calib_size=calib_size)
    part = lab_turns.select("session_id").join(assigned, on="session_id", how="left",
                                               maintain_order="left")["part"]
    parts = _Parts(*((part == name).to_numpy() for name in PARTS))
    n_sessions = {name: int((assigned["part"] == name).sum()) for name in PARTS}

    full_params = {**DEFAULT_PARAMS, "seed": seed, "num_threads": threads,
                   "deterministic": True, "force_col_wise": True}
    n_fit = int(parts.train.sum())
    # On large data, bag fewer rows per tree: each round costs in proportion to the rows
    # bagged, and a few hundred thousand rows per tree are plenty for 6 classes.
    full_params["bagging_fraction"] = float(np.clip(200_000 / max(n_fit, 1), 0.3, 0.8))
    if n_fit > 300_000:  # plenty of data: bigger steps, fewer rounds
        full_params["learning_rate"] = 0.15
    full_params.update(params or {})
    cw = _class_weights(y_lab[parts.train], class_weight_power)

    x_all: np.ndarray | None = None

    def fit(which: tuple[Feature, ...], levels: dict[str, list[str]], stage: str
            ) -> tuple[lgb.Booster, str, Calibration, dict[str, Any], np.ndarray]:
        nonlocal x_all
        if x_all is None:  # one matrix for both models; the no-context one takes columns
            x_all = _matrix(feats, FEATURES, levels)
        x = x_all if which == FEATURES else x_all[:, [FEATURES.index(f) for f in which]]
        cat_idx = [i for i, f in enumerate(which) if f.kind == "categorical"]
        names = [f.name for f in which]
        booster, text = _fit_booster(
            x[parts.train], y_lab[parts.train], cw[y_lab[parts.train]],
            x[parts.valid], y_lab[parts.valid], cw[y_lab[parts.valid]],
            cat_idx, names, full_params, num_boost_round, early_stopping_rounds,
            boosting_callback(progress, stage))
        calib = fit_calibration(np.asarray(booster.predict(x[parts.calib], raw_score=True)),
                                y_lab[parts.calib])
        proba = calib.apply(np.asarray(booster.predict(x[parts.test], raw_score=True)))
        metrics = classification_metrics(y_lab[parts.test], proba.argmax(axis=1), proba)
        return booster, text, calib, metrics, proba

    levels = _levels(feats.filter(pl.Series(parts.train)), FEATURES)
    log.info("training on %d turns (%d features)", int(parts.train.sum()), len(FEATURES))
    booster, text, calib, metrics, test_proba = fit(FEATURES, levels, "boosting")
    lap("model")
    files = {MODEL_FILE: text}
    nc_block: dict[str, Any] | None = None
    nc_booster: lgb.Booster | None = None
    baselines_heldout: dict[str, Any] = {}
    if no_context:
        nc_feats = context_free(FEATURES)
        nc_booster, nc_text, nc_calib, nc_metrics, _ = fit(nc_feats, levels,
                                                           "boosting (no context)")
        files[NO_CONTEXT_FILE] = nc_text
        nc_block = {"features": [f.name for f in nc_feats], "calibration": nc_calib.to_dict(),
                    "best_iteration": nc_booster.current_iteration()}
        baselines_heldout["no_context"] = _brief(nc_metrics)
        lap("no_context")
    report(progress, "rule baseline", 0, None)
    rules = fit_rule_baseline(feats.filter(pl.Series(parts.train)), y_lab[parts.train],
                              seed=seed)
    rule_metrics = classification_metrics(
        y_lab[parts.test], rules.predict(feats.filter(pl.Series(parts.test))))
    baselines_heldout["rules"] = _brief(rule_metrics)
    lap("rules")

    from fpi.evaluation import human_agreement

    second = labels_to_index(lab_turns["label"].struct.field("failure_point_2"))
    human = human_agreement(y_lab[parts.test], second[parts.test], metrics["per_class"])

    def count(mask: np.ndarray, name: str) -> dict[str, Any]:
        return {"turns": int(mask.sum()), "sessions": n_sessions[name],
                "per_class": {c: int(n) for c, n in
                              zip(CLASSES, np.bincount(y_lab[mask], minlength=len(CLASSES)),
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
             "levels": levels.get(f.name) if f.kind == "categorical" else None}
            for f in FEATURES
        ],
        "params": {**full_params, "num_boost_round": num_boost_round,
                   "early_stopping_rounds": early_stopping_rounds,
                   "best_iteration": booster.current_iteration(),
                   "class_weight_power": class_weight_power,
                   "class_weights": dict(zip(CLASSES, (round(float(w), 6) for w in cw),
                                             strict=True))},
        "calibration": calib.to_dict(),
        "training": {
            "fingerprint": _fingerprint(turns),
            "turns": turns.height,
            "labelled_turns": int(labelled.sum()),
            "split": split, "seed": seed, "threads": threads, "test_size": test_size,
            "counts": {"train": count(parts.train, "train"), "valid": count(parts.valid, "valid"),
                       "calibration": count(parts.calib, "calibration"),
                       "test": count(parts.test, "test")},
            "class_prior": {c: round(float(n) / len(y_lab), 6) for c, n in
                            zip(CLASSES, counts, strict=True)},
        },
        "heldout": {"metrics": metrics, "confusion": metrics["confusion"],
                    "soft_confusion": soft_confusion(y_lab[parts.test], test_proba),
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
    bundle = ModelBundle(manifest, booster, nc_booster if no_context else None, out)
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


