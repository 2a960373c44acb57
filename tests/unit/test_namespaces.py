"""Two bridges on one database: each session factory works for one namespace, and every
apply, sweep, drain, prune, recovery and look-up sees that bridge's rows alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, Base, make_engine, make_session_factory, utcnow
from tests.fakes import ListQueue
from worker.ops.rejected import QuarantineBounds, Rejection, find, keep, listing
from worker.ops.replay import replay
from worker.ops.report import alert_histories, delivery_report, list_alerts
from worker.pipeline.inbox import INBOX_GRACE, DurableEventQueue, drain_inbox
from worker.pipeline.intake import apply_events
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.retention import count_expired, prune
from worker.pipeline.sweeper import due_alerts, wake_parked
from worker.vocabulary import AlertStatus, DeliveryState

Bridges = tuple[sessionmaker[Session], sessionmaker[Session]]


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[Bridges]:
    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    Base.metadata.create_all(engine)
    yield make_session_factory(engine), make_session_factory(engine, "east")
    engine.dispose()


def event(alert_id: str, action: AlertStatus = AlertStatus.TRIGGERED) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=action,
        received_at=utcnow(),
        title="t",
        service_id="P1",
    )


def rows(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with sessions() as session:
        found = session.execute(
            select(Alert.namespace, Alert.source_alert_id, Alert.incident_key).order_by(Alert.id)
        ).all()
    return [(ns, alert_id, key) for ns, alert_id, key in found]


def test_the_same_alert_id_in_two_bridges_is_two_alerts(bridges: Bridges) -> None:
    default, east = bridges
    first = apply_events(default, [event("42")], utcnow())[0]
    second = apply_events(east, [event("42")], utcnow())[0]
    assert first.alert_pk != second.alert_pk
    assert (first.outcome.value, second.outcome.value) == ("opened", "opened")
    assert rows(default) == [
        ("pagerbridge", "42", "pagerbridge/coscale/42/1"),
        ("east", "42", "pagerbridge@east/coscale/42/1"),
    ]
    # A resolve in one bridge resolves that bridge's alert only
    apply_events(east, [event("42", AlertStatus.RESOLVED)], utcnow())
    with default() as session:
        statuses = dict(session.execute(select(Alert.namespace, Alert.desired_status)).all())
    assert statuses == {"pagerbridge": AlertStatus.TRIGGERED, "east": AlertStatus.RESOLVED}


def test_sweeps_and_recovery_take_their_own_bridges_alerts(bridges: Bridges) -> None:
    default, east = bridges
    mine = apply_events(default, [event("a")], utcnow())[0].alert_pk
    theirs = apply_events(east, [event("b")], utcnow())[0].alert_pk
    later = utcnow() + timedelta(minutes=5)
    assert due_alerts(default, later, limit=100) == [mine]
    assert due_alerts(east, later, limit=100) == [theirs]
    with default.begin() as session:
        for found in session.scalars(select(Alert)):
            found.delivery_state = DeliveryState.PARKED
    assert wake_parked(east, later) == 1


def test_an_inbox_is_drained_by_its_own_bridge(bridges: Bridges) -> None:
    default, east = bridges
    DurableEventQueue(ListQueue(), default).publish(event("x"))
    DurableEventQueue(ListQueue(), east).publish(event("y"))
    later = utcnow() + INBOX_GRACE + timedelta(seconds=1)
    drained = drain_inbox(east, later, limit=10)
    assert len(drained) == 1
    assert [(ns, alert_id) for ns, alert_id, _ in rows(default)] == [("east", "y")]


def test_prune_replay_and_reports_stay_in_their_bridge(bridges: Bridges) -> None:
    default, east = bridges
    for sessions in bridges:
        apply_events(sessions, [event("42"), event("42", AlertStatus.RESOLVED)], utcnow())
    with default.begin() as session:
        for found in session.scalars(select(Alert)):
            found.delivery_state = DeliveryState.DELIVERED
            found.updated_at = utcnow() - timedelta(days=400)
    cutoff = utcnow() - timedelta(days=30)
    assert count_expired(east, cutoff).alerts == 1
    assert prune(east, cutoff).alerts == 1
    assert [ns for ns, _, _ in rows(default)] == ["pagerbridge"]
    with east() as session:
        assert list_alerts(session) == []
        assert alert_histories(session, "42") == []
        assert sum(delivery_report(session, utcnow())["by_state"].values()) == 0
    with default.begin() as session:
        session.execute(Alert.__table__.update().values(delivery_state=DeliveryState.FAILED.value))
    assert replay(east, utcnow(), all_failed=True) == []
    assert replay(default, utcnow(), all_failed=True) == ["coscale:42"]


def test_rejected_requests_are_kept_and_listed_per_bridge(bridges: Bridges) -> None:
    default, east = bridges
    bounds = QuarantineBounds(max_rows=1, max_age_days=30)
    rejection = Rejection("POST", "/webhooks/coscale", 400, "bad", b"{", 1)
    with default.begin() as session:
        (kept,) = keep(session, [rejection], bounds, utcnow())
    with east.begin() as session:
        keep(session, [rejection], bounds, utcnow())  # its own bound: the other's row stays
    with default() as session:
        assert [row["id"] for row in listing(session, limit=10)] == [kept]
        assert find(session, kept) is not None
    with east() as session:
        assert find(session, kept) is None
        assert len(listing(session, limit=10)) == 1
