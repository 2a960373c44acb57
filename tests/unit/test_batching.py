"""worker/pipeline/batching.py: a message that finds the worker's pool idle goes to it at once;
while the pool is busy, messages wait for celery-batches' timer and go together."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage

from worker.pipeline.batching import ApplyBatches, hand_over_now, jobs_in_flight


class FakePool:
    """Celery's prefork pool as the consumer sees it: the jobs in flight in billiard's
    ``_cache``, and the batches handed to it."""

    def __init__(self, in_flight: int) -> None:
        self._pool = SimpleNamespace(_cache={job: object() for job in range(in_flight)})
        self.batches: list[int] = []

    def apply_async(self, _target: Any, args: tuple[Any, ...], **_: Any) -> None:
        _task, (requests,), *_rest = args
        self.batches.append(len(requests))


class FakeTimer:
    def __init__(self) -> None:
        self.ticks: list[Callable[[], None]] = []

    def call_repeatedly(self, _interval: float, tick: Callable[[], None]) -> SimpleNamespace:
        self.ticks.append(tick)
        return SimpleNamespace(cancel=lambda: None)

    def tick(self) -> None:
        self.ticks[-1]()


def test_the_jobs_in_flight_are_read_from_the_prefork_pool_or_unknown() -> None:
    assert jobs_in_flight(FakePool(0)) == 0
    assert jobs_in_flight(FakePool(3)) == 3
    assert jobs_in_flight(SimpleNamespace()) is None  # solo or threads: it does not say
    assert jobs_in_flight(None) is None


def test_only_a_pool_known_to_be_idle_takes_a_message_at_once() -> None:
    assert hand_over_now(0) is True
    assert hand_over_now(1) is False
    assert hand_over_now(None) is False  # the timer, as celery-batches does


def _handler(in_flight: int) -> tuple[Callable[..., None], FakePool, FakeTimer]:
    app = Celery("batching-test", set_as_current=False)

    @app.task(name="batching.test", base=ApplyBatches, flush_every=100, flush_interval=30)
    def batch(requests: list[Any]) -> None:  # pragma: no cover - never run here
        pass

    pool, timer = FakePool(in_flight), FakeTimer()
    consumer = SimpleNamespace(
        pool=pool,
        hostname="worker@test",
        connection_errors=(),
        event_dispatcher=SimpleNamespace(enabled=False),
        timer=timer,
    )
    handle = batch.Strategy(batch, app, consumer)
    return handle, pool, timer


def _take(handle: Callable[..., None], count: int) -> None:
    for n in range(count):
        handle(TaskMessage("batching.test", args=([{"n": n}],)), None, None, None, set())


def test_a_message_that_finds_the_pool_idle_goes_at_once() -> None:
    handle, pool, _timer = _handler(in_flight=0)
    _take(handle, 1)
    # Not 30 s later at the timer: now.
    assert pool.batches == [1]


@pytest.mark.parametrize("waiting", [1, 7])
def test_messages_taken_while_the_pool_is_busy_wait_for_the_timer_and_go_together(
    waiting: int,
) -> None:
    handle, pool, timer = _handler(in_flight=2)
    _take(handle, waiting)
    assert pool.batches == []
    timer.tick()
    assert pool.batches == [waiting]
