"""The events waiting to be applied: in the Celery queue and in the database inbox.

Alerts pending delivery are counted from the ``alerts`` table; an event the api accepted but no
worker applied yet is not there. It waits in two places: the queue (one ``apply_event`` message
per batch of requests the api stored together, worker/pipeline/queue.py) and the inbox (its
durable copy, ``inbox_events``, until a worker applied it; worker/pipeline/inbox.py).
``status``, ``/metrics`` and ``/readyz`` show both, with the age of the oldest.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import InboxEvent
from models.namespace import namespace_of

# Messages read to count the queued events: a long queue is counted up to this many (its
# length is always exact), so that a look at a storm's backlog does not add to its cost.
QUEUE_SCAN_LIMIT = 20_000
_CHUNK = 1000
# The argsrepr the api writes (worker/pipeline/queue.py ``_summary``): "[source:id action]" or
# "[source:id action and N more]".
_MORE = re.compile(r" and (\d+) more\]$")


@dataclass(frozen=True, slots=True)
class Backlog:
    queue_messages: int  # every message in the Celery queues (apply and reconcile tasks)
    queue_events: int  # events in its apply_event messages (of those scanned)
    queue_counted_all: bool  # False: the queue was longer than QUEUE_SCAN_LIMIT
    queue_oldest_seconds: float | None  # age of the oldest queued event; None: none queued
    inbox_events: int
    inbox_oldest_seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_messages": self.queue_messages,
            "queue_events": self.queue_events,
            "queue_counted_all": self.queue_counted_all,
            "queue_oldest_seconds": self.queue_oldest_seconds,
            "inbox_events": self.inbox_events,
            "inbox_oldest_seconds": self.inbox_oldest_seconds,
        }

    def summary(self) -> str:
        """One line, as ``/readyz`` and ``status`` say it."""
        counted = "" if self.queue_counted_all else " at least"
        return (
            f"{counted}{self.queue_events} event(s) queued{_oldest(self.queue_oldest_seconds)}, "
            f"{self.inbox_events} in the inbox{_oldest(self.inbox_oldest_seconds)}"
        ).strip()


def _oldest(seconds: float | None) -> str:
    return "" if seconds is None else f" (oldest {seconds:.1f}s)"


def events_in_message(raw: bytes | str) -> tuple[int, datetime | None]:
    """(events, when the first was received) of one kombu message of the queue; ``(0, None)``
    for another task's message or one that cannot be read.

    The count comes from the headers' ``argsrepr``, so a message's body is decoded only for its
    time (the caller asks for the oldest message's alone)."""
    # Imported here: the Celery app imports worker.metrics, which reads the backlog.
    from worker.pipeline.celery_app import APPLY_EVENT_TASK

    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        if headers.get("task") != APPLY_EVENT_TASK:
            return 0, None
        more = _MORE.search(str(headers.get("argsrepr") or ""))
        return 1 + (int(more.group(1)) if more else 0), None
    except (ValueError, TypeError, AttributeError):
        return 0, None


def first_received_at(raw: bytes | str) -> datetime | None:
    """When the first event of an apply_event message was received (its body is the base64 of
    ``[args, kwargs, embed]``; ``args[0]`` is a list of events, or one)."""
    try:
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        first = args[0][0] if isinstance(args[0], list) else args[0]
        return datetime.fromisoformat(first["received_at"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def queue_backlog(
    client: redis.Redis, namespace: str, now: datetime, *, scan_limit: int = QUEUE_SCAN_LIMIT
) -> tuple[int, int, bool, float | None]:
    """(messages, events, all counted, oldest event's age in seconds) of the Celery queues: the
    intake queue's apply messages and the delivery queue's (an older api's apply messages went
    there too), ``scan_limit`` messages read at most.

    Celery's Redis transport pushes on the left and takes from the right of the list named after
    the queue, so the oldest message is the last one."""
    from worker.pipeline.celery_app import delivery_queue, intake_queue

    messages = events = scanned_all = 0
    oldest: datetime | None = None
    left = scan_limit
    for queue in (intake_queue(namespace), delivery_queue(namespace)):
        length = int(client.llen(queue))
        messages += length
        scanned = min(length, left)
        left -= scanned
        scanned_all += scanned
        dated = False  # the oldest apply message of this queue was read for its time
        for stop in range(-1, -scanned - 1, -_CHUNK):  # oldest first
            start = max(stop - _CHUNK + 1, -scanned)
            chunk: list[bytes] = client.lrange(queue, start, stop)  # type: ignore[assignment]
            for raw in reversed(chunk):
                count, _ = events_in_message(raw)
                if count and not dated:
                    dated = True
                    received = first_received_at(raw)
                    if received is not None and (oldest is None or received < oldest):
                        oldest = received
                events += count
    age = None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 1)
    return messages, events, scanned_all == messages, age


def inbox_backlog(session: Session, now: datetime) -> tuple[int, float | None]:
    """(rows, the oldest row's age in seconds) of the inbox."""
    count, oldest = session.execute(
        select(func.count(), func.min(InboxEvent.created_at))
        .select_from(InboxEvent)
        .where(InboxEvent.namespace == namespace_of(session))
    ).one()
    age = None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 1)
    return int(count), age


def read_backlog(client: redis.Redis, namespace: str, session: Session, now: datetime) -> Backlog:
    messages, events, counted_all, queue_oldest = queue_backlog(client, namespace, now)
    inbox, inbox_oldest = inbox_backlog(session, now)
    return Backlog(messages, events, counted_all, queue_oldest, inbox, inbox_oldest)
