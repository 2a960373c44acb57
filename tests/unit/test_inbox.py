"""Redis down, database up: the event is kept in the database and applied later."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, InboxEvent, make_engine, make_session_factory
from tests.fakes import ListQueue
from worker.errors import ServiceUnavailable
from worker.event import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.inbox import FallbackEventQueue, drain_inbox
from worker.ingress.app import create_app
from worker.settings import Settings
from worker.status import AlertStatus

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def event(alert_id: str = "9", action: AlertStatus = AlertStatus.TRIGGERED) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=action,
        received_at=NOW,
        title="t",
        service_id="P1",
    )


def count(sessions: sessionmaker[Session], model: type[InboxEvent] | type[Alert]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_redis_up_uses_the_queue(sqlite_sessions: sessionmaker[Session]) -> None:
    queue = ListQueue()
    assert FallbackEventQueue(queue, sqlite_sessions).publish(event()) == "queue"
    assert len(queue.events) == 1 and count(sqlite_sessions, InboxEvent) == 0


def test_redis_down_keeps_the_event_in_the_database(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    fallback = FallbackEventQueue(ListQueue(broken=True), sqlite_sessions)
    first, second = event("9"), event("9", AlertStatus.RESOLVED)
    assert fallback.publish(first) == "database"
    assert fallback.publish(second) == "database"
    # When the sweeper runs again, both apply, in order, and leave the inbox
    applied = drain_inbox(sqlite_sessions, NOW, limit=10)
    assert [a.outcome.value for a in applied] == ["opened", "advanced"]
    assert count(sqlite_sessions, InboxEvent) == 0
    with sqlite_sessions() as session:
        alert = session.scalars(select(Alert)).one()
    assert alert.desired_status is AlertStatus.RESOLVED
    # A second drain (a racing sweeper) applies nothing twice
    assert drain_inbox(sqlite_sessions, NOW, limit=10) == []


def test_neither_redis_nor_database_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # no schema: inserts fail
    fallback = FallbackEventQueue(ListQueue(broken=True), make_session_factory(engine))
    with pytest.raises(ServiceUnavailable, match="neither the queue nor the database"):
        fallback.publish(event())
    engine.dispose()


def test_ingress_answers_202_from_the_database(sqlite_sessions: sessionmaker[Session]) -> None:
    settings = Settings(ingress_tokens="tok", pagerduty_service_id="P1")  # type: ignore[arg-type]
    queue = FallbackEventQueue(ListQueue(broken=True), sqlite_sessions)
    app = create_app(settings, queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None)
    with TestClient(app) as client:
        answer = client.post(
            "/webhooks/coscale",
            headers={"Authorization": "Bearer tok"},
            json={"alert_id": "5", "action": "triggered"},
        )
    assert answer.status_code == 202
    assert answer.json()["queued_in"] == "database"
    assert count(sqlite_sessions, InboxEvent) == 1
