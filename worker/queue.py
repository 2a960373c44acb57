"""Putting events on the Celery queue, behind a small interface the ingress can fake."""

from __future__ import annotations

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
    def publish(self, event: AlertEventMessage) -> QueuedIn:
        """Queue ``event`` durably and say where, or raise :class:`ServiceUnavailable`."""


class CeleryEventQueue:
    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        try:
            self._app.send_task(
                APPLY_EVENT_TASK,
                args=[event.to_message()],
                # Fail fast: CoScale is waiting for the answer, and a 503 is better than a
                # request held until CoScale's own timeout.
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except (BrokerError, OSError) as exc:
            raise ServiceUnavailable(f"the queue (Redis) did not take the event: {exc}") from exc
        return "queue"
