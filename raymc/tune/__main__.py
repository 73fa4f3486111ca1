"""`python -m raymc.tune`: see raymc.tune.cli."""

from raymc.tune.cli import cli

cli()
