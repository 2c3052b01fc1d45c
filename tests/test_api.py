"""The public Python API: ``from fpi import read_traces, train, evaluate, diagnose, ...``."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import fpi


def test_public_names_are_functions_or_classes_even_after_every_module_is_imported() -> None:
    # A submodule named like a public function would replace it on the package
    # once imported (fpi.evaluate -> module): every public name must survive that.
    for info in pkgutil.walk_packages(fpi.__path__, "fpi."):
        importlib.import_module(info.name)
    for name in fpi.__all__:
        if name == "__version__":
            continue
        obj = getattr(fpi, name)
        assert inspect.isfunction(obj) or inspect.isclass(obj), f"fpi.{name} is {obj!r}"


def test_import_fpi_is_light() -> None:
    # `fpi --version` and `import fpi` must not pay for LightGBM, shap or Polars.
    code = ("import sys, fpi; "
            "print(sorted(m for m in ('lightgbm', 'shap', 'polars') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_import_is_light() -> None:
    # `fpi --help` builds every command's help without Polars, pyarrow, LightGBM or shap.
    code = ("import sys; from fpi.cli import app; print(sorted(m for m in "
            "('lightgbm', 'shap', 'polars', 'pyarrow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ingest_help_lists_every_input_form() -> None:
    from fpi.cli.ingest import INPUT_FORMS
    from fpi.ingest import READ_FORMATS

    assert INPUT_FORMS == READ_FORMATS


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        fpi.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:  # pragma: no cover - the assertion is the test
        raise AssertionError("fpi.no_such_thing did not raise")


def test_import_fpi_tells_openblas_to_sleep_between_calls_unless_told_otherwise() -> None:
    # Set before NumPy loads (OpenBLAS reads it then); a user's own value is kept.
    code = "import os, fpi, numpy; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "4"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "OPENBLAS_THREAD_TIMEOUT": "12"})
    assert out.stdout.strip() == "12"
