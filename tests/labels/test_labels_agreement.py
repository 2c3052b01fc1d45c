"""Agreement between annotators: kappas against hand-computed values, F1, adjudication."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fpi.errors import InputError
from fpi.labels.agreement import agreement, cohen_kappa, fleiss_kappa
from fpi.schema import CLASSES


def test_cohen_kappa_hand_computed() -> None:
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    assert cohen_kappa(np.array([[20, 5], [10, 15]])) == pytest.approx(0.4)
    assert cohen_kappa(np.array([[5, 0], [0, 0]])) is None  # p_e = 1: undefined
    assert cohen_kappa(np.zeros((2, 2))) is None


def test_fleiss_kappa_hand_computed() -> None:
    # Fleiss (1971) worked example as reproduced in textbooks: 10 subjects, 14 raters,
    # 5 categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210.
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
                      [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
                      [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    # two raters: Fleiss' kappa uses pooled shares (Scott's pi): 4 items, p_o = 0.5,
    # pooled shares 0.5/0.5 -> p_e = 0.5 -> 0
    assert fleiss_kappa(np.array([[2, 0], [0, 2], [1, 1], [1, 1]])) == pytest.approx(0.0)


def _frame(rows: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["session_id", "turn_index", "annotator", "failure_point"],
                        orient="row")


def test_agreement_on_a_small_hand_made_set() -> None:
    rows = [("s", 0, "a", "asr"), ("s", 0, "b", "asr"),
            ("s", 1, "a", "nlu"), ("s", 1, "b", "asr"),
            ("s", 2, "a", "correct"), ("s", 2, "b", "correct"),
            ("s", 3, "a", "correct"), ("s", 3, "b", "correct"),
            ("s", 4, "a", "er")]
    result = agreement(_frame(rows), gold="a")
    (pair,) = result.pairs
    # 4 shared turns, 3 agree; a: asr .25 nlu .25 correct .5; b: asr .5 correct .5
    # p_e = .25*.5 + .5*.5 = .375; kappa = (.75 - .375) / .625 = 0.6
    assert pair["n"] == 4 and pair["cohen_kappa"] == pytest.approx(0.6)
    b = result.per_annotator["b"]
    assert b["n"] == 4 and b["per_class"]["asr"]["f1"] == pytest.approx(2 / 3)
    assert b["per_class"]["correct"]["f1"] == pytest.approx(1.0)
    assert "a" not in result.per_annotator  # the gold is not scored against itself
    confusion = np.array(result.confusion)
    assert (confusion == confusion.T).all() and confusion.sum() == 8
    assert result.disagreements.select("turn_index", "labels", "majority").rows() == [
        (1, "a=nlu; b=asr", None)]


@pytest.mark.slow  # scikit-learn takes a second or more to import
def test_kappa_matches_sklearn() -> None:
    # scikit-learn comes with shap (the fpi[shap] extra, in .[dev]); only a cross-check of
    # our own formula
    from sklearn import metrics

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, 400)
    other = np.where(rng.random(400) < 0.7, truth, rng.integers(0, 6, 400))
    rows = [("s", i, "a", CLASSES[t]) for i, t in enumerate(truth)]
    rows += [("s", i, "b", CLASSES[t]) for i, t in enumerate(other)]
    (pair,) = agreement(_frame(rows)).pairs
    assert pair["cohen_kappa"] == pytest.approx(metrics.cohen_kappa_score(truth, other),
                                                abs=1e-6)


def test_agreement_needs_two_annotators_and_overlap() -> None:
    with pytest.raises(InputError, match="at least two annotators"):
        agreement(_frame([("s", 0, "a", "asr")]))
    with pytest.raises(InputError, match="no turn was labelled by two"):
        agreement(_frame([("s", 0, "a", "asr"), ("s", 1, "b", "asr")]))
    with pytest.raises(InputError, match="gold annotator 'z'"):
        agreement(_frame([("s", 0, "a", "asr"), ("s", 0, "b", "asr")]), gold="z")
