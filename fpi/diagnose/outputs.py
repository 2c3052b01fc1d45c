"""What a diagnose run writes besides the reports: the gates' JUnit place, predictions."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fpi.errors import InputError
from fpi.files import MARKER
from fpi.gates import Gate, load_gates, parse_gate

#: Names a diagnose output directory of an older fpi (before the marker) may hold.
_LEGACY_NAMES = frozenset({"predictions.parquet", "summary.json", "report.md", "report.html",
                           "rejects.jsonl"})


def is_legacy_output(path: Path) -> bool:
    """A diagnose output written before markers: an fpi summary.json and only our files."""
    try:
        doc = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or "rates" not in doc or "schema_version" not in doc:
        return False
    return all(p.name in _LEGACY_NAMES or p.name.endswith(".xml")
               or p.name.startswith(".fpi-diagnose-") for p in path.iterdir())


def path_inside(junit: str | os.PathLike[str] | None, out: Path) -> Path | None:
    """``junit`` relative to ``out`` when it lies inside it (then it joins the set)."""
    if junit is None:
        return None
    j = Path(os.path.abspath(junit))
    try:
        rel = j.relative_to(out)
    except ValueError:
        return None
    if rel == Path(".") or rel.name == MARKER:
        raise InputError(f"--junit {junit}: names the output directory itself")
    return rel


def parse_gates(gates: Sequence[str | Gate], gates_file: str | os.PathLike[str] | None
                 ) -> list[Gate]:
    out = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    if gates_file is not None:
        out += load_gates(gates_file)
    return out

