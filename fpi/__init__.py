"""fpi: failure-point identification for voice-assistant pipelines.

Everything the ``fpi`` command does is callable from Python::

    from fpi import read_traces, simulate, train, evaluate, diagnose

The heavy modules are imported lazily, so ``import fpi`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

__version__ = "0.1.0"

# NumPy's OpenBLAS starts a thread per core as NumPy loads, and each of them spins for
# 2**28 cycles (about 0.1 s) after it starts and after every BLAS call before it
# sleeps: 0.12 CPU-s of spinning in every process that imports NumPy, for BLAS work fpi
# hardly does. At the shortest timeout the threads sleep at once and wake for the next
# call. Set before anything loads NumPy (every fpi module is imported through this
# package); a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "read_traces": "fpi.ingest",
    "IngestReport": "fpi.ingest",
    "simulate": "fpi.simulate",
    "train": "fpi.model",
    "load_bundle": "fpi.model",
    "ModelBundle": "fpi.model",
    "evaluate": "fpi.evaluate",
    "diagnose": "fpi.diagnose.run",
    "explain": "fpi.diagnose.explanation",
    "build_trend": "fpi.trend",
    "write_trend": "fpi.report.trend",
}

__all__ = ["__version__", *_LAZY]


class _Package(types.ModuleType):
    """The ``fpi`` package, whose public names outrank its submodules.

    Importing a submodule binds it on its package: ``fpi/evaluate.py`` would replace
    the public function ``fpi.evaluate`` once imported. Such a binding is refused
    (the submodule stays importable by its full name); the name keeps resolving
    through :func:`__getattr__`.
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

