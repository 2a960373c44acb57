"""The ``pagerbridge`` command: one Typer app, its commands registered by the modules below."""

from __future__ import annotations

from worker.cli.common import cli

# Imported for their commands, which register on ``cli``: ``--help`` lists them in this order.
# isort: off
from worker.cli import services, status, operator, pagerduty
# isort: on

__all__ = ["cli", "main", "operator", "pagerduty", "services", "status"]


def main() -> None:
    cli()
