"""The one library internal the bridge relies on: prometheus-client's choice of value class.

prometheus-client decides where metric values live (memory, or files shared by processes) when
``prometheus_client.values`` is imported, from ``PROMETHEUS_MULTIPROC_DIR``. A Celery worker
learns that it runs a pool only later (``worker_init``, before the pool forks), so the choice is
made again here: ``values.ValueClass`` and ``values.get_value_class`` are module attributes the
library's documentation does not list. The version range is pinned in pyproject.toml, and
tests/unit/test_metrics.py fails if the library stops choosing ``MultiProcessValue`` this way.
"""

from __future__ import annotations

from prometheus_client import values


def choose_value_class_again() -> type:
    """Make metrics created from now on follow ``PROMETHEUS_MULTIPROC_DIR`` as it is now."""
    chosen: type = values.get_value_class()  # type: ignore[no-untyped-call]
    values.ValueClass = chosen
    return chosen
