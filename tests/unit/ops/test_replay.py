from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert
from worker.ops.replay import replay
from worker.pipeline.intake import apply_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.vocabulary import AlertStatus, DeliveryState

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def failed_alert(sessions: sessionmaker[Session], alert_id: str) -> None:
    apply_event(
        sessions,
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id=alert_id,
            action=AlertStatus.TRIGGERED,
            received_at=NOW,
            title="t",
            service_id="P",
        ),
        NOW,
    )
    with sessions.begin() as session:
        alert = session.scalars(select(Alert).where(Alert.source_alert_id == alert_id)).one()
        alert.delivery_state = DeliveryState.FAILED
        alert.attempts = 40
        alert.last_error = "gave up after 40 attempts"
        alert.next_attempt_at = None


def test_replay_failed_puts_them_back_due_now(sqlite_sessions: sessionmaker[Session]) -> None:
    for alert_id in ("a", "b"):
        failed_alert(sqlite_sessions, alert_id)
    later = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert sorted(replay(sqlite_sessions, later, all_failed=True)) == ["coscale:a", "coscale:b"]
    with sqlite_sessions() as session:
        alerts = session.scalars(select(Alert)).all()
    for alert in alerts:
        assert (alert.delivery_state, alert.attempts, alert.next_attempt_at, alert.last_error) == (
            DeliveryState.PENDING,
            0,
            later,
            None,
        )
        assert alert.pending_since == later  # a fresh give-up clock
    assert replay(sqlite_sessions, later, all_failed=True) == []


def test_replay_by_id_only_that_alert(sqlite_sessions: sessionmaker[Session]) -> None:
    failed_alert(sqlite_sessions, "a")
    failed_alert(sqlite_sessions, "b")
    assert replay(sqlite_sessions, NOW, alert_ids=["b", "unknown"]) == ["coscale:b"]
    with sqlite_sessions() as session:
        rows = session.execute(select(Alert.source_alert_id, Alert.delivery_state))
        states = {alert_id: state for alert_id, state in rows}
    assert states == {"a": DeliveryState.FAILED, "b": DeliveryState.PENDING}
