"""`python -m spotpool.simulator`: the same as `spotpool simulator`."""

from spotpool.simulator.cli import cli

raise SystemExit(cli())
