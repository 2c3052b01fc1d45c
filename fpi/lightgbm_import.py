"""How LightGBM is loaded: its OpenMP setting, and a lean import for the ``fpi`` command.

Nothing heavy is imported here, so the ``fpi`` executable can call :func:`import_lean`
before any module that uses LightGBM.

- **Passive OpenMP waiting** (:func:`set_openmp_wait`; :mod:`fpi.model` sets it too).
  LightGBM's OpenMP threads busy-wait between parallel regions by default; on a shared
  machine (CI, several jobs on 2 cores) that spinning made training about 8 times
  slower in our measurements. Passive waiting costs nothing when the cores are free.
  It must be set before libgomp loads; a user's own setting wins.
- **The lean import** (:func:`import_lean`, called by the ``fpi`` executable only).
  ``import lightgbm`` imports scikit-learn and pandas when they are installed, for its
  optional scikit-learn estimators and pandas input, which fpi does not use (it trains
  with ``lgb.train`` on NumPy arrays). With ``fpi[dask]`` or ``fpi[shap]`` installed
  they are, and they cost about 2 CPU-s per process (0.5 s without): every ``fpi``
  command that loads a model paid it. The command hides them while LightGBM is
  imported, so LightGBM sees them as absent; they import normally afterwards. A
  program that imports :mod:`fpi` as a library gets LightGBM as usual.
- **Only when needed** (:func:`lean_on_first_import`, what the ``fpi`` executable
  calls): LightGBM itself costs about 0.5 CPU-s to import, which commands that load no
  model (``fpi ingest``, ``fpi simulate``, usage errors, ``--help``) need not pay. The
  executable installs an import hook that makes the first ``import lightgbm`` lean,
  wherever it happens, and then removes itself.
- **pyarrow without pandas** (the same hook, on the first ``import pyarrow``): pyarrow
  imports pandas, when installed, the first time it converts Python objects, only to
  ask whether they are pandas objects; every ``fpi ingest``, ``diagnose`` and ``train``
  paid about 1 CPU-s for it. The hook asks that question once with pandas hidden.
- **Without NumPy's test and Fortran tools** (also while LightGBM is imported): LightGBM
  imports SciPy's sparse matrices, whose array-API layer copies every public name of
  NumPy, so NumPy imports ``numpy.testing`` and ``numpy.f2py`` (unittest, argparse...)
  for it: about 0.13 CPU-s of every command that loads a model. They are left out of
  that copy (SciPy reads them only from CuPy and PyTorch namespaces); ``import
  numpy.testing`` works as usual afterwards.
- :func:`with_wrappers` restores the scikit-learn wrappers where they are needed:
  ``lightgbm.dask`` (distributed training) is built on them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

#: Modules LightGBM imports only for its optional wrappers.
_WRAPPER_DEPENDENCIES = ("sklearn", "pandas")


def set_openmp_wait() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (before LightGBM loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def _wrappers_hidden() -> Iterator[None]:
    """scikit-learn and pandas look absent inside (unless already imported), and NumPy
    without its lazily imported test and Fortran tools (:func:`_numpy_tools_hidden`)."""
    hidden = [name for name in _WRAPPER_DEPENDENCIES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" fails
    try:
        with _numpy_tools_hidden():
            yield
    finally:
        for name in hidden:
            if sys.modules.get(name, ModuleType(name)) is None:
                del sys.modules[name]


#: NumPy submodules imported on first attribute access that SciPy's copy of NumPy's
#: names (``scipy._lib.array_api_compat.numpy``) would import for nothing.
_NUMPY_TOOLS = ("testing", "f2py")


@contextlib.contextmanager
def _numpy_tools_hidden() -> Iterator[None]:
    """``numpy.testing`` and ``numpy.f2py`` (unless imported) are not NumPy attributes
    inside: not in ``numpy.__all__``, ``dir(numpy)`` or its ``__getattr__``."""
    import numpy

    hidden = {name for name in _NUMPY_TOOLS if f"numpy.{name}" not in sys.modules}
    saved: dict[str, Any] = {key: numpy.__dict__[key] for key in ("__all__", "__dir__",
                                                                  "__getattr__")
                             if key in numpy.__dict__}
    if not hidden or len(saved) < 3:  # already there, or another NumPy: nothing to hide
        yield
        return
    real_dir, real_getattr = saved["__dir__"], saved["__getattr__"]

    def getattr_(name: str) -> object:
        if name in hidden:
            raise AttributeError(f"module 'numpy' has no attribute {name!r}")
        return real_getattr(name)

    numpy.__dict__.update(__all__=[n for n in saved["__all__"] if n not in hidden],
                          __dir__=lambda: [n for n in real_dir() if n not in hidden],
                          __getattr__=getattr_)
    try:
        yield
    finally:
        numpy.__dict__.update(saved)


def import_lean() -> ModuleType:
    """Import LightGBM with scikit-learn and pandas hidden (no-op if already imported)."""
    set_openmp_wait()
    if "lightgbm" in sys.modules:
        return sys.modules["lightgbm"]
    with _wrappers_hidden():
        return importlib.import_module("lightgbm")


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``import name`` fail for the given top-level modules (not yet imported).

    Not :func:`_wrappers_hidden`'s ``None`` in ``sys.modules``: pyarrow reads
    ``sys.modules["pandas"]`` itself and fails on a ``None`` there."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _pyarrow_without_pandas(pyarrow: ModuleType) -> None:
    """pyarrow imports pandas (about 1 CPU-s), when installed, the first time it converts
    Python objects (``pa.array([...])``), only to ask whether they are pandas objects: ask
    once with pandas hidden, and pyarrow remembers the answer (``to_pandas`` and
    ``from_pandas`` still import pandas themselves)."""
    if "pandas" in sys.modules:
        return
    hidden = _Hidden(("pandas",))
    sys.meta_path.insert(0, hidden)
    try:
        pyarrow.array([0])
    finally:
        sys.meta_path.remove(hidden)


class _LeanLoader(importlib.abc.Loader):
    """A module's own loader, run with LightGBM's wrappers' dependencies hidden
    (``lightgbm``) or followed by pyarrow's pandas question (``pyarrow``)."""

    def __init__(self, loader: importlib.abc.Loader, finder: _LeanFinder) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # the module keeps the real loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.finder.done(module.__name__)
        if module.__name__ == "lightgbm":
            with _wrappers_hidden():
                self.loader.exec_module(module)
        else:
            self.loader.exec_module(module)
            _pyarrow_without_pandas(module)


class _LeanFinder(importlib.abc.MetaPathFinder):
    """Finds ``lightgbm`` and ``pyarrow`` with the other finders and hands back their
    specs with a lean loader (also to a mere ``find_spec``, as Polars asks, which
    loads nothing); removes itself once both were loaded."""

    def __init__(self) -> None:
        self.pending = {"lightgbm", "pyarrow"} - set(sys.modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)  # not asked again while the other finders look
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.pending.add(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LeanLoader(spec.loader, self)
        return spec

    def done(self, name: str) -> None:
        """``name`` is being loaded: no longer this finder's business."""
        self.pending.discard(name)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def lean_on_first_import() -> None:
    """Make the first ``import lightgbm`` of this process lean (:func:`import_lean`) and
    the first ``import pyarrow`` not pull in pandas, whenever they come: a process that
    never needs LightGBM never imports it."""
    set_openmp_wait()
    if any(isinstance(f, _LeanFinder) for f in sys.meta_path):
        return
    finder = _LeanFinder()
    if finder.pending:
        sys.meta_path.insert(0, finder)


def with_wrappers() -> ModuleType:
    """LightGBM with its scikit-learn and pandas wrappers, as ``lightgbm.dask`` needs.

    If the lean import left them out, ``lightgbm.compat`` and ``lightgbm.sklearn`` (and
    ``lightgbm.dask``, if loaded) are read again now that scikit-learn and pandas can be
    imported. Safe to call more than once, and on Dask workers (``client.run``).
    """
    lgb = importlib.import_module("lightgbm")
    compat = importlib.import_module("lightgbm.compat")
    if not (compat.SKLEARN_INSTALLED and compat.PANDAS_INSTALLED):
        importlib.reload(compat)
        for name in ("lightgbm.sklearn", "lightgbm.dask"):
            if name in sys.modules:
                importlib.reload(sys.modules[name])
    return lgb


__all__ = ["import_lean", "lean_on_first_import", "set_openmp_wait", "with_wrappers"]
