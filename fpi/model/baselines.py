"""Baselines the model must beat: "the first stage that looks bad", with fitted thresholds.

The rule walks the pipeline in order and blames the first stage whose confidence
is below its threshold or whose status looks bad; if none does, the turn is
``correct``. Thresholds are fitted on the training data by coordinate ascent on
a grid, maximising macro-F1. (The other baseline, the same model without context
features, lives in the bundle as a second LightGBM model: see :mod:`fpi.model.training`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import polars as pl

from fpi.errors import ModelError
from fpi.metrics import macro_f1_score
from fpi.schema import CLASSES

#: Result-status sets the rule may call bad (fitted: the one with the best macro-F1).
_RESULT_BAD_SETS: Final[tuple[tuple[str, ...], ...]] = (
    ("error",),
    ("error", "no_action"),
    ("error", "clarification"),
    ("error", "no_action", "clarification"),
)
#: Threshold grid: below the threshold is bad; -1 switches the check off.
_GRID: Final = np.concatenate([[-1.0], np.round(np.arange(0.05, 1.0001, 0.025), 4)])
_STAGES: Final = ("wake", "asr", "nlu", "er")


@dataclass(frozen=True)
class RuleBaseline:
    """Thresholds of the first-bad-stage rule.

    ``wake``/``asr``/``nlu``/``er`` are confidence thresholds (a stage is bad below it;
    ER is also bad when an entity is unresolved or ambiguous and ``er_status`` is on);
    ``result_bad`` are the result statuses that count as bad.
    """

    wake: float
    asr: float
    nlu: float
    er: float
    er_status: bool
    result_bad: tuple[str, ...]

    def predict(self, features: pl.DataFrame) -> np.ndarray:
        """Predicted class index per row of a features frame (from fpi.features)."""
        cols = _columns(features)
        return _rule(cols, self.wake, self.asr, self.nlu, self.er, self.er_status,
                     _result_bad(cols, self.result_bad))

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the bundle manifest."""
        return {"wake": self.wake, "asr": self.asr, "nlu": self.nlu, "er": self.er,
                "er_status": self.er_status, "result_bad": list(self.result_bad)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleBaseline:
        """Inverse of :meth:`to_dict`; ``ModelError`` if malformed."""
        try:
            return cls(float(data["wake"]), float(data["asr"]), float(data["nlu"]),
                       float(data["er"]), bool(data["er_status"]),
                       tuple(str(s) for s in data["result_bad"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest has a malformed rule baseline: {exc}") from exc


def _columns(features: pl.DataFrame) -> dict[str, np.ndarray]:
    need = ("wake_detected", "wake_min_score", "asr_confidence", "nlu_confidence",
            "er_score_min", "er_n_unresolved", "er_n_ambiguous", "result_status")
    missing = [c for c in need if c not in features.columns]
    if missing:
        raise ModelError(f"rule baseline needs feature column(s) {', '.join(missing)}")
    num = {c: features[c].cast(pl.Float64).fill_null(np.nan).to_numpy() for c in need[:-1]}
    num["result_status"] = features["result_status"].fill_null("").to_numpy()
    return num


def _result_bad(cols: dict[str, np.ndarray], bad: tuple[str, ...]) -> np.ndarray:
    return np.isin(cols["result_status"], np.asarray(bad, dtype=object))


def _rule(cols: dict[str, np.ndarray], wake: float, asr: float, nlu: float, er: float,
          er_status: bool, result_bad: np.ndarray) -> np.ndarray:
    # NaN (stage absent) compares False: absent is unknown, not bad.
    bad = [
        (cols["wake_detected"] == 0) | (cols["wake_min_score"] < wake),
        cols["asr_confidence"] < asr,
        cols["nlu_confidence"] < nlu,
        (cols["er_score_min"] < er)
        | (er_status & ((cols["er_n_unresolved"] > 0) | (cols["er_n_ambiguous"] > 0))),
        result_bad,
    ]
    pred = np.zeros(len(result_bad), dtype=np.int64)
    undecided = np.ones(len(result_bad), dtype=bool)
    for k, stage_bad in enumerate(bad, start=1):  # class k is stage k-1 (after "correct")
        hit = undecided & stage_bad
        pred[hit] = k
        undecided &= ~hit
    return pred


def fit_rule_baseline(features: pl.DataFrame, y: np.ndarray, *, max_rows: int = 200_000,
                      seed: int = 0, passes: int = 3) -> RuleBaseline:
    """Fit the rule's thresholds on training data by coordinate ascent on macro-F1.

    Parameters
    ----------
    features
        Features frame of the training turns.
    y
        True class indices, in :data:`fpi.schema.CLASSES` order.
    max_rows
        Fit on a seeded sample of at most this many rows (the rule has 6 parameters).
    """
    if features.height > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(features.height, max_rows,
                                                         replace=False))
        features, y = features[idx], y[idx]
    cols = _columns(features)
    k = len(CLASSES)
    params: dict[str, Any] = {s: -1.0 for s in _STAGES}
    params.update(er_status=True, result_bad=_RESULT_BAD_SETS[0])
    rb_cache = {s: _result_bad(cols, s) for s in _RESULT_BAD_SETS}

    def score(p: dict[str, Any]) -> float:
        pred = _rule(cols, p["wake"], p["asr"], p["nlu"], p["er"], p["er_status"],
                     rb_cache[p["result_bad"]])
        return macro_f1_score(y, pred, k)

    best = score(params)
    for _ in range(passes):
        improved = False
        for name in (*_STAGES, "er_status", "result_bad"):
            options: tuple[Any, ...]
            if name in _STAGES:
                options = tuple(float(v) for v in _GRID)
            elif name == "er_status":
                options = (False, True)
            else:
                options = _RESULT_BAD_SETS
            for value in options:
                trial = {**params, name: value}
                s = score(trial)
                if s > best + 1e-12:
                    best, params, improved = s, trial, True
        if not improved:
            break
    return RuleBaseline(params["wake"], params["asr"], params["nlu"], params["er"],
                        params["er_status"], tuple(params["result_bad"]))
