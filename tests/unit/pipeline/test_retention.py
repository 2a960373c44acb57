"""Retention deletes only what the bridge is done with, in bounded batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from worker.pipeline.celery_app import PRUNE_TASK, create_celery
from worker.pipeline.retention import count_expired, prune, retention_cutoff
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CUTOFF = retention_cutoff(NOW, 30)
OLD = CUTOFF - timedelta(days=1)
RECENT = CUTOFF + timedelta(days=1)

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED
DELIVERED, PENDING = DeliveryState.DELIVERED, DeliveryState.PENDING
PARKED, FAILED = DeliveryState.PARKED, DeliveryState.FAILED


def add_alert(
    sessions: sessionmaker[Session],
    alert_id: str,
    *,
    desired: AlertStatus = R,
    state: DeliveryState = DELIVERED,
    updated: datetime = OLD,
    cycle: int = 1,
    events: int = 2,
) -> int:
    """An alert cycle last updated at ``updated``, with ``events`` rows in its timeline."""
    with sessions.begin() as session:
        alert = Alert(
            source="coscale",
            source_alert_id=alert_id,
            cycle=cycle,
            incident_key=f"pagerbridge/coscale/{alert_id}/{cycle}",
            desired_status=desired,
            confirmed_status=desired if state is DELIVERED else None,
            delivery_state=state,
            opened_at=updated - timedelta(hours=1),
            created_at=updated - timedelta(hours=1),
            updated_at=updated,
        )
        session.add(alert)
        session.flush()
        for _ in range(events):
            session.add(
                AlertEvent(
                    alert_pk=alert.id,
                    source="coscale",
                    source_alert_id=alert_id,
                    kind="received",
                    action="resolved",
                    outcome="advanced",
                )
            )
        return alert.id


def remaining(sessions: sessionmaker[Session]) -> tuple[set[tuple[str, int]], int]:
    """(source alert id and cycle of every alert left, number of events left)."""
    with sessions() as session:
        alerts = {(a.source_alert_id, a.cycle) for a in session.scalars(select(Alert))}
        events = session.scalar(select(func.count()).select_from(AlertEvent))
    return alerts, int(events or 0)


def test_deletes_old_delivered_resolved_alerts_and_their_events_only(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given one alert the bridge is done with, and every kind it is not done with
    add_alert(sqlite_sessions, "done")
    kept: dict[str, dict[str, Any]] = {
        "recent": dict(updated=RECENT),
        "at-cutoff": dict(updated=CUTOFF),
        "open-triggered": dict(desired=T),
        "open-acknowledged": dict(desired=A),
        "resolve-pending": dict(state=PENDING),
        "resolve-parked": dict(state=PARKED),
        "resolve-failed": dict(state=FAILED),
        "trigger-failed": dict(desired=T, state=FAILED),
    }
    for alert_id, fields in kept.items():
        add_alert(sqlite_sessions, alert_id, **fields)

    # When the prune runs
    result = prune(sqlite_sessions, CUTOFF)

    # Then only that alert and its two events are gone
    assert (result.alerts, result.events, result.complete) == (1, 2, True)
    alerts, events = remaining(sqlite_sessions)
    assert alerts == {(alert_id, 1) for alert_id in kept}
    assert events == 2 * len(kept)


def test_an_old_cycle_goes_while_the_alerts_newer_cycle_stays(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given an alert whose first cycle is long over and whose second is open
    add_alert(sqlite_sessions, "flapping", cycle=1, events=3)
    add_alert(sqlite_sessions, "flapping", cycle=2, desired=T, updated=RECENT, events=1)

    # When the prune runs
    result = prune(sqlite_sessions, CUTOFF)

    # Then the first cycle and its events are gone, the second cycle's event is kept
    assert (result.alerts, result.events) == (1, 3)
    assert remaining(sqlite_sessions) == ({("flapping", 2)}, 1)


def test_dry_run_counts_what_prune_deletes_and_deletes_nothing(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    for alert_id in ("a", "b", "c"):
        add_alert(sqlite_sessions, alert_id, events=2)
    add_alert(sqlite_sessions, "open", desired=T)

    counted = count_expired(sqlite_sessions, CUTOFF)

    assert (counted.alerts, counted.events) == (3, 6)
    assert len(remaining(sqlite_sessions)[0]) == 4
    deleted = prune(sqlite_sessions, CUTOFF)
    assert (deleted.alerts, deleted.events) == (counted.alerts, counted.events)


def test_batches_walk_the_whole_table(sqlite_sessions: sessionmaker[Session]) -> None:
    # Given expired alerts interleaved with kept ones, more than one batch of them
    for n in range(7):
        add_alert(sqlite_sessions, f"done-{n}", events=1)
        add_alert(sqlite_sessions, f"open-{n}", desired=T, events=1)

    # When the prune takes two alerts per transaction
    result = prune(sqlite_sessions, CUTOFF, batch_size=2)

    # Then every expired alert is gone and every other one stays
    assert (result.alerts, result.events, result.complete) == (7, 7, True)
    alerts, events = remaining(sqlite_sessions)
    assert alerts == {(f"open-{n}", 1) for n in range(7)}
    assert events == 7


def test_time_budget_stops_between_batches_and_the_next_run_goes_on(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given five expired alerts and a clock that advances 10 s per look
    for n in range(5):
        add_alert(sqlite_sessions, f"done-{n}")
    ticks = count(step=10)

    # When a prune with a 5 s budget runs two alerts per batch
    first = prune(
        sqlite_sessions, CUTOFF, batch_size=2, time_budget=5, clock=lambda: float(next(ticks))
    )

    # Then it stops after its first batch and says more is left; the next run finishes
    assert (first.alerts, first.complete) == (2, False)
    second = prune(sqlite_sessions, CUTOFF, batch_size=2)
    assert (second.alerts, second.complete) == (3, True)
    assert remaining(sqlite_sessions) == (set(), 0)


def test_nothing_to_prune(sqlite_sessions: sessionmaker[Session]) -> None:
    assert prune(sqlite_sessions, CUTOFF).as_dict() == {
        "alerts": 0,
        "events": 0,
        "cutoff": CUTOFF.isoformat(),
        "complete": True,
    }


def test_batch_size_must_be_positive(sqlite_sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        prune(sqlite_sessions, CUTOFF, batch_size=0)


def test_cutoff_is_retention_days_before_now() -> None:
    assert retention_cutoff(NOW, 1.5) == NOW - timedelta(hours=36)


def test_beat_runs_the_prune_hourly() -> None:
    schedule = create_celery(Settings()).conf.beat_schedule
    assert {"task": PRUNE_TASK, "schedule": 3600} in schedule.values()
