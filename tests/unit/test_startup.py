"""Start-up objects frozen out of the garbage collector's walks (worker/startup.py), in every
process that serves: the api (one process or several) and the worker's processes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from worker import startup as heap
from worker.cli import cli


@pytest.fixture(autouse=True)
def _unfrozen_after() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_what_lives_is_frozen_and_what_start_up_left_as_garbage_is_collected_first() -> None:
    gc.unfreeze()
    kept = _Node()
    garbage = weakref.ref(_Node())
    heap.freeze_startup_objects()
    assert garbage() is None  # collected, not frozen with the rest
    assert gc.get_freeze_count() > 1000  # the imports, at least
    assert all(obj is not kept for obj in gc.get_objects())  # not walked by the collector


def test_the_orm_is_configured_before_the_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    monkeypatch.setattr(heap, "configure_mappers", lambda: steps.append("mappers"))
    monkeypatch.setattr(gc, "freeze", lambda: steps.append("frozen"))
    heap.freeze_startup_objects()
    assert steps == ["mappers", "frozen"]


def test_the_worker_freezes_before_the_pool_forks_and_once_ready() -> None:
    from celery.signals import worker_init, worker_ready

    from worker.pipeline import celery_app

    # Each pool process freezes once prepared: tests/unit/pagerduty/test_process_start.py.
    for signal in (worker_init, worker_ready):
        assert celery_app._freeze in signal._live_receivers(None), signal.name


def test_each_api_process_freezes_once_its_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.ingress import app as app_module

    steps: list[str] = []

    def build_app(*_: object, **__: object) -> str:
        steps.append("built")
        return "app"

    monkeypatch.setattr(app_module, "build_app", build_app)
    monkeypatch.setattr(app_module, "freeze_startup_objects", lambda: steps.append("frozen"))
    assert app_module.app_from_environment() == "app"  # type: ignore[comparison-overlap]
    assert app_module.insecure_app_from_environment() == "app"  # type: ignore[comparison-overlap]
    assert steps == ["built", "frozen"] * 2


def test_the_single_process_api_freezes_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from worker.cli import services as cli_module
    from worker.ingress import app as app_module
    from worker.ops import preflight
    from worker.settings import get_settings

    steps: list[str] = []
    monkeypatch.setenv("PAGERBRIDGE_INGRESS_TOKENS", "a-long-enough-ingress-token-0123456789")
    monkeypatch.setenv("PAGERBRIDGE_API_WORKERS", "1")
    get_settings.cache_clear()
    monkeypatch.setattr(cli_module, "_configure_logging", lambda settings: None)
    monkeypatch.setattr(preflight, "check_redis", lambda url: None)
    monkeypatch.setattr(preflight, "check_database", lambda url: None)
    monkeypatch.setattr(app_module, "build_app", lambda *a, **k: steps.append("built"))
    monkeypatch.setattr(heap, "freeze_startup_objects", lambda: steps.append("frozen"))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: steps.append("serving"))
    try:
        result = CliRunner().invoke(cli, ["api"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert steps == ["built", "frozen", "serving"]
