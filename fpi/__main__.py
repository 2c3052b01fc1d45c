"""``python -m fpi`` runs the CLI."""

from fpi.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
