"""fpi: failure-point identification for voice-assistant pipelines.

Everything the ``fpi`` command does is callable from Python::

    from fpi import read_traces, simulate, train, evaluate, diagnose

The heavy modules are imported lazily, so ``import fpi`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "read_traces": "fpi.ingest",
    "IngestReport": "fpi.ingest",
    "simulate": "fpi.simulation",
    "train": "fpi.model",
    "load_bundle": "fpi.model",
    "ModelBundle": "fpi.model",
    "evaluate": "fpi.evaluation",
    "diagnose": "fpi.diagnose.run",
    "explain": "fpi.diagnose.explanation",
    "build_trend": "fpi.trend",
    "write_trend": "fpi.report.trend",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fpi' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
