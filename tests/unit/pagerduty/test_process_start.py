"""What a worker prepares before its first task: the TLS context once, before the pool forks,
and each pool process's runtime when the process starts (worker/pipeline/tasks.py)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator

import httpx
import pytest
from celery.signals import worker_init, worker_process_init
from pydantic import SecretStr
from sqlalchemy.pool import QueuePool

from worker.pagerduty import PagerDutyClient
from worker.pagerduty.http_client import tls_context
from worker.pipeline import tasks
from worker.pipeline.runtime import Runtime
from worker.settings import Settings

# Nothing listens on port 1: a preparation that touched the network would fail or wait.
NOWHERE = "127.0.0.1:1"


@pytest.fixture
def fresh_tls_context() -> Iterator[None]:
    tls_context.cache_clear()
    yield
    tls_context.cache_clear()


@pytest.mark.usefixtures("fresh_tls_context")
def test_every_client_of_a_process_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[ssl.SSLContext] = []
    create = httpx.create_ssl_context

    def counting() -> ssl.SSLContext:
        loaded.append(create())
        return loaded[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    clients = [PagerDutyClient(f"https://{NOWHERE}", "t", "a@x.test") for _ in range(3)]
    for client in clients:
        client.close()
    assert len(loaded) == 1
    assert tls_context() is loaded[0]


def test_the_worker_loads_the_tls_context_before_its_pool_forks(
    fresh_tls_context: None,
) -> None:
    assert tasks._before_the_pool_forks in worker_init._live_receivers(None)
    assert tls_context.cache_info().currsize == 0
    tasks._before_the_pool_forks()
    assert tls_context.cache_info().currsize == 1


def _unreachable_runtime() -> Runtime:
    return Runtime(
        Settings(
            database_url=f"postgresql+psycopg://nobody@{NOWHERE}/nothing",
            redis_url=f"redis://{NOWHERE}/0",
            pagerduty_url=f"http://{NOWHERE}",
            pagerduty_token=SecretStr("pd-token"),
            pagerduty_from="oncall@x.test",
        )
    )


def test_a_pool_process_builds_its_runtime_before_its_first_task_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = _unreachable_runtime()
    frozen: list[bool] = []
    monkeypatch.setattr(tasks, "current_runtime", lambda: runtime)
    monkeypatch.setattr(tasks, "freeze_startup_objects", lambda: frozen.append(True))
    assert tasks._prepare_pool_process in worker_process_init._live_receivers(None)

    tasks._prepare_pool_process()

    # Built: the reconciler with its PagerDuty client, gate and session factory...
    reconciler = runtime._reconciler
    assert reconciler is not None
    assert {"engine", "sessions", "pagerduty", "redis", "gate"} <= set(vars(runtime))
    # ... without one connection (the database, Redis and PagerDuty here are unreachable), and
    # the first task uses what was built.
    pool = runtime.engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0 and pool.checkedin() == 0
    assert runtime.redis.connection_pool._created_connections == 0
    assert tasks._reconciler() is reconciler
    assert frozen == [True]
    runtime.close()


def test_a_pool_process_that_cannot_prepare_still_starts_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(Settings(pagerduty_token=None, pagerduty_from=None))
    frozen: list[bool] = []
    monkeypatch.setattr(tasks, "current_runtime", lambda: runtime)
    monkeypatch.setattr(tasks, "freeze_startup_objects", lambda: frozen.append(True))
    with caplog.at_level(logging.ERROR, logger=tasks.__name__):
        tasks._prepare_pool_process()
    assert frozen == [True]
    [record] = caplog.records
    assert "before its first task" in record.getMessage()
    assert "PAGERBRIDGE_PAGERDUTY_TOKEN" in caplog.text
