"""``python -m fpi`` runs the CLI."""

if __name__ == "__main__":  # pragma: no cover
    # imported here, not above: a Dask worker process that ``fpi`` spawns imports this
    # module again (as ``__mp_main__``) and needs nothing of the CLI
    from fpi.cli import main

    main()
