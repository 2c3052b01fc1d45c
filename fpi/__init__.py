"""fpi: failure-point identification for voice-assistant pipelines.

Everything the ``fpi`` command does is callable from Python::

    from fpi import read_traces, simulate, train, evaluate, diagnose

The heavy modules are imported lazily, so ``import fpi`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "read_traces": "fpi.ingest",
    "IngestReport": "fpi.ingest",
    "simulate": "fpi.simulate",
    "train": "fpi.model",
    "load_bundle": "fpi.model",
    "ModelBundle": "fpi.model",
    "evaluate": "fpi.evaluation",
    "diagnose": "fpi.diagnosis",
    "explain": "fpi.diagnosis",
    "build_trend": "fpi.trend",
    "write_trend": "fpi.report.trend",
}

__all__ = ["__version__", *_LAZY]


class _Package(types.ModuleType):
    """The ``fpi`` module, whose public functions win over same-named subpackages.

    Importing a subpackage (``fpi.simulate``) binds it on its parent; that would
    replace the public function ``fpi.simulate`` with the package. The import
    system's binding is dropped instead (the subpackage stays in ``sys.modules``,
    so ``from fpi.simulate import engine`` works).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fpi' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
