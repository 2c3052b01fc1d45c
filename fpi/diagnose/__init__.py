"""Diagnose a night of logs (:func:`diagnose`) or one turn (:func:`explain`).

The steps, one module each:

- :mod:`~fpi.diagnose.options` the run's options, one frozen record;
- :mod:`~fpi.diagnose.inputs` the inputs and the model;
- :mod:`~fpi.diagnose.partition` scoring one partition of whole sessions (on any
  engine) and the mergeable statistics the run keeps of it;
- :mod:`~fpi.diagnose.rates` per-class rates with intervals, slices;
- :mod:`~fpi.diagnose.attribution` per-component attribution;
- :mod:`~fpi.diagnose.examples` example turns and focus examples;
- :mod:`~fpi.diagnose.baseline`, :mod:`~fpi.diagnose.slices_compare`,
  :mod:`~fpi.diagnose.drift` the comparison with a baseline night;
- :mod:`~fpi.diagnose.summary` the typed summary (``summary.json``);
- :mod:`~fpi.diagnose.outputs` predictions and the gates' JUnit file;
- :mod:`~fpi.diagnose.run` the run itself; :mod:`~fpi.diagnose.explanation` one turn.

``fpi.diagnose`` (the attribute of ``fpi``) stays the function :func:`diagnose`; import
this package's modules with ``from fpi.diagnose import rates`` or
``from fpi.diagnose.rates import ...`` (not ``import fpi.diagnose.rates as ...``).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first use: importing one step,
# e.g. ``fpi.diagnose.rates``, does not pull in the whole run)
_LAZY: dict[str, str] = {
    "diagnose": "fpi.diagnose.run",
    "DiagnoseResult": "fpi.diagnose.run",
    "DiagnoseOptions": "fpi.diagnose.options",
    "DEFAULT_ATTRIBUTION_SAMPLE": "fpi.diagnose.options",
    "BATCH_TURNS": "fpi.diagnose.options",
    "explain": "fpi.diagnose.explanation",
    "Explanation": "fpi.diagnose.explanation",
    "Summary": "fpi.diagnose.summary",
    "bundle_id": "fpi.diagnose.baseline",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fpi.diagnose' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
