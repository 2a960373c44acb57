"""Putting events on the Celery queue, behind a small interface the ingress can fake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from worker.errors import ServiceUnavailable
from worker.pipeline.celery_app import APPLY_EVENT_TASK
from worker.pipeline.message import AlertEventMessage

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
                # Celery otherwise builds a repr of the whole batch for the message's headers
                # (for monitoring tools); a summary says enough (bench/api_profile.py).
                argsrepr=_summary(events),
                kwargsrepr="{}",
                # The queue is the routing key of the default (direct) exchange: nothing to
                # declare. Celery would otherwise re-declare it with every message (Celery's
                # `declare` option of send_task).
                declare=[],
                # Fail fast: CoScale is waiting for the answer, and a 503 is better than a
                # request held until CoScale's own timeout.
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except (BrokerError, OSError) as exc:
            raise ServiceUnavailable(f"the queue (Redis) did not take the event: {exc}") from exc
        return "queue"


def _summary(events: Sequence[AlertEventMessage]) -> str:
    """What monitoring tools show of an apply message (its ``argsrepr``): how many events, and
    the first one's alert and action."""
    first = events[0]
    more = f" and {len(events) - 1} more" if len(events) > 1 else ""
    return f"[{first.source}:{first.alert_id} {first.action_name}{more}]"
