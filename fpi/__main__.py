"""``python -m fpi`` runs the CLI."""

from fpi.cli import app

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="fpi")
