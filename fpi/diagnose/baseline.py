"""The baseline night a run compares with: loading, checking, and the comparison."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fpi.diagnose import drift as traffic_drift
from fpi.diagnose import slices_compare
from fpi.errors import InputError
from fpi.report import SUMMARY_SCHEMA_VERSION
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model import ModelBundle


def load_baseline(baseline: str | os.PathLike[str] | Mapping[str, Any] | None
                   ) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        return _check_baseline(dict(baseline), "baseline")
    p = Path(baseline)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: baseline summary not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: baseline is a directory; give its summary.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{p}: baseline is not a summary.json ({exc})") from None
    return _check_baseline(doc, str(p))


def _is_rate(r: Any) -> bool:
    return isinstance(r, Mapping) and all(
        isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)
        and np.isfinite(r[k]) for k in ("estimate", "low", "high"))


def _check_baseline(doc: Any, where: str) -> dict[str, Any]:
    """The baseline summary, if it has the shape this fpi compares with; else InputError."""
    if not isinstance(doc, dict) or "rates" not in doc or "schema_version" not in doc:
        raise InputError(f"{where}: baseline is not an fpi summary.json (no rates/schema_version)")
    if doc["schema_version"] != SUMMARY_SCHEMA_VERSION:
        raise InputError(f"{where}: baseline summary schema {doc['schema_version']!r} is not "
                         f"{SUMMARY_SCHEMA_VERSION}: re-run fpi diagnose on the baseline night")
    rates = doc["rates"]
    if not isinstance(rates, Mapping):
        raise InputError(f"{where}: baseline 'rates' is not an object of per-class rates")
    bad = [c for c in CLASSES if not _is_rate(rates.get(c))]
    if bad:
        raise InputError(f"{where}: baseline rates of {', '.join(bad)} are missing or not "
                         "numbers (estimate, low, high)")
    model = doc.get("model")
    if model is not None and not isinstance(model, Mapping):
        raise InputError(f"{where}: baseline 'model' is not an object")
    return doc


def bundle_id(bundle: ModelBundle) -> str:
    """A bundle's model id: its ``bundle_hash`` (the hash of its whole manifest)."""
    from fpi.model.manifest import bundle_hash

    m = bundle.manifest
    return str(m.get("bundle_hash") or bundle_hash(m))


def _short(model_id: Any) -> str:
    return str(model_id).removeprefix("sha256:")[:12] if model_id else "unknown"


def baseline_model(base: Mapping[str, Any] | None, bundle: ModelBundle, allow_other_model: bool,
                    where: Any) -> dict[str, Any]:
    """``model_id``/``same_model`` of the baseline; InputError if another model made it."""
    if base is None:
        return {}
    theirs = (base.get("model") or {}).get("id")
    ours = bundle_id(bundle)
    same = theirs == ours
    if not same and not allow_other_model:
        src = where if isinstance(where, str | os.PathLike) else "baseline"
        raise InputError(
            f"{src}: the baseline was made with model {_short(theirs)}, this run uses "
            f"{_short(ours)}: rates of different models are not comparable; diagnose the "
            "baseline night with this model, or pass --allow-other-model")
    return {"model_id": theirs, "same_model": same}


def against_baseline(summary: Mapping[str, Any], base: Mapping[str, Any],
                     same_turns: list[list[dict[str, str]]], confidence: float
                     ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Slices against the same slices of the baseline night (``slices.vs_baseline``),
    and traffic drift (``drift``)."""
    vs_baseline = slices_compare.compare_slices(
        summary, base, groups=same_turns, confidence=confidence,
        alpha=summary["slices"]["alpha"])
    return vs_baseline, traffic_drift.drift_doc(summary, base)

