"""The ``fpi`` command line: a thin skin over the library.

Each command lives in its own module, parses its options, calls one library
function and renders the result. Errors are caught once, in ``_app``.
"""

from fpi.cli._app import app
from fpi.lightgbm_import import lean_on_first_import

# Importing the command modules registers their commands on ``app``.
from fpi.cli import ingest as _ingest  # noqa: F401  isort: skip
from fpi.cli import simulate as _simulate  # noqa: F401  isort: skip
from fpi.cli import train as _train  # noqa: F401  isort: skip
from fpi.cli import diagnose as _diagnose  # noqa: F401  isort: skip
from fpi.cli import trend as _trend  # noqa: F401  isort: skip
from fpi.cli import labels as _labels  # noqa: F401  isort: skip



def main() -> None:
    """The ``fpi`` executable and ``python -m fpi``: LightGBM loaded lean if a command
    needs it, then the app.

    (Programs and tests that call ``app`` themselves get LightGBM as usual.)
    """
    lean_on_first_import()
    app(prog_name="fpi")


__all__ = ["app", "main"]
