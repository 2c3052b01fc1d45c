"""LightGBM as fpi uses it: its core (``Booster``, ``Dataset``, ``train``), loaded lean.

Every fpi module takes LightGBM from here (``from fpi.model.lightgbm_core import lgb``).

- **No scikit-learn or pandas at import.** ``import lightgbm`` imports both when they
  are installed, for its optional scikit-learn estimators and pandas input, which fpi
  does not use (it trains with ``lgb.train`` on NumPy arrays). With ``fpi[dask]`` or
  ``fpi[shap]`` installed they are, and they cost about 2 CPU-s per process (0.5 s
  without): every ``fpi`` command that loads a model paid it. They are hidden while
  LightGBM is imported, so its wrappers see them as absent; afterwards they import
  normally for anyone else.
- **Passive OpenMP waiting.** LightGBM's OpenMP threads busy-wait between parallel
  regions by default; on a shared machine (CI, several jobs on 2 cores) that spinning
  made training about 8 times slower in our measurements. Passive waiting costs nothing
  when the cores are free. It must be set before libgomp loads; a user's own setting
  wins.

:func:`with_wrappers` restores the wrappers where they are needed: ``lightgbm.dask``
(distributed training) is built on the scikit-learn estimators.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Modules LightGBM imports only for its optional wrappers.
_WRAPPER_DEPENDENCIES = ("sklearn", "pandas")


def _import_core() -> ModuleType:
    if "lightgbm" in sys.modules:
        return sys.modules["lightgbm"]
    hidden = [name for name in _WRAPPER_DEPENDENCIES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" fails
    try:
        return importlib.import_module("lightgbm")
    finally:
        for name in hidden:
            if sys.modules.get(name, ModuleType(name)) is None:
                del sys.modules[name]


_import_core()

import lightgbm as lgb  # noqa: E402  (already loaded above, without the wrappers)


def with_wrappers() -> ModuleType:
    """LightGBM with its scikit-learn and pandas wrappers, as ``lightgbm.dask`` needs.

    If the core was loaded without them, ``lightgbm.compat`` and ``lightgbm.sklearn`` (and
    ``lightgbm.dask``, if loaded) are read again now that scikit-learn and pandas can be
    imported. Safe to call more than once, and on Dask workers (``client.run``).
    """
    compat = importlib.import_module("lightgbm.compat")
    if not (compat.SKLEARN_INSTALLED and compat.PANDAS_INSTALLED):
        importlib.reload(compat)
        for name in ("lightgbm.sklearn", "lightgbm.dask"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
    return lgb


__all__ = ["lgb", "with_wrappers"]
