"""The options of one diagnose run, as one frozen record."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fpi.gates import Gate
from fpi.progress import Progress

#: Turns per batch (whole sessions are kept together, so batches run a little over).
BATCH_TURNS = 100_000

#: Default size of the attribution sample: about 5-15 s of exact TreeSHAP on 2 cores.
DEFAULT_ATTRIBUTION_SAMPLE = 1200


@dataclass(frozen=True)
class DiagnoseOptions:
    """Everything :func:`fpi.diagnose.diagnose` takes besides the inputs, model and output.

    See :func:`fpi.diagnose.diagnose` for each field's meaning; the defaults are the
    command's.
    """

    baseline: str | os.PathLike[str] | Mapping[str, Any] | None = None
    gates: Sequence[str | Gate] = ()
    gates_file: str | os.PathLike[str] | None = None
    junit: str | os.PathLike[str] | None = None
    attribution: str = "sample"
    attribution_sample: int = DEFAULT_ATTRIBUTION_SAMPLE
    attribution_budget: float | None = None
    redact: bool = False
    redact_salt: str | None = None
    examples: int = 3
    confidence: float = 0.95
    n_boot: int = 200
    min_support: int = 50
    seed: int = 0
    allow_other_model: bool = False
    batch_turns: int = BATCH_TURNS
    format: str | None = None
    progress: Progress | None = None
    allow_truncated: bool = False

    def note(self, step: str, n: int, total: int | None = None) -> None:
        """Report progress of ``step`` (``n`` of ``total``), if anyone listens."""
        if self.progress is not None:
            self.progress(step, n, total)
