"""The fpi exception hierarchy and exit codes.

The library raises these; the CLI catches them in one place (``fpi.cli``) and
turns each into a one-line ``error: ...`` message and its documented exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    #: A CI gate failed (``fpi diagnose --gate ...``).
    GATE_FAILED = 1
    #: Usage, input, schema or model error: nothing useful was produced.
    ERROR = 2
    #: ``--strict`` was given and some records were rejected (good ones were still written).
    REJECTS = 3
    #: An unexpected exception: a bug in fpi (rerun with ``--debug`` for the traceback).
    INTERNAL = 70
    #: Interrupted by the user (Ctrl-C).
    INTERRUPTED = 130


class FpiError(Exception):
    """Base class of every error fpi raises on purpose."""

    exit_code: ExitStatus = ExitStatus.ERROR


class InputError(FpiError):
    """The user's input cannot be used: missing path, unreadable file, no records."""


class TruncatedInput(InputError):
    """A compressed stream or file ends early or is corrupt (``--allow-truncated`` keeps
    what was readable)."""


class OutputError(FpiError):
    """An output cannot be written: missing or read-only directory, full disk, a
    directory where a file belongs (or the reverse)."""


def os_error(exc: OSError, what: str, path: object | None = None) -> OutputError:
    """An :class:`OutputError` for ``exc``: ``cannot write WHAT PATH: REASON``."""
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"cannot write {what} {where}: {reason}")


class SchemaError(FpiError):
    """Data does not follow the trace format, or does not match what a model expects."""


class ModelError(FpiError):
    """A model bundle is missing, damaged, from another version, or cannot be trained."""


class GateFailed(FpiError):
    """One or more CI gates failed."""

    exit_code = ExitStatus.GATE_FAILED


class StrictRejects(FpiError):
    """Records were rejected while ``--strict`` was in force."""

    exit_code = ExitStatus.REJECTS


class MissingExtra(FpiError):
    """An optional dependency is not installed; the message names the install extra
    that brings it (``pip install 'fpi[shap]'``)."""


class EngineError(FpiError):
    """An execution engine cannot be used: its scheduler cannot be reached, it has no
    workers, or its workers run another fpi (``--engine dask``)."""
