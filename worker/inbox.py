"""The database as a second queue, for when Redis does not take an event."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models import InboxEvent
from worker.errors import ServiceUnavailable
from worker.event import AlertEventMessage
from worker.intake import AppliedEvent, apply_event
from worker.queue import EventQueue, QueuedIn

log = logging.getLogger(__name__)


class FallbackEventQueue:
    """Redis first; the database when Redis is unreachable; :class:`ServiceUnavailable` (so a
    503) only when neither takes the event."""

    def __init__(self, primary: EventQueue, sessions: sessionmaker[Session]) -> None:
        self._primary = primary
        self._sessions = sessions

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        try:
            return self._primary.publish(event)
        except ServiceUnavailable as redis_down:
            try:
                with self._sessions.begin() as session:
                    session.add(InboxEvent(event_id=event.event_id, message=event.to_message()))
            except SQLAlchemyError as exc:
                raise ServiceUnavailable(
                    f"neither the queue nor the database took the event ({redis_down}; {exc})"
                ) from exc
            log.warning("Redis unreachable: event %s kept in the database", event.event_id)
            return "database"


def drain_inbox(
    sessions: sessionmaker[Session], now: datetime, *, limit: int
) -> list[AppliedEvent]:
    """Apply events the ingress stored in the database, oldest first, then forget them.

    Applying is idempotent (the event id is recorded), so two sweepers racing, or a crash
    between applying and deleting, apply nothing twice.
    """
    with sessions() as session:
        rows = session.execute(
            select(InboxEvent.id, InboxEvent.message).order_by(InboxEvent.id).limit(limit)
        ).all()
    applied = []
    for row_id, message in rows:
        applied.append(apply_event(sessions, AlertEventMessage.from_message(message), now))
        with sessions.begin() as session:
            session.execute(delete(InboxEvent).where(InboxEvent.id == row_id))
    if applied:
        log.info("applied %d event(s) kept in the database while Redis was down", len(applied))
    return applied
