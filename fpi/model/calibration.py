"""Probability calibration: temperature plus per-class bias on the model's raw margins.

The model is trained with class weights (so rare failure classes are learnt), which
inflates their predicted probabilities. A temperature and one bias per class,
fitted by maximum likelihood on held-out sessions, undo that shift, so that
averaged probabilities estimate per-class rates. The fit is a small convex-ish
problem solved deterministically with L-BFGS; parameters are stored as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fpi.errors import ModelError


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a 2-D array."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """``softmax(raw / temperature + bias)``; the identity when temperature=1, bias=0."""

    temperature: float
    bias: tuple[float, ...]

    @classmethod
    def identity(cls, n_classes: int) -> Calibration:
        """No-op calibration."""
        return cls(1.0, (0.0,) * n_classes)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from raw margins ``(n, n_classes)``."""
        if raw.shape[1] != len(self.bias):
            raise ModelError(
                f"calibration has {len(self.bias)} classes but the model gives {raw.shape[1]}"
            )
        return softmax(raw / self.temperature + np.asarray(self.bias))

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the bundle manifest."""
        return {"method": "temperature_bias", "temperature": self.temperature,
                "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; ``ModelError`` if malformed."""
        try:
            if data["method"] != "temperature_bias":
                raise ValueError(f"unknown method {data['method']!r}")
            t = float(data["temperature"])
            bias = tuple(float(b) for b in data["bias"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest has a malformed calibration block: {exc}") from exc
        if not t > 0:
            raise ModelError("model manifest calibration temperature must be > 0")
        return cls(t, bias)


def fit_calibration(raw: np.ndarray, y: np.ndarray, *, l2: float = 1e-3,
                    weight: np.ndarray | None = None) -> Calibration:
    """Fit temperature and per-class bias by minimising the log loss on held-out data.

    Parameters
    ----------
    raw
        Raw margins ``(n, n_classes)`` on calibration data the model was not fitted on.
    y
        True class indices ``(n,)``.
    l2
        Small ridge on the biases, so a class absent from ``y`` gets a finite bias.
    weight
        Optional per-row weights (the turns' training weights): the log loss is their
        weighted mean. ``None`` is every row alike.
    """
    n, k = raw.shape
    if n == 0 or (weight is not None and not weight.sum() > 0):
        return Calibration.identity(k)
    raw = raw.astype(np.float64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    # per-row share of the loss: 1/n each, or the normalised weights
    share = None if weight is None else (weight / weight.sum())[:, None]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_t, bias = params[0], params[1:]
        inv_t = np.exp(-log_t)
        z = raw * inv_t + bias
        zmax = z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)) + zmax
        p = np.exp(z - lse)
        if share is None:
            nll = float(-(onehot * (z - lse)).sum() / n + l2 * (bias @ bias))
            g = (p - onehot) / n
        else:
            nll = float(-(share * onehot * (z - lse)).sum() + l2 * (bias @ bias))
            g = (p - onehot) * share
        g_bias = g.sum(axis=0) + 2 * l2 * bias
        g_log_t = float(-(g * raw * inv_t).sum())
        return nll, np.concatenate([[g_log_t], g_bias])

    from scipy.optimize import minimize  # training only: keeps scoring's import light

    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B",
                   bounds=[(-3.0, 3.0)] + [(-20.0, 20.0)] * k)
    log_t, bias = res.x[0], res.x[1:]
    bias = bias - bias.mean()  # softmax is shift invariant: store a canonical form
    return Calibration(_settle(float(np.exp(log_t))), tuple(_settle(float(b)) for b in bias))


def _settle(x: float) -> float:
    """``x`` to 10 significant digits.

    The optimiser stops at a gradient tolerance far coarser than this, so nothing of
    the fit is lost; what goes is the last-bit noise of NumPy's SIMD reductions, whose
    results depend on array alignment and differ from run to run on one machine. The
    manifest and every probability are then the same on every run.
    """
    return float(f"{x:.10g}")
