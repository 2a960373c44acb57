"""The ingress's durable hand-off: every accepted event is written to the database *and* put on
the Celery queue.

The queue is the fast path: a worker applies the event within milliseconds and, in the same
transaction, removes it from the inbox table. The inbox is the safety net for everything the
queue can lose: a worker killed with SIGKILL while holding prefetched messages (they would stay
invisible until the broker's visibility timeout), a Redis that was flushed or restarted without
its data, a Redis that was down when CoScale called. The sweeper applies inbox rows that the
queue has not applied within :data:`INBOX_GRACE`.

CoScale does not retry a failed webhook (docs/coscale.md), so the api answers 2xx when either store
took the event, and 503 only when neither did. Two rules keep that answer quick and true:

- the database has ``store_deadline`` seconds to store a batch
  (``PAGERBRIDGE_INGRESS_STORE_DEADLINE``); past it the batch goes to the queue alone, and while
  that write is still stuck (a database frozen, not refusing) later batches do not wait for it.
  The late write may still land: an event applied twice is applied once (its id is recorded).
- an event on the queue alone is answered 2xx only once Redis has it on disk
  (``worker/pipeline/durability.py``), else 503 saying why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timedelta
from queue import SimpleQueue
from typing import Protocol

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


class DurabilityCheck(Protocol):
    def confirm(self) -> None:
        """Return once the queue's last write is on disk, or raise ServiceUnavailable."""


class DurableEventQueue:
    """The database and the queue; :class:`ServiceUnavailable` only when neither takes it.

    Without ``store_deadline`` the database write is waited for however long it takes; without
    ``durability`` the queue's acknowledgement counts as durable.
    """

    def __init__(
        self,
        queue: EventQueue,
        sessions: sessionmaker[Session],
        *,
        store_deadline: float | None = None,
        durability: DurabilityCheck | None = None,
    ) -> None:
        self._queue = queue
        self._sessions = sessions
        self._store_deadline = store_deadline
        self._durability = durability
        # One thread: a write stuck on a frozen database holds it, and no other joins the wait.
        self._store_thread = _StoreThread()
        self._stuck: Future[None] | None = None

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        return self.publish_many([event])

    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        """Store ``events`` in the inbox and on the queue."""
        if not events:
            return "database+queue"
        database_error = self._store(events)
        if database_error is not None:
            log.warning(
                "database unavailable (%s): %d event(s) only on the queue",
                database_error,
                len(events),
            )
        try:
            self._queue.publish_many(events)
        except ServiceUnavailable as redis_down:
            if database_error is not None:
                raise ServiceUnavailable(
                    f"neither the database nor the queue took the event "
                    f"({database_error}; {redis_down})"
                ) from redis_down
            log.warning("queue unavailable: %d event(s) kept in the database", len(events))
            return "database"
        if database_error is None:
            return "database+queue"
        if self._durability is not None:
            self._durability.confirm()
        log.warning(
            "database unavailable (%s): %d event(s) only on the queue", database_error, len(events)
        )
        return "queue"

    def _store(self, events: Sequence[AlertEventMessage]) -> str | None:
        """Write ``events`` to the inbox within the deadline; why not, or ``None``."""
        if self._store_deadline is None:
            return _failure(lambda: self._insert(events))
        if self._stuck is not None:
            if not self._stuck.done():
                return "a previous write is still waiting for it"
            self._stuck = None
        write = self._store_thread.submit(lambda: self._insert(events))
        try:
            write.result(timeout=self._store_deadline)
        except FutureTimeout:
            self._stuck = write
            return f"no answer within {self._store_deadline:g}s"
        except SQLAlchemyError as exc:
            return type(exc).__name__
        return None

    def _insert(self, events: Sequence[AlertEventMessage]) -> None:
        now = utcnow()
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


class _StoreThread:
    """One daemon thread running writes in turn. Not a ThreadPoolExecutor: the interpreter
    joins those at exit, and a write stuck on a frozen database would hold the api's exit."""

    def __init__(self) -> None:
        self._jobs: SimpleQueue[tuple[Callable[[], None], Future[None]]] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, write: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((write, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inbox-store", daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            write, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                write()
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)
            else:
                future.set_result(None)


def _failure(write: Callable[[], None]) -> str | None:
    try:
        write()
    except SQLAlchemyError as exc:
        return type(exc).__name__
    return None


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
