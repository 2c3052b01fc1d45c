"""Training, the bundle and its errors: determinism, no session leak, round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tiny_turns import make_turns

from fpi.errors import InputError, ModelError, SchemaError
from fpi.features import FEATURES, build_features, context_free
from fpi.files import MARKER
from fpi.model import FitOptions, ModelBundle, TrainResult, fit, load_bundle, save, train
from fpi.model.bundle import LEARNED_FILE, MODEL_FILE, NO_CONTEXT_FILE
from fpi.model.manifest import MANIFEST_FILE, bundle_hash
from fpi.model.vocab import VOCAB_FEATURES
from fpi.schema import CLASSES, COMPONENTS

FAST = {"num_boost_round": 25, "early_stopping_rounds": 5}


@pytest.fixture(scope="session")
def turns(small_turns: pl.DataFrame) -> pl.DataFrame:
    return small_turns


@pytest.fixture(scope="session")
def trained(small_bundle: TrainResult) -> TrainResult:
    """The session's model (conftest.py): ``train(turns, seed=0, threads=1, **FAST)``."""
    return small_bundle


@pytest.fixture(scope="module")
def fitted(turns: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory,
           ) -> tuple[ModelBundle, Path]:
    """The session model's training fitted in memory (``fit``, nothing saved), its search
    candidates, other folds and no-context model two at a time (``jobs=2``), from an
    empty working directory (returned with the bundle: fit wrote nothing there). Trained
    once for the tests of the fit in memory: its bytes and its round trip."""
    cwd = tmp_path_factory.mktemp("fit-cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        bundle = fit(turns, FitOptions(seed=0, threads=1, jobs=2, **FAST))
    return bundle, cwd


def test_bundle_files_and_manifest(trained: TrainResult) -> None:
    names = sorted(p.name for p in trained.path.iterdir())
    assert names == sorted([MARKER, MANIFEST_FILE, MODEL_FILE, NO_CONTEXT_FILE, LEARNED_FILE])
    m = json.loads((trained.path / MANIFEST_FILE).read_text())
    for key in ("fpi_version", "format_version", "classes", "features", "params", "calibration",
                "training", "heldout", "baselines", "no_context", "files", "versions",
                "bundle_hash"):
        assert key in m, key
    assert m["classes"] == list(CLASSES)
    names = [f["name"] for f in m["features"]]
    assert names[:len(FEATURES)] == [f.name for f in FEATURES]
    assert all(n.startswith(("text_", "extra_")) or n in VOCAB_FEATURES
               for n in names[len(FEATURES):])
    assert set(VOCAB_FEATURES) <= set(names)
    assert {f["group"] for f in m["features"]} == set(COMPONENTS)
    domain = next(f for f in m["features"] if f["name"] == "nlu_domain")
    assert domain["kind"] == "categorical" and "smart_home" in domain["levels"]
    assert m["params"]["deterministic"] is True and m["params"]["num_threads"] == 1
    assert m["training"]["fingerprint"].startswith("sha256:")
    assert set(m["training"]["counts"]) == {"train", "valid", "calibration", "test"}
    assert m["heldout"]["confusion"] == m["heldout"]["metrics"]["confusion"]
    # soft confusion: summed calibrated probabilities per true class; rows sum to the
    # class's held-out count, as the confusion counts' rows do
    soft, conf = np.asarray(m["heldout"]["soft_confusion"]), np.asarray(m["heldout"]["confusion"])
    np.testing.assert_allclose(soft.sum(axis=1), conf.sum(axis=1), atol=1e-3)
    assert (np.diag(soft) / soft.sum(axis=1)).min() > 0.3
    # the same sums cut by ASR-confidence stratum (the stratified rate estimator's)
    strata = m["heldout"]["soft_confusion_strata"]
    mats = np.asarray(strata["soft_confusion"])
    assert strata["field"] == "asr.confidence" and strata["edges"] == sorted(strata["edges"])
    assert mats.shape == (len(strata["edges"]) + 2, len(CLASSES), len(CLASSES))
    np.testing.assert_allclose(mats.sum(axis=0), soft, atol=1e-3)
    assert set(m["baselines"]["heldout"]) == {"rules", "no_context"}
    assert set(m["baselines"]["rules"]["thresholds"]) >= {"wake", "asr", "nlu", "er"}
    assert "pickle" not in (trained.path / MODEL_FILE).read_text()[:200]


def test_model_learns_the_fixture(trained: TrainResult) -> None:
    assert trained.heldout["macro_f1"] > 0.9


def test_training_is_byte_identical(fitted: tuple[ModelBundle, Path], trained: TrainResult,
                                    tmp_path: Path) -> None:
    # fit in memory writes nothing; saving it gives the bytes train wrote. The session
    # model fitted one at a time (jobs=1); here its three search candidates, then its
    # other folds and the no-context model run two at a time (fpi.model.parallel): the
    # same bytes whatever jobs is
    bundle, cwd = fitted
    assert bundle.path is None and list(cwd.iterdir()) == []
    assert bundle.model_id == trained.bundle.model_id
    saved = save(bundle, tmp_path / "again")
    assert saved.path == tmp_path / "again" and saved.booster is bundle.booster
    for name in (MODEL_FILE, NO_CONTEXT_FILE, LEARNED_FILE, MANIFEST_FILE):
        assert (saved.path / name).read_bytes() == (trained.path / name).read_bytes(), name


@pytest.mark.slow
def test_the_lean_import_hides_lightgbms_wrappers_until_asked_for() -> None:
    code = ("import sys\n"
            "from fpi.lightgbm_import import import_lean, with_wrappers\n"
            "lgb = import_lean(); import fpi.model\n"
            "print(*(m in sys.modules for m in ('sklearn', 'pandas')))\n"
            "import sklearn, pandas  # hidden only while LightGBM was imported\n"
            "print(lgb.compat.SKLEARN_INSTALLED, lgb.compat.PANDAS_INSTALLED)\n"
            "with_wrappers(); with_wrappers()\n"
            "from lightgbm.dask import DaskLGBMClassifier\n"
            "from sklearn.base import BaseEstimator\n"
            "print(lgb.compat.SKLEARN_INSTALLED, lgb.compat.PANDAS_INSTALLED,\n"
            "      issubclass(DaskLGBMClassifier, BaseEstimator))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split("\n")[:3] == ["False False", "False False", "True True True"]


@pytest.mark.slow
def test_lightgbm_is_imported_lean_on_first_use_only() -> None:
    """What the executable installs: no LightGBM until a module needs it, then lean; and
    pyarrow converting Python objects without importing pandas. Training does not import
    its judge (fpi.evaluate), nor does the CLI, ingest or simulate."""
    code = ("import sys\n"
            "from fpi.lightgbm_import import lean_on_first_import\n"
            "lean_on_first_import(); lean_on_first_import()\n"
            "import fpi.cli, fpi.ingest, fpi.simulate\n"
            "print('lightgbm' in sys.modules, 'fpi.evaluate' in sys.modules)\n"
            "import fpi.model, lightgbm\n"
            "print(*(m in sys.modules for m in ('lightgbm', 'sklearn', 'pandas',\n"
            "                                   'numpy.testing', 'numpy.f2py',\n"
            "                                   'fpi.evaluate')))\n"
            "import pyarrow as pa; pa.array([1]); pa.table({'a': [1]})\n"
            "print(type(lightgbm.__loader__).__name__, 'LeanFinder' in str(sys.meta_path),\n"
            "      'pandas' in sys.modules)\n"
            "import pandas  # hidden only while LightGBM was imported (and sklearn is not\n"
            "# in sys.modules, printed above: not left hidden either)\n"
            "print(pa.table({'a': [2]}).to_pandas()['a'].tolist())  # pandas when asked\n"
            "import numpy  # its tools were hidden only while LightGBM was imported\n"
            "print('testing' in dir(numpy), numpy.f2py.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split("\n")[:5] == ["False False", "True False False False False False",
                                          "SourceFileLoader False False", "[2]",
                                          "True numpy.f2py"]


def test_the_fpi_executable_imports_lightgbm_lean(monkeypatch: pytest.MonkeyPatch) -> None:
    import fpi.cli

    calls: list[str] = []
    monkeypatch.setattr(fpi.cli, "lean_on_first_import", lambda: calls.append("lean"))
    monkeypatch.setattr(sys, "argv", ["fpi", "--version"])
    with pytest.raises(SystemExit) as done:
        fpi.cli.main()
    assert done.value.code in (0, None) and calls == ["lean"]


def test_counts_add_up(trained: TrainResult, turns: pl.DataFrame) -> None:
    # cross-fitting: every labelled turn trains the shipped model and is scored out of fold
    counts = trained.manifest["training"]["counts"]
    assert counts["train"]["turns"] == counts["test"]["turns"] == turns.height
    assert counts["train"]["sessions"] == turns["session_id"].n_unique()
    assert trained.manifest["training"]["heldout_is"] == "out-of-fold"


def test_round_trip_same_predictions(trained: TrainResult, turns: pl.DataFrame,
                                     fitted: tuple[ModelBundle, Path], tmp_path: Path) -> None:
    """A bundle fitted in memory predicts exactly the same once saved and loaded from
    another directory (the session's model, ``trained``, is itself a loaded copy)."""
    feats = build_features(turns)
    bundle, _ = fitted
    save(bundle, tmp_path / "model")
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "model", moved)
    loaded = load_bundle(moved)
    p = loaded.predict_proba(feats)
    assert p.shape == (turns.height, len(CLASSES))
    np.testing.assert_array_equal(p, bundle.predict_proba(feats))
    assert loaded.features == bundle.features == trained.bundle.features
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert loaded.features[:len(FEATURES)] == FEATURES
    assert loaded.learned is not None and loaded.learned.text.keys() == {
        "text_asr", "text_response", "text_next"}
    assert loaded.predict(feats).dtype == pl.String
    nc = loaded.predict_proba_no_context(feats)
    assert nc.shape == p.shape and loaded.no_context_features == context_free(loaded.features)
    np.testing.assert_array_equal(nc, bundle.predict_proba_no_context(feats))


def test_contributions_sum_to_the_margin(trained: TrainResult, turns: pl.DataFrame) -> None:
    feats = build_features(turns.head(20))
    c = trained.bundle.contributions(feats)
    assert c.shape == (20, len(CLASSES), len(trained.bundle.features) + 1)
    np.testing.assert_allclose(c.sum(axis=2), trained.bundle.raw_margin(feats), atol=1e-9)


def test_contributions_toward_given_classes_are_the_same_values(
        trained: TrainResult, turns: pl.DataFrame) -> None:
    # each row's class from that class's trees alone: LightGBM's own values, bit for bit
    feats = build_features(turns.head(60))
    full = trained.bundle.contributions(feats)
    classes = np.arange(60) % len(CLASSES)
    part = load_bundle(trained.path).contributions(feats, classes)
    rows = np.arange(60)
    assert np.array_equal(part[rows, classes], full[rows, classes])
    # the classes side by side on threads: the same values
    assert np.array_equal(trained.bundle.contributions(feats, classes, threads=3), part)
    others = np.ones(full.shape[:2], bool)
    others[rows, classes] = False
    assert not part[others].any() and full[others].any()


def test_calibrated_rates_track_the_truth(trained: TrainResult, turns: pl.DataFrame) -> None:
    p = trained.bundle.predict_proba(build_features(turns))
    truth = turns["label"].struct.field("failure_point").value_counts(normalize=True)
    rates = dict(zip(truth["failure_point"], truth["proportion"], strict=True))
    for i, c in enumerate(CLASSES):
        assert abs(p[:, i].mean() - rates[c]) < 0.05, c


def test_unseen_category_is_missing_not_a_crash(trained: TrainResult,
                                                turns: pl.DataFrame) -> None:
    feats = build_features(turns.head(5)).with_columns(
        nlu_domain=pl.lit("never_seen_domain"), device_type=pl.lit(None, dtype=pl.String))
    assert np.isfinite(trained.bundle.predict_proba(feats)).all()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_no_labels_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"none of the .* turns has a label"):
        train(make_turns(10, labels=False), tmp_path / "m", **FAST)


def test_too_few_of_a_class_names_it(turns: pl.DataFrame, tmp_path: Path) -> None:
    rare = turns.filter(pl.col("label").struct.field("failure_point") == "result").head(3)
    rest = turns.filter(pl.col("label").struct.field("failure_point") != "result")
    with pytest.raises(InputError, match=r"'result' has 3"):
        train(pl.concat([rest, rare]).sort("session_id", "turn_index"), tmp_path / "m", **FAST)


def test_too_few_sessions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="session"):
        train(make_turns(3), tmp_path / "m", min_class_count=0, **FAST)


def test_refuses_to_clobber_a_non_bundle_dir(turns: pl.DataFrame, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="not an fpi model output"):
        train(turns, target, **FAST)
    assert (target / "thesis.tex").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]  # no temp dir left behind


def test_retrain_replaces_a_bundle(turns: pl.DataFrame, trained: TrainResult,
                                   tmp_path: Path) -> None:
    target = tmp_path / "m"
    shutil.copytree(trained.path, target)
    # the smallest training that writes a bundle: the test is of the directory
    train(turns.head(300), target, seed=1, num_boost_round=3, folds=2, search=False,
          no_context=False)
    assert json.loads((target / MANIFEST_FILE).read_text())["training"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _write_manifest(target: Path, m: dict) -> None:
    """Rewrite a manifest *consistently* (its bundle_hash recomputed), as a new fpi would."""
    m["bundle_hash"] = bundle_hash(m)
    (target / MANIFEST_FILE).write_text(json.dumps(m))


def _copy(trained: TrainResult, tmp_path: Path) -> Path:
    target = tmp_path / "m"
    shutil.copytree(trained.path, target)
    return target


def test_missing_bundle_and_files(trained: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model bundle"):
        load_bundle(tmp_path / "nope")
    target = _copy(trained, tmp_path)
    (target / MODEL_FILE).unlink()
    with pytest.raises(ModelError, match=r"model.txt is missing"):
        load_bundle(target)
    (target / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match=r"manifest.json is missing"):
        load_bundle(target)


def test_other_major_version(trained: TrainResult, tmp_path: Path) -> None:
    target = _copy(trained, tmp_path)
    m = json.loads((target / MANIFEST_FILE).read_text())
    m["format_version"] = "3.0"
    _write_manifest(target, m)
    with pytest.raises(ModelError, match=r"format 3.0.*retrain"):
        load_bundle(target)


def test_damaged_bundle(trained: TrainResult, tmp_path: Path) -> None:
    target = _copy(trained, tmp_path)
    text = (target / MODEL_FILE).read_text()
    (target / MODEL_FILE).write_text(text.replace("Tree=1", "Tree=x", 1))
    with pytest.raises(ModelError, match="damaged"):
        load_bundle(target)
    (target / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        load_bundle(target)


def test_bundle_features_not_matching_the_data(trained: TrainResult, turns: pl.DataFrame,
                                               tmp_path: Path) -> None:
    target = _copy(trained, tmp_path)
    m = json.loads((target / MANIFEST_FILE).read_text())
    m["features"][0]["name"] = "feature_from_the_future"
    _write_manifest(target, m)
    bundle = load_bundle(target)
    with pytest.raises(SchemaError, match="feature_from_the_future"):
        bundle.check_compatible(turns)
    with pytest.raises(SchemaError, match="feature_from_the_future"):
        bundle.predict_proba(build_features(turns.head(3)))
    with pytest.raises(SchemaError, match="lacks column"):
        trained.bundle.check_compatible(turns.drop("nlu"))


def test_the_rules_fit_scores_every_value_as_macro_f1_of_the_rule() -> None:
    """fit_rule_baseline scores all values of one threshold at once; each is the macro-F1
    of the rule with that value (the same float), also with a class absent."""
    from fpi.metrics import macro_f1_score
    from fpi.model.baselines import _OPTIONS, _RESULT_BAD_SETS, _rule, _Scorer

    rng = np.random.default_rng(1)
    n = 400
    cols = {c: np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
            for c in ("wake_min_score", "asr_confidence", "nlu_confidence", "er_score_min")}
    cols |= {"wake_detected": rng.integers(0, 2, n).astype(float),
             "er_n_unresolved": rng.integers(0, 2, n).astype(float),
             "er_n_ambiguous": rng.integers(0, 2, n).astype(float),
             "result_status": rng.choice(["ok", "error", "no_action", "clarification", ""], n)}
    for y in (rng.integers(0, len(CLASSES), n), rng.integers(0, 3, n)):
        scorer = _Scorer(cols, y, len(CLASSES))
        for name in _OPTIONS:
            p = {**{s: float(rng.choice(_OPTIONS[s])) for s in ("wake", "asr", "nlu", "er")},
                 "er_status": bool(rng.integers(2)), "result_bad": _RESULT_BAD_SETS[1]}
            for value, got in zip(_OPTIONS[name], scorer.scores(p, name), strict=True):
                q = {**p, name: value}
                bad = np.isin(cols["result_status"], np.asarray(q["result_bad"], dtype=object))
                pred = _rule(cols, q["wake"], q["asr"], q["nlu"], q["er"], q["er_status"], bad)
                assert got == macro_f1_score(y, pred, len(CLASSES)), (name, value)
