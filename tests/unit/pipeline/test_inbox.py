"""Every accepted event is kept in the database and queued; the inbox catches what the queue
loses (a killed worker's prefetched messages, a flushed Redis, a Redis that was down)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, InboxEvent, make_engine, make_session_factory, utcnow
from tests.fakes import ListQueue
from worker.errors import ServiceUnavailable
from worker.ingress.app import create_app
from worker.pipeline.inbox import INBOX_GRACE, DurableEventQueue, drain_inbox
from worker.pipeline.intake import apply_events
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.settings import Settings
from worker.vocabulary import AlertStatus


def event(alert_id: str = "9", action: AlertStatus = AlertStatus.TRIGGERED) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=action,
        received_at=utcnow(),
        title="t",
        service_id="P1",
    )


def count(sessions: sessionmaker[Session], model: type[InboxEvent] | type[Alert]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def after_grace() -> datetime:
    return utcnow() + INBOX_GRACE + timedelta(seconds=1)


def test_event_is_kept_in_both_until_a_worker_applies_it(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    queue = ListQueue()
    assert DurableEventQueue(queue, sqlite_sessions).publish(event()) == "database+queue"
    assert len(queue.events) == 1 and count(sqlite_sessions, InboxEvent) == 1
    # The worker applies it from the queue: the inbox row goes in the same transaction
    apply_events(sqlite_sessions, queue.events, utcnow())
    assert count(sqlite_sessions, InboxEvent) == 0
    assert drain_inbox(sqlite_sessions, after_grace(), limit=10) == []


def test_queue_lost_the_message_the_inbox_delivers_it(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    queue = ListQueue()
    durable = DurableEventQueue(queue, sqlite_sessions)
    durable.publish(event("9"))
    durable.publish(event("9", AlertStatus.RESOLVED))
    queue.events.clear()  # a worker killed holding them, or a flushed Redis
    # Not before the grace: the queue may still be on its way
    assert drain_inbox(sqlite_sessions, utcnow(), limit=10) == []
    applied = drain_inbox(sqlite_sessions, after_grace(), limit=10)
    assert [a.outcome.value for a in applied] == ["opened", "advanced"]
    assert count(sqlite_sessions, InboxEvent) == 0
    with sqlite_sessions() as session:
        assert session.scalars(select(Alert)).one().desired_status is AlertStatus.RESOLVED


def test_redis_down_keeps_the_event_in_the_database(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    durable = DurableEventQueue(ListQueue(broken=True), sqlite_sessions)
    assert durable.publish(event()) == "database"
    assert count(sqlite_sessions, InboxEvent) == 1


def test_database_down_still_queues(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # no schema: inserts fail
    queue = ListQueue()
    assert DurableEventQueue(queue, make_session_factory(engine)).publish(event()) == "queue"
    assert len(queue.events) == 1
    engine.dispose()


def test_neither_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")
    durable = DurableEventQueue(ListQueue(broken=True), make_session_factory(engine))
    with pytest.raises(ServiceUnavailable, match="neither the database nor the queue"):
        durable.publish(event())
    engine.dispose()


def test_ingress_answers_202_from_the_database(sqlite_sessions: sessionmaker[Session]) -> None:
    token = "tok-0123456789abcdef0123456789abcdef"
    settings = Settings(ingress_tokens=token, pagerduty_service_id="P1")  # type: ignore[arg-type]
    queue = DurableEventQueue(ListQueue(broken=True), sqlite_sessions)
    app = create_app(settings, queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None)
    with TestClient(app) as client:
        answer = client.post(
            "/webhooks/coscale",
            headers={"Authorization": f"Bearer {token}"},
            json={"alert_id": "5", "action": "triggered"},
        )
    assert answer.status_code == 202
    assert answer.json()["queued_in"] == "database"


# -- a database that does not answer, and what Redis can promise ------------------------------


class FrozenDatabase:
    """A SQLite database whose statements wait while it is frozen (a PostgreSQL stopped with
    SIGSTOP: connected, and silent)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.thawed = threading.Event()
        self.statements = 0
        engine = sessions.kw["bind"]

        @sqlalchemy_event.listens_for(engine, "before_cursor_execute")
        def _wait(*_args: object) -> None:
            self.statements += 1
            self.thawed.wait()


class Confirmations:
    """The durability check: counts confirmations, refuses when told to."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.calls = 0
        self.refuse = refuse

    def confirm(self) -> None:
        self.calls += 1
        if self.refuse:
            raise ServiceUnavailable("Redis cannot confirm the event is on disk (fake)")


def test_a_frozen_database_is_waited_for_until_the_deadline_then_not_at_all(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given a database that stops answering
    frozen = FrozenDatabase(sqlite_sessions)
    queue, confirmations = ListQueue(), Confirmations()
    durable = DurableEventQueue(
        queue, sqlite_sessions, store_deadline=0.05, durability=confirmations
    )
    # When events come, the first waits out the deadline and goes on the queue alone, made
    # durable there; the next ones do not wait for the database at all
    assert [durable.publish(event(str(n))) for n in range(3)] == ["queue"] * 3
    assert len(queue.events) == 3 and confirmations.calls == 3
    statements_while_frozen = frozen.statements
    assert statements_while_frozen == 1
    # Then, thawed, the stuck write lands and the database is used again
    frozen.thawed.set()
    # The late write lands in a thread of its own; until that thread is done, events still go
    # to the queue alone (its row may be visible a moment before the thread finishes)
    answers: list[str] = []
    for n in range(200):
        answers.append(durable.publish(event(f"after-{n}")))
        if answers[-1] == "database+queue":
            break
        time.sleep(0.05)
    assert answers[-1] == "database+queue"
    assert count(sqlite_sessions, InboxEvent) == 2  # the late write, and the first one after


def test_an_event_on_the_queue_alone_is_refused_when_redis_cannot_confirm_it(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # inserts fail
    durable = DurableEventQueue(
        ListQueue(), make_session_factory(engine), durability=Confirmations(refuse=True)
    )
    with pytest.raises(ServiceUnavailable, match="cannot confirm"):
        durable.publish(event())
    engine.dispose()


def test_the_queue_is_not_asked_to_confirm_what_the_database_holds(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    confirmations = Confirmations(refuse=True)
    durable = DurableEventQueue(
        ListQueue(), sqlite_sessions, store_deadline=1.0, durability=confirmations
    )
    assert durable.publish(event()) == "database+queue"
    assert confirmations.calls == 0
