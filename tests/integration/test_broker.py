"""The Redis transport Celery talks through (worker/pipeline/broker.py), against a real Redis:
the same messages and acknowledgements as kombu's, with one redis-py client per pool."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection

from models import utcnow
from tests.fakes import trigger_events
from worker.pipeline import broker
from worker.pipeline.celery_app import APPLY_EVENT_TASK, create_celery
from worker.pipeline.queue import CeleryEventQueue
from worker.settings import Settings


@pytest.fixture
def clients_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every redis-py client made while the test runs."""
    made: list[object] = []
    real_init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    yield made


def test_celery_uses_it_for_redis_urls_and_kombus_own_for_tls_and_sentinel() -> None:
    assert broker.transport_for("redis://127.0.0.1:6379/0") == broker.TRANSPORT
    for url in ("rediss://redis.example:6380/0", "sentinel://s1:26379;sentinel://s2:26379"):
        assert broker.transport_for(url) is None
    plain = create_celery(Settings(redis_url="redis://127.0.0.1:6379/3"))
    assert type(plain.connection_for_write().transport) is broker.Transport
    secure = create_celery(Settings(redis_url="rediss://redis.example:6380/3"))
    assert type(secure.connection_for_write().transport) is not broker.Transport


def test_messages_and_acks_go_through_one_client(
    redis_url: str, clients_made: list[object]
) -> None:
    queue_name = f"pagerbridge-test-broker-{uuid.uuid4().hex[:8]}"
    with Connection(redis_url, transport=broker.TRANSPORT) as connection:  # type: ignore[no-untyped-call]
        queue = connection.SimpleQueue(queue_name)
        try:
            for n in range(40):
                queue.put({"n": n})
            taken = []
            for _ in range(40):
                message = queue.get(timeout=5)
                taken.append(message.payload["n"])
                message.ack()
            assert taken == list(range(40))
            # kombu's own transport makes a client per put and two per message taken (one
            # to record it as unacknowledged, one to acknowledge it): 120 here.
            assert len(clients_made) <= 4
            with queue.channel.conn_or_acquire() as client:
                assert client.hlen(queue.channel.unacked_key) == 0
        finally:
            queue.clear()
            queue.close()


def test_a_replaced_pool_gets_a_client_of_its_own(redis_url: str) -> None:
    with Connection(redis_url, transport=broker.TRANSPORT) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again and first.connection_pool is channel.pool
        channel._disconnect_pools()  # as after a fork or a lost connection
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
            assert after.ping()


def test_the_api_publishes_apply_messages_a_worker_can_read(
    redis_url: str, namespace: str, clients_made: list[object]
) -> None:
    app = create_celery(Settings(redis_url=redis_url, namespace=f"{namespace}-broker"))
    try:
        for n in range(20):
            app.send_task(APPLY_EVENT_TASK, args=[[{"n": n}]])
        assert len(clients_made) <= 4
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue(f"{namespace}-broker")
            bodies = []
            for _ in range(20):
                message = queue.get(timeout=5)
                bodies.append(message.payload)  # Celery's message: [args, kwargs, embed]
                message.ack()
            queue.close()
        assert [body[0][0][0]["n"] for body in bodies] == list(range(20))
    finally:
        redis.Redis.from_url(redis_url).delete(f"{namespace}-broker")


def test_an_event_published_without_declaring_its_queue_reaches_it(
    redis_url: str, namespace: str
) -> None:
    # The api publishes without declaring the queue (worker/pipeline/queue.py): on a Redis that
    # has never seen the queue nor its bindings (no worker ever started), the message must still
    # be in it.
    from models import utcnow
    from worker.pipeline.message import AlertEventMessage
    from worker.pipeline.queue import CeleryEventQueue
    from worker.vocabulary import AlertStatus

    name = f"{namespace}-undeclared"
    client = redis.Redis.from_url(redis_url)
    assert not client.keys(f"*{name}*")
    app = create_celery(Settings(redis_url=redis_url, namespace=name))
    event = AlertEventMessage(
        event_id=uuid.uuid4().hex,
        source="coscale",
        alert_id="a1",
        action=AlertStatus.TRIGGERED,
        received_at=utcnow(),
    )
    try:
        assert CeleryEventQueue(app).publish_many([event]) == "queue"
        assert client.llen(name) == 1
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue(name)
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
        assert message.payload[0][0][0]["event_id"] == event.event_id
    finally:
        client.delete(name)


@dataclass
class OwnQueue:
    """A Celery app on a queue of the test's own, what the api publishes with, and a Redis
    client to look at the queue and kombu's copies."""

    name: str
    app: Celery
    events: CeleryEventQueue
    client: redis.Redis


@pytest.fixture
def own_queue(redis_url: str, namespace: str) -> Iterator[OwnQueue]:
    name = f"{namespace}-inbox-backed-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    app = create_celery(Settings(redis_url=redis_url, namespace=name))
    try:
        yield OwnQueue(name, app, CeleryEventQueue(app), client)
    finally:
        client.delete(name)
        client.close()


def _event_id(message: Any) -> str:
    return str(message.payload[0][0][0]["event_id"])


def test_a_message_the_inbox_keeps_leaves_no_copy_in_redis_the_others_keep_kombus(
    own_queue: OwnQueue,
) -> None:
    name, client = own_queue.name, own_queue.client
    kept, queued_only = trigger_events("kept", "queued-only", received_at=utcnow())
    own_queue.events.publish_many([kept], inbox_backed=True)
    own_queue.events.publish_many([queued_only])  # the database was away
    with own_queue.app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        taken = {_event_id(message): message for message in (first, second)}
        copies = queue.channel.unacked_key
        # Taken, not acknowledged: kombu's copy of the queued-only one, none of the other.
        assert client.hget(copies, taken[queued_only.event_id].delivery_tag) is not None
        assert client.hget(copies, taken[kept.event_id].delivery_tag) is None
        for message in taken.values():
            message.ack()
        assert client.hget(copies, taken[queued_only.event_id].delivery_tag) is None
        assert client.llen(name) == 0
        queue.close()
    # Acknowledged: neither comes back.
    assert client.llen(name) == 0


def test_a_message_the_inbox_keeps_goes_back_on_its_queue_when_rejected_or_left_unacked(
    own_queue: OwnQueue,
) -> None:
    name, client, app = own_queue.name, own_queue.client, own_queue.app
    (kept,) = trigger_events("kept", received_at=utcnow())
    own_queue.events.publish_many([kept], inbox_backed=True)
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        message = queue.get(timeout=5)
        assert client.llen(name) == 0
        message.reject(requeue=True)  # as Celery does when a pool process dies mid-task
        assert client.llen(name) == 1
        again = queue.get(timeout=5)
        assert _event_id(again) == kept.event_id
        queue.close()
    # The connection closed with the message taken and not acknowledged (a warm shutdown):
    # it is back on the queue, as kombu puts back the messages it holds a copy of.
    assert client.llen(name) == 1
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        last = queue.get(timeout=5)
        assert _event_id(last) == kept.event_id
        last.ack()
        queue.close()
    assert client.llen(name) == 0
