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
    #: Interrupted by the user (Ctrl-C).
    INTERRUPTED = 130


class FpiError(Exception):
    """Base class of every error fpi raises on purpose."""

    exit_code: ExitStatus = ExitStatus.ERROR


class InputError(FpiError):
    """The user's input cannot be used: missing path, unreadable file, no records."""


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
