"""The ``mom`` command line: :mod:`mom.cli.main` maps each command to the module here that implements it."""
