"""How the worker gathers apply messages into batches (celery-batches, as
worker/pipeline/tasks.py sets it up): the messages taken wait for the window's timer and go
together, and a full batch goes without waiting."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage
from celery_batches import Batches

from worker.pipeline.tasks import APPLY_BATCH, apply_event_task
from worker.settings import get_settings


class FakePool:
    """The worker's pool as celery-batches hands it a batch (``apply_async``)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def apply_async(self, _target: Any, args: tuple[Any, ...], **_: Any) -> None:
        _task, (requests,), *_rest = args
        self.batches.append(len(requests))


class FakeTimer:
    def __init__(self) -> None:
        self.intervals: list[float] = []
        self.ticks: list[Callable[[], None]] = []

    def call_repeatedly(self, interval: float, tick: Callable[[], None]) -> SimpleNamespace:
        self.intervals.append(interval)
        self.ticks.append(tick)
        return SimpleNamespace(cancel=lambda: None)

    def tick(self) -> None:
        self.ticks[-1]()


def test_the_apply_task_batches_by_the_window_and_the_batch_size() -> None:
    assert isinstance(apply_event_task, Batches)
    assert apply_event_task.flush_every == APPLY_BATCH
    assert apply_event_task.flush_interval == get_settings().apply_batch_window
    assert apply_event_task.acks_late is True


def _handler(window: float) -> tuple[Callable[..., None], FakePool, FakeTimer]:
    """A batch task set up as the apply task is (its batch size, a window), on a fresh app."""
    app = Celery("batching-test", set_as_current=False)

    @app.task(name="batching.test", base=Batches, flush_every=APPLY_BATCH, flush_interval=window)
    def batch(requests: list[Any]) -> None:  # pragma: no cover - never run here
        pass

    pool, timer = FakePool(), FakeTimer()
    consumer = SimpleNamespace(
        pool=pool,
        hostname="worker@test",
        connection_errors=(),
        event_dispatcher=SimpleNamespace(enabled=False),
        timer=timer,
    )
    return batch.Strategy(batch, app, consumer), pool, timer


def _take(handle: Callable[..., None], count: int) -> None:
    for n in range(count):
        handle(TaskMessage("batching.test", args=([{"n": n}],)), None, None, None, set())


@pytest.mark.parametrize("waiting", [1, 7])
def test_messages_taken_wait_for_the_window_and_go_together(waiting: int) -> None:
    handle, pool, timer = _handler(window=0.05)
    _take(handle, waiting)
    assert pool.batches == []
    assert timer.intervals == [0.05]  # the first message taken started the window
    timer.tick()
    assert pool.batches == [waiting]


def test_a_full_batch_goes_without_waiting_for_the_window() -> None:
    handle, pool, timer = _handler(window=30)
    _take(handle, APPLY_BATCH + 3)
    assert pool.batches == [APPLY_BATCH]
    timer.tick()
    assert pool.batches == [APPLY_BATCH, 3]
