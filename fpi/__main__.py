"""``python -m fpi`` and the ``fpi`` executable run the CLI."""


def main() -> None:
    """The ``fpi`` command (:func:`fpi.cli.main`), imported only when it runs.

    The ``fpi`` executable's script imports this function, not :mod:`fpi.cli`: each Dask
    worker process that ``fpi ... --engine dask --workers N`` spawns runs that script
    again (as ``__mp_main__``) and needs nothing of the CLI (typer, rich and every command
    module: about 0.1 CPU-s per worker)."""
    from fpi.cli import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
