"""What the queue promises, on kombu's own Redis transport with the bridge's settings
(worker/pipeline/celery_app.py), against a real Redis: the api's messages reach a worker; a
message a worker took is not gone until it is acknowledged; a worker killed with SIGKILL loses
none of what it held, which comes back on its queue once the visibility timeout has passed.

Those that make a consumer restore messages past a visibility timeout use a redis-server of
their own: kombu's copies of unacknowledged messages are one hash per Redis database, shared by
every namespace, and a short timeout there would hand back messages other tests still hold.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from models import utcnow
from tests.conftest import service_missing
from tests.fakes import trigger_events
from tests.integration.conftest import free_port
from tests.integration.test_durability import PrivateRedis
from worker.pipeline.celery_app import (
    APPLY_EVENT_TASK,
    VISIBILITY_TIMEOUT,
    create_celery,
    intake_queue,
)
from worker.pipeline.queue import CeleryEventQueue
from worker.settings import Settings

pytestmark = pytest.mark.integration


def test_celery_talks_through_kombus_own_redis_transport_with_ack_emulation(
    redis_url: str, namespace: str
) -> None:
    app = create_celery(Settings(redis_url=redis_url, namespace=f"{namespace}-transport"))
    with app.connection_for_read() as connection:
        assert type(connection.transport) is kombu_redis.Transport
        channel = connection.default_channel
        # What redelivery after a SIGKILL rests on: a copy of each message taken, restored
        # past the visibility timeout.
        assert channel.ack_emulation is True
        assert channel.visibility_timeout == VISIBILITY_TIMEOUT
        assert isinstance(channel.qos, kombu_redis.QoS)


def test_the_api_publishes_apply_messages_a_worker_can_read(redis_url: str, namespace: str) -> None:
    app = create_celery(Settings(redis_url=redis_url, namespace=f"{namespace}-broker"))
    try:
        for n in range(20):
            app.send_task(APPLY_EVENT_TASK, args=[[{"n": n}]])
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue(intake_queue(f"{namespace}-broker"))
            bodies = []
            for _ in range(20):
                message = queue.get(timeout=5)
                bodies.append(message.payload)  # Celery's message: [args, kwargs, embed]
                message.ack()
            queue.close()
        assert [body[0][0][0]["n"] for body in bodies] == list(range(20))
    finally:
        redis.Redis.from_url(redis_url).delete(intake_queue(f"{namespace}-broker"))


def test_an_event_published_without_declaring_its_queue_reaches_it(
    redis_url: str, namespace: str
) -> None:
    # The api publishes without declaring the queue (worker/pipeline/queue.py): on a Redis that
    # has never seen the queue nor its bindings (no worker ever started), the message must still
    # be in it.
    undeclared = f"{namespace}-undeclared"
    name = intake_queue(undeclared)
    client = redis.Redis.from_url(redis_url)
    assert not client.keys(f"*{undeclared}*")
    app = create_celery(Settings(redis_url=redis_url, namespace=undeclared))
    (event,) = trigger_events("a1", received_at=utcnow())
    try:
        assert CeleryEventQueue(app).publish_many([event]) == "queue"
        assert client.llen(name) == 1
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue(name)
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
        assert _event_id(message) == event.event_id
    finally:
        client.delete(name)


@dataclass
class OwnQueue:
    """A Celery app on a queue of the test's own, what the api publishes with, and a Redis
    client to look at the queue and at kombu's copies of the messages taken."""

    name: str  # the intake queue, where the api's messages go
    namespace: str
    redis_url: str
    app: Celery
    events: CeleryEventQueue
    client: redis.Redis

    def copies(self) -> list[str]:
        """Event ids of this queue's messages taken and not acknowledged: kombu's ``unacked``
        hash of [message, exchange, routing key], the body base64-encoded."""
        found = []
        for _tag, raw in self.client.hscan_iter("unacked"):
            message, _exchange, routing_key = json.loads(raw)
            if routing_key == self.name:
                assert message["properties"]["body_encoding"] == "base64"
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                found.append(str(args[0][0]["event_id"]))
        return found

    def app_restoring_after(self, seconds: int) -> Celery:
        """The bridge's app for this queue, but with ``seconds`` as visibility timeout."""
        app = create_celery(Settings(redis_url=self.redis_url, namespace=self.namespace))
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "visibility_timeout": seconds,
        }
        return app


def _own_queue(redis_url: str, namespace: str) -> Iterator[OwnQueue]:
    own = f"{namespace}-taken-{uuid.uuid4().hex[:8]}"
    name = intake_queue(own)
    client = redis.Redis.from_url(redis_url)
    app = create_celery(Settings(redis_url=redis_url, namespace=own))
    try:
        yield OwnQueue(name, own, redis_url, app, CeleryEventQueue(app), client)
    finally:
        client.delete(name)
        client.close()


@pytest.fixture
def own_queue(redis_url: str, namespace: str) -> Iterator[OwnQueue]:
    yield from _own_queue(redis_url, namespace)


@pytest.fixture
def private_queue(tmp_path: Path, namespace: str) -> Iterator[OwnQueue]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server binary (apt-get install redis-server)")
    private = PrivateRedis(free_port(), tmp_path)
    private.start()
    try:
        yield from _own_queue(private.url, namespace)
    finally:
        private.stop()


def _event_id(message: Any) -> str:
    return str(message.payload[0][0][0]["event_id"])


def test_a_message_taken_is_kept_in_redis_until_acknowledged(own_queue: OwnQueue) -> None:
    name, client = own_queue.name, own_queue.client
    first, second = trigger_events("first", "second", received_at=utcnow())
    own_queue.events.publish_many([first])
    own_queue.events.publish_many([second])
    with own_queue.app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        taken = [queue.get(timeout=5), queue.get(timeout=5)]
        assert client.llen(name) == 0
        assert sorted(own_queue.copies()) == sorted([first.event_id, second.event_id])
        taken[0].ack()
        assert own_queue.copies() == [_event_id(taken[1])]
        taken[1].ack()
        assert own_queue.copies() == []
        queue.close()
    # Acknowledged: neither comes back.
    assert client.llen(name) == 0


def test_a_message_rejected_or_left_unacked_at_shutdown_goes_back_at_once(
    own_queue: OwnQueue,
) -> None:
    name, client, app = own_queue.name, own_queue.client, own_queue.app
    (event,) = trigger_events("kept", received_at=utcnow())
    own_queue.events.publish_many([event])
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        message = queue.get(timeout=5)
        assert client.llen(name) == 0
        # As Celery does when a pool process dies mid-task (task_reject_on_worker_lost)
        message.reject(requeue=True)
        assert client.llen(name) == 1
        again = queue.get(timeout=5)
        assert _event_id(again) == event.event_id
        queue.close()
    # The connection closed with the message taken and not acknowledged (a warm shutdown):
    # it is back on the queue, without waiting for the visibility timeout.
    assert client.llen(name) == 1
    assert own_queue.copies() == []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(name)
        last = queue.get(timeout=5)
        assert _event_id(last) == event.event_id
        last.ack()
        queue.close()
    assert client.llen(name) == 0


# A consumer like a worker's: the bridge's app takes one message, says so, and waits to be
# killed without acknowledging it.
_TAKE_AND_HOLD = """
import sys, time
from worker.pipeline.celery_app import create_celery, intake_queue
from worker.settings import Settings
app = create_celery(Settings(redis_url=sys.argv[1], namespace=sys.argv[2]))
with app.connection_for_read() as connection:
    message = connection.SimpleQueue(intake_queue(sys.argv[2])).get(timeout=30)
    print("taken", flush=True)
    time.sleep(120)
"""


def _take_and_get_killed(own: OwnQueue) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _TAKE_AND_HOLD, own.redis_url, own.namespace],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "taken"
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)


def test_a_message_held_by_a_consumer_killed_with_sigkill_comes_back_past_the_timeout(
    private_queue: OwnQueue,
) -> None:
    own = private_queue
    (event,) = trigger_events("held", received_at=utcnow())
    own.events.publish_many([event])
    _take_and_get_killed(own)
    # Gone from the queue with its consumer, but not lost: kombu's copy is in Redis.
    assert own.client.llen(own.name) == 0
    assert own.copies() == [event.event_id]

    # A live worker looks for copies past the visibility timeout (kombu's restore_visible, on
    # its event loop): within the bridge's timeout the message is still the dead consumer's.
    with own.app.connection_for_read() as connection:
        connection.default_channel.qos.restore_visible(num=100, interval=1)
    assert own.client.llen(own.name) == 0 and own.copies() == [event.event_id]

    # Past it (here a timeout of 0 s stands for 300 s gone by), the message is put back.
    with own.app_restoring_after(0).connection_for_read() as connection:
        connection.default_channel.qos.restore_visible(num=100, interval=1)
    assert own.client.llen(own.name) == 1 and own.copies() == []
    with own.app.connection_for_read() as connection:
        queue = connection.SimpleQueue(own.name)
        message = queue.get(timeout=5)
        assert _event_id(message) == event.event_id
        message.ack()
        queue.close()
    assert own.copies() == [] and own.client.llen(own.name) == 0
