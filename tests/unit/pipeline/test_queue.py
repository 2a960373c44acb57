"""The Celery message the ingress sends per batch of events (worker/pipeline/queue.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery

from worker.pipeline.celery_app import APPLY_EVENT_TASK
from worker.pipeline.message import AlertEventMessage
from worker.pipeline.queue import CeleryEventQueue
from worker.vocabulary import AlertStatus


def _event(alert_id: str, action: AlertStatus = AlertStatus.TRIGGERED) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=f"e-{alert_id}",
        source="coscale",
        alert_id=alert_id,
        action=action,
        received_at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        title="CPU high",
    )


def _sent(app: Celery) -> tuple[dict[str, object], object]:
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue("bridge").get(timeout=2)
        message.ack()
        return message.headers, message.payload


def test_one_message_carries_the_batch_and_names_it_without_a_repr_of_it() -> None:
    app = Celery("test", broker="memory://")
    app.conf.task_default_queue = "bridge"
    events = [_event("a1"), _event("a2", AlertStatus.RESOLVED), _event("a3")]

    assert CeleryEventQueue(app).publish_many(events) == "queue"

    headers, payload = _sent(app)
    assert headers["task"] == APPLY_EVENT_TASK
    # Monitoring tools see what the message is about, not a repr Celery built of every event
    assert headers["argsrepr"] == "[coscale:a1 triggered and 2 more]"
    assert headers["kwargsrepr"] == "{}"
    args, kwargs, _ = payload  # type: ignore[misc]
    assert kwargs == {}
    assert [AlertEventMessage.from_message(body) for body in args[0]] == events


def test_a_batch_of_one_is_named_by_its_event() -> None:
    app = Celery("test", broker="memory://")
    app.conf.task_default_queue = "bridge"
    CeleryEventQueue(app).publish(_event("solo", AlertStatus.ACKNOWLEDGED))
    headers, _ = _sent(app)
    assert headers["argsrepr"] == "[coscale:solo acknowledged]"
