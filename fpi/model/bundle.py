"""The model bundle: :class:`ModelBundle` in memory, :func:`save` and :func:`load_bundle`.

A *model bundle* is a directory::

    model.txt             LightGBM text model (with dialogue-context features)
    model_no_context.txt  the same model trained without context features (a baseline)
    learned.json          text models and extra-field names the model's learned
                          features come from (:mod:`fpi.model.learned`), if any
    manifest.json         versions, classes, features (group, kind, category levels),
                          parameters, calibration, training fingerprint and counts,
                          held-out metrics, baselines, file checksums, bundle_hash
    .fpi-output.json      marker: this directory is an fpi model output

No pickle: everything is text. A :class:`ModelBundle` holds the text of each of its
files, so the bundle :func:`fpi.model.training.fit` returns can be used, hashed and
saved as it is. :func:`save` writes it in a staging directory beside the target and
swaps it into place (:func:`fpi.files.staged_output_dir`), so an existing bundle is
never half-replaced; :func:`load_bundle` checks the whole bundle
(:mod:`fpi.model.manifest`) before using any of it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import polars as pl

from fpi import __version__
from fpi.errors import ModelError, SchemaError
from fpi.features import FEATURES, RAW_COLUMNS, Feature
from fpi.files import MARKER, check_output_dir, staged_output_dir
from fpi.model.baselines import RuleBaseline
from fpi.model.calibration import Calibration
from fpi.model.compiled import raw_margins
from fpi.model.learned import Learned
from fpi.model.manifest import MANIFEST_FILE, check_bundle_files, validate_manifest
from fpi.schema import CLASSES, TURN_SCHEMA

#: Bundle format, ``major.minor``: a reader accepts any minor of its own major.
BUNDLE_FORMAT: Final = "2.1"
MODEL_FILE: Final = "model.txt"
NO_CONTEXT_FILE: Final = "model_no_context.txt"
LEARNED_FILE: Final = "learned.json"


def model_matrix(features: pl.DataFrame, which: Sequence[Feature],
                 levels: dict[str, list[str]],
                 learned: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Model input matrix; ``learned`` holds the columns not in ``features``
    (:mod:`fpi.model.learned`)."""
    learned = learned or {}
    if learned:
        framed = [f for f in which if f.name not in learned]
        base = model_matrix(features, framed, levels)
        # column-major, as Polars' to_numpy gives ``base``: each column is one copy
        out = np.empty((features.height, len(which)), order="F")
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
    """A model bundle: boosters, calibration, features, manifest and its files' text.

    :func:`fpi.model.training.fit` makes one in memory (``path`` is ``None``),
    :func:`load_bundle` reads one, :func:`save` writes one. ``predict_proba`` and
    ``contributions`` take a features frame from :func:`fpi.features.build_features`.
    ``files`` maps each file the manifest lists to its text (what :func:`save` writes).
    """

    def __init__(self, manifest: dict[str, Any], booster: lgb.Booster,
                 no_context_booster: lgb.Booster | None, path: Path | None = None,
                 learned: Learned | None = None, *, files: Mapping[str, str]) -> None:
        self.manifest = manifest
        self.files = dict(files)
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

    def located(self, path: Path) -> ModelBundle:
        """The same bundle (same boosters), as stored at ``path``."""
        return ModelBundle(self.manifest, self.booster, self.no_context_booster, path,
                           self.learned, files=self.files)

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

        Learned features (:mod:`fpi.model.learned`) are computed here from the raw columns
        :func:`fpi.features.build_features` passes through.
        """
        which = self.features if which is None else which
        learned = None
        if self.learned is not None and any(f.name not in features.columns for f in which):
            learned = self.learned.columns(features)
        return model_matrix(features, which, self.levels, learned)

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

    def contributions(self, features: pl.DataFrame,
                      classes: np.ndarray | None = None, threads: int | None = None
                      ) -> np.ndarray:
        """Exact TreeSHAP contributions on the raw margin.

        Returns ``(n, n_classes, n_features + 1)``; the last column is the bias, and each
        class's row sums to its raw margin. With ``classes`` (one class index per row) only
        row ``i``'s class ``classes[i]`` is computed (the other classes' rows are 0): the
        same values, from that class's trees alone (a sixth of the work for six classes).
        ``threads``: LightGBM's threads over the rows (each row's values are computed
        alone, so they do not depend on it; default: LightGBM's for all classes, the
        model's training setting for one class per row). With one class per row and
        ``threads`` above 1, the classes are computed side by side on that many threads
        instead, one LightGBM thread each: LightGBM's TreeSHAP hardly gains from its
        own threads (measured here: 4.3 s wall for 4.8 CPU-s on two).
        Calls from several threads take turns (LightGBM's ``pred_contrib`` on one booster
        is not safe to run twice at once: LightGBM issue 5482; each class's booster is
        used by one thread at a time).
        """
        k, m = len(self.classes), len(self.features)
        if features.height == 0:
            return np.zeros((0, k, m + 1))
        x = self.matrix(features)
        with _TREESHAP:
            per_class = None if classes is None else self._class_boosters()
            extra: dict[str, Any] = {} if threads is None else {"num_threads": threads}
            if per_class is None:
                contrib = np.asarray(self.booster.predict(x, pred_contrib=True, **extra))
                return contrib.reshape(features.height, k, m + 1)
            assert classes is not None
            classes = np.asarray(classes, dtype=np.int64)
            out = np.zeros((features.height, k, m + 1))
            trained = self.booster.params.get("num_threads")
            extra = extra or ({} if trained is None else {"num_threads": trained})
            found = np.unique(classes)
            side = 1 if threads is None else min(threads, len(found))
            if side > 1:
                extra = {"num_threads": 1}

            def one(c: int) -> None:
                rows = np.flatnonzero(classes == c)
                out[rows, c] = per_class[c].predict(x[rows], pred_contrib=True, **extra)

            # the classes with the most rows first, so the threads end close together
            order = [int(c) for c in sorted(found, key=lambda c: -int((classes == c).sum()))]
            if side > 1:
                with ThreadPoolExecutor(side, thread_name_prefix="fpi-treeshap") as pool:
                    list(pool.map(one, order))
            else:
                for c in order:
                    one(c)
        return out

    def _class_boosters(self) -> list[lgb.Booster] | None:
        """One booster per class holding that class's trees in order (what LightGBM adds
        into the class's contributions), built once; None if the model text is not at hand."""
        if not hasattr(self, "_per_class"):
            text = self.files.get(MODEL_FILE)
            self._per_class = None if text is None else class_boosters(text, len(self.classes))
        return self._per_class


#: TreeSHAP calls take turns (:meth:`ModelBundle.contributions`).
_TREESHAP = threading.Lock()


def class_boosters(model_text: str, k: int) -> list[lgb.Booster] | None:
    """Split a ``k``-class LightGBM text model into ``k`` one-class models: class ``c``'s
    trees (every ``k``-th from ``c``), in order. LightGBM's ``pred_contrib`` sums each
    tree's TreeSHAP values into its class's row in that order, so a class's model gives
    that row's values exactly. None when the text does not split into whole iterations."""
    head, sep, rest = model_text.partition("\nTree=")
    body = ("Tree=" + rest).partition("\nend of trees")[0]
    trees = [t.strip("\n").partition("\n")[2] for t in re.split(r"\n(?=Tree=)", body)]
    if not sep or not trees or len(trees) % k:
        return None
    keep = {"num_class": "1", "num_tree_per_iteration": "1"}
    lines = [f"{key}={keep[key]}" if key in keep else line
             for line in head.splitlines()
             for key in [line.partition("=")[0]] if key not in ("tree_sizes", "objective")]
    out = []
    for c in range(k):
        mine = [f"Tree={j}\n{t}" for j, t in enumerate(trees[c::k])]
        out.append(lgb.Booster(model_str="\n".join(lines) + "\n\n" + "\n\n\n".join(mine)
                               + "\n\n\nend of trees\n"))
    if any(b.num_trees() != len(trees) // k for b in out):
        return None
    return out


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
    """Load a model bundle directory written by :func:`save`, after checking it whole.

    The manifest is validated against its schema (:mod:`fpi.model.manifest`), its
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
    texts: dict[str, str] = {}
    boosters: dict[str, lgb.Booster] = {}
    for name in (MODEL_FILE, NO_CONTEXT_FILE):
        if name not in listed:
            continue
        try:
            texts[name] = (path / name).read_text(encoding="utf-8")
            boosters[name] = lgb.Booster(model_str=texts[name])
        except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"model bundle {path} is damaged: cannot read {name}: {exc}"
                             ) from None
    learned = None
    if LEARNED_FILE in listed:
        texts[LEARNED_FILE] = (path / LEARNED_FILE).read_text(encoding="utf-8")
        learned = Learned.from_json(texts[LEARNED_FILE], str(path / LEARNED_FILE))
    bundle = ModelBundle(manifest, boosters[MODEL_FILE], boosters.get(NO_CONTEXT_FILE), path,
                         learned, files=texts)
    if bundle.booster.num_feature() != len(bundle.features):
        raise ModelError(f"model bundle {path} is damaged: {MODEL_FILE} has "
                         f"{bundle.booster.num_feature()} features, the manifest "
                         f"{len(bundle.features)}")
    return bundle


def _is_legacy_bundle(path: Path) -> bool:
    """A bundle written before output markers existed: only bundle files, with a manifest."""
    names = {p.name for p in path.iterdir()}
    return MANIFEST_FILE in names and names <= {MANIFEST_FILE, MODEL_FILE, NO_CONTEXT_FILE}


def check_bundle_out(out_dir: str | os.PathLike[str]) -> Path:
    """Raise :class:`InputError` unless ``out_dir`` may receive a bundle (absent, empty,
    or a previous bundle); callers check it before reading data and training."""
    return check_output_dir(out_dir, "model", legacy=_is_legacy_bundle)


def save(bundle: ModelBundle, out_dir: str | os.PathLike[str]) -> ModelBundle:
    """Write ``bundle`` as one set: staged beside ``out_dir``, then swapped in.

    Its files as they are, then ``manifest.json``. ``out_dir`` must be absent, empty or a
    previous bundle (:mod:`fpi.files`). Returns the bundle as stored at ``out_dir``.
    """
    manifest = json.dumps(bundle.manifest, indent=2, sort_keys=False) + "\n"
    with staged_output_dir(out_dir, "model", legacy=_is_legacy_bundle) as stage:
        for name, text in bundle.files.items():
            (stage / name).write_text(text, encoding="utf-8")
        (stage / MANIFEST_FILE).write_text(manifest, encoding="utf-8")
    return bundle.located(Path(out_dir))


def runtime_versions() -> dict[str, str]:
    """Versions that decide whether results reproduce: fpi, lightgbm, polars, numpy, python."""
    import platform

    return {"fpi": __version__, "lightgbm": lgb.__version__, "polars": pl.__version__,
            "numpy": np.__version__, "python": platform.python_version()}

