"""Flap damping: an alert that resolves and fires again within PAGERBRIDGE_FLAP_WINDOW pages
once; its resolve is held for the window, dropped by a re-fire, sent after it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import AlertRecord
from tests.fakes import FakePagerDuty
from tests.unit.delivery.test_reconcile import (  # noqa: F401  (fixtures)
    START,
    Clock,
    Send,
    alert,
    clock,
    deliver,
    pagerduty,
    send,
)
from worker.delivery.flapping import continues_cycle, resolve_held_until
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.pipeline.intake import EventOutcome
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.sweeper import due_alerts
from worker.settings import Settings, get_settings
from worker.vocabulary import AlertStatus, DeliveryState

T, R = AlertStatus.TRIGGERED, AlertStatus.RESOLVED
WINDOW = 60.0


@pytest.fixture
def damped(
    sqlite_sessions: sessionmaker[Session],
    pagerduty: FakePagerDuty,  # noqa: F811
    clock: Clock,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Reconciler:
    """A reconciler, and an intake, with the flap window on."""
    monkeypatch.setenv("PAGERBRIDGE_FLAP_WINDOW", str(WINDOW))
    get_settings.cache_clear()
    settings = Settings(pagerduty_service_id="PSVC")
    assert settings.flap_window == WINDOW
    return Reconciler(sqlite_sessions, pagerduty.client(), settings, clock=clock)


def test_a_refire_within_the_window_keeps_the_incident_open_and_pages_once(
    send: Send,  # noqa: F811
    damped: Reconciler,
    pagerduty: FakePagerDuty,  # noqa: F811
    clock: Clock,  # noqa: F811
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given an alert delivered as an incident
    deliver(damped, send(T, at=0))
    (incident,) = pagerduty.incidents()
    calls = len(pagerduty.calls)

    # When it resolves: the resolve is held, nothing is sent
    clock.advance(10)
    assert deliver(damped, send(R, at=10)) is ReconcileResult.WAITING
    assert len(pagerduty.calls) == calls
    held = alert(sqlite_sessions)
    assert held.next_attempt_at == START + timedelta(seconds=10 + WINDOW)

    # And it fires again 20 s later: the same cycle goes on, triggered
    clock.advance(20)
    refired = send(T, at=30)
    assert refired.outcome is EventOutcome.REFIRED
    assert deliver(damped, refired) is ReconcileResult.DELIVERED
    row = alert(sqlite_sessions)
    assert (row.cycle, row.desired_status, row.delivery_state) == (1, T, DeliveryState.DELIVERED)

    # Then, the window long past, nothing more was sent: one page, the incident still open
    clock.advance(10 * WINDOW)
    for pk in due_alerts(sqlite_sessions, clock(), limit=100):
        damped.reconcile(pk)
    assert len(pagerduty.calls) == calls
    assert [i["status"] for i in pagerduty.incidents()] == ["triggered"]
    assert pagerduty.incidents()[0]["id"] == incident["id"]


def test_a_resolve_goes_once_the_window_is_over_and_a_later_trigger_pages_again(
    send: Send,  # noqa: F811
    damped: Reconciler,
    pagerduty: FakePagerDuty,  # noqa: F811
    clock: Clock,  # noqa: F811
    sqlite_sessions: sessionmaker[Session],
) -> None:
    deliver(damped, send(T, at=0))
    clock.advance(10)
    deliver(damped, send(R, at=10))

    # When the window is over, the sweeper finds the held resolve due and it is sent
    clock.advance(WINDOW)
    due = due_alerts(sqlite_sessions, clock(), limit=100)
    assert due == [alert(sqlite_sessions).id]
    damped.reconcile(due[0])
    assert [i["status"] for i in pagerduty.incidents()] == ["resolved"]

    # And a trigger after it opens a new cycle, a new incident
    clock.advance(1)
    again = send(T, at=10 + WINDOW + 1)
    assert again.outcome is EventOutcome.OPENED
    deliver(damped, again)
    assert [i["status"] for i in pagerduty.incidents()] == ["resolved", "triggered"]


def test_a_resolve_of_an_alert_never_sent_is_not_held(
    send: Send,  # noqa: F811
    damped: Reconciler,
    pagerduty: FakePagerDuty,  # noqa: F811
) -> None:
    send(T, at=0)
    # Resolved before its create went out: nothing is owed, nothing held
    assert deliver(damped, send(R, at=1)) is ReconcileResult.DELIVERED
    assert pagerduty.calls == []


def _alert(**values: object) -> AlertRecord:
    fields: dict[str, object] = {
        "source": SOURCE_COSCALE,
        "source_alert_id": "a",
        "cycle": 1,
        "incident_key": "k",
        "desired_status": R,
        "delivery_state": DeliveryState.PENDING,
        "attempts": 0,
        "title_from_trigger": True,
        "opened_at": START,
        "resolve_received_at": START,
        "pagerduty_incident_id": "PINC",
        "confirmed_status": T,
    }
    fields.update(values)
    return AlertRecord(**fields)  # type: ignore[arg-type]


def _trigger(at: float) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id="a",
        action=T,
        received_at=START + timedelta(seconds=at),
        title="t",
    )


@pytest.mark.parametrize(
    ("values", "now", "held"),
    [
        ({}, 0, True),
        ({}, WINDOW - 1, True),
        ({}, WINDOW, False),  # the window is over
        ({"confirmed_status": R}, 0, False),  # resolved already
        ({"desired_status": T}, 0, False),  # no resolve wanted
        ({"pagerduty_incident_id": None}, 0, False),  # never paged (create not sent)
    ],
)
def test_resolve_held_until(values: dict[str, object], now: float, held: bool) -> None:
    until = resolve_held_until(
        _alert(**values), START + timedelta(seconds=now), timedelta(seconds=WINDOW)
    )
    assert (until is not None) is held
    if held:
        assert until == START + timedelta(seconds=WINDOW)
    # And with no window, nothing is ever held
    assert resolve_held_until(_alert(**values), START, timedelta(0)) is None


@pytest.mark.parametrize(
    ("values", "at", "continues"),
    [
        ({}, 1, True),
        ({}, WINDOW, True),
        ({}, WINDOW + 1, False),  # after the window: a new cycle
        ({}, 0, False),  # not after the resolve: a late trigger, not a re-fire
        ({"confirmed_status": R}, 1, False),  # the resolve reached PagerDuty
        ({"desired_status": T}, 1, False),  # still firing: a repeated trigger
    ],
)
def test_continues_cycle(values: dict[str, object], at: float, continues: bool) -> None:
    window = timedelta(seconds=WINDOW)
    assert continues_cycle(_alert(**values), _trigger(at), window) is continues
    assert continues_cycle(_alert(**values), _trigger(at), timedelta(0)) is False
