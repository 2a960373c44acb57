"""``python -m worker.cli``: the ``pagerbridge`` command."""

from worker.cli import main

main()
