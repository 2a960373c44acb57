"""Putting events on the Celery queue, behind a small interface the ingress can fake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from worker.celery_app import APPLY_EVENT_TASK
from worker.errors import ServiceUnavailable
from worker.event import AlertEventMessage

# Where an accepted event was kept: the database inbox and the queue (normal), or only one of
# them while the other is unavailable.
QueuedIn = Literal["database+queue", "database", "queue"]


class EventQueue(Protocol):
    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        """Queue ``events`` durably, all in one place, and say where; or raise
        :class:`ServiceUnavailable` having kept none of them."""


class CeleryEventQueue:
    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        return self.publish_many([event])

    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        if not events:
            return "queue"
        try:
            # One message for the whole batch: a Celery message costs the api about as much
            # CPU as everything else it does for a webhook, whatever the message holds.
            self._app.send_task(
                APPLY_EVENT_TASK,
                args=[[event.to_message() for event in events]],
                # Fail fast: CoScale is waiting for the answer, and a 503 is better than a
                # request held until CoScale's own timeout.
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except (BrokerError, OSError) as exc:
            raise ServiceUnavailable(f"the queue (Redis) did not take the event: {exc}") from exc
        return "queue"
