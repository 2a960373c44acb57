"""The ingress's durable hand-off: every accepted event is written to the database *and* put on
the Celery queue.

The queue is the fast path: a worker applies the event within milliseconds and, in the same
transaction, removes it from the inbox table. The inbox is the safety net for everything the
queue can lose: a worker killed with SIGKILL while holding prefetched messages (they would stay
invisible until the broker's visibility timeout), a Redis that was flushed or restarted without
its data, a Redis that was down when CoScale called. The sweeper applies inbox rows that the
queue has not applied within :data:`INBOX_GRACE`.

CoScale does not retry a failed webhook (COSCALE.md), so the api answers 2xx when either store
took the event, and 503 only when neither did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import InboxEvent, utcnow
from models.bulk import insert_rows
from models.inbox import INBOX_EVENTS_TABLE
from models.namespace import namespace_of
from worker.errors import ServiceUnavailable
from worker.pipeline.intake import AppliedEvent, apply_events
from worker.pipeline.message import AlertEventMessage
from worker.pipeline.queue import EventQueue, QueuedIn

log = logging.getLogger(__name__)

# How long the queue has to apply an event before the sweeper does it from the inbox.
INBOX_GRACE = timedelta(seconds=10)


class DurableEventQueue:
    """The database and the queue; :class:`ServiceUnavailable` only when neither takes it."""

    def __init__(self, queue: EventQueue, sessions: sessionmaker[Session]) -> None:
        self._queue = queue
        self._sessions = sessions

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        return self.publish_many([event])

    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        """Store ``events`` in the inbox and on the queue."""
        if not events:
            return "database+queue"
        now = utcnow()
        try:
            # One Core INSERT of many rows, not the ORM's unit of work: this is the ingest
            # path, and the ORM's bookkeeping was most of its cost. A single statement is its
            # own transaction (all rows or none, committed before it returns): in autocommit
            # there is no BEGIN and no COMMIT to wait for, two round trips of four per batch.
            with self._sessions() as session, session.begin():
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                namespace = namespace_of(session)
                insert_rows(
                    session,
                    INBOX_EVENTS_TABLE,
                    [
                        {
                            "namespace": namespace,
                            "event_id": event.event_id,
                            "message": event.to_message(),
                            "created_at": now,
                        }
                        for event in events
                    ],
                )
        except SQLAlchemyError as exc:
            database_error: SQLAlchemyError | None = exc
            log.warning("database unavailable, %d event(s) only on the queue", len(events))
        else:
            database_error = None
        try:
            self._queue.publish_many(events)
        except ServiceUnavailable as redis_down:
            if database_error is not None:
                raise ServiceUnavailable(
                    f"neither the database nor the queue took the event "
                    f"({database_error.__class__.__name__}; {redis_down})"
                ) from redis_down
            log.warning("queue unavailable: %d event(s) kept in the database", len(events))
            return "database"
        return "queue" if database_error is not None else "database+queue"


def drain_inbox(
    sessions: sessionmaker[Session], now: datetime, *, limit: int
) -> list[AppliedEvent]:
    """Apply inbox events the queue has not applied within the grace, oldest first.

    Applying removes them from the inbox in the same transaction, and is idempotent (the event
    id is recorded), so a racing worker or sweeper applies nothing twice.
    """
    with sessions() as session:
        messages = session.scalars(
            select(InboxEvent.message)
            .where(
                InboxEvent.namespace == namespace_of(session),
                InboxEvent.created_at < now - INBOX_GRACE,
            )
            .order_by(InboxEvent.id)
            .limit(limit)
        ).all()
    if not messages:
        return []
    applied = apply_events(
        sessions, [AlertEventMessage.from_message(message) for message in messages], now
    )
    log.warning("applied %d event(s) the queue had not delivered", len(applied))
    return applied
