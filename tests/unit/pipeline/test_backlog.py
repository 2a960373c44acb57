"""Counting the events waiting in the Celery queues (worker/pipeline/backlog.py), on fakeredis
holding messages shaped as kombu's Redis transport stores them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import fakeredis

from tests.fakes import trigger_events
from worker.pipeline.backlog import queue_backlog
from worker.pipeline.celery_app import (
    APPLY_EVENT_TASK,
    RECONCILE_TASK,
    delivery_queue,
    intake_queue,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _apply_message(count: int, received_at: datetime) -> bytes:
    events = trigger_events(*[f"a{n}" for n in range(count)], received_at=received_at)
    body = [[[event.to_message() for event in events]], {}, {}]
    more = f" and {count - 1} more" if count > 1 else ""
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            # What the api writes (worker/pipeline/queue.py)
            "headers": {"task": APPLY_EVENT_TASK, "argsrepr": f"[coscale:a0 triggered{more}]"},
            "properties": {"body_encoding": "base64"},
        }
    ).encode()


def _reconcile_message() -> bytes:
    body = base64.b64encode(json.dumps([[[1, 2]], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "headers": {"task": RECONCILE_TASK}}).encode()


def test_events_are_counted_in_both_queues_and_the_oldest_is_the_oldest_of_either() -> None:
    client = fakeredis.FakeRedis()
    # kombu pushes on the left: the last pushed is the newest
    client.lpush(intake_queue("ns"), _apply_message(3, NOW - timedelta(seconds=5)))
    client.lpush(intake_queue("ns"), _apply_message(2, NOW - timedelta(seconds=1)))
    client.lpush(delivery_queue("ns"), _apply_message(1, NOW - timedelta(seconds=30)))
    client.lpush(delivery_queue("ns"), _reconcile_message())

    messages, events, counted_all, oldest = queue_backlog(client, "ns", NOW)

    assert (messages, events, counted_all, oldest) == (4, 6, True, 30.0)


def test_a_long_queue_is_counted_up_to_the_scan_limit_over_both_queues() -> None:
    client = fakeredis.FakeRedis()
    for _ in range(3):
        client.lpush(intake_queue("ns"), _apply_message(2, NOW - timedelta(seconds=2)))
    client.lpush(delivery_queue("ns"), _apply_message(5, NOW))

    messages, events, counted_all, oldest = queue_backlog(client, "ns", NOW, scan_limit=2)

    assert (messages, events, counted_all, oldest) == (4, 4, False, 2.0)


def test_no_queue_no_backlog() -> None:
    assert queue_backlog(fakeredis.FakeRedis(), "ns", NOW) == (0, 0, True, None)
