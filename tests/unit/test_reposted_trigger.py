"""A trigger posted again after its resolve (a proxy's retry, a replay by hand) is the same
CoScale event: it opens no new cycle. A new firing (a new date or time) still does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from worker.coscale import occurrence
from worker.pipeline.intake import EventOutcome, apply_event, apply_events, plan_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.vocabulary import AlertStatus

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED
START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
FIRED = {"date": "2026-12-05", "time": "12:00:00", "message": "CPU above 90%"}


def event(action: AlertStatus, at: float, **fields: str) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id="42",
        action=action,
        received_at=START + timedelta(seconds=at),
        title="CPU high",
        fields={"alert_id": "42", **fields},
    )


def cycles(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Alert)) or 0)


# ---- the rule (pure) --------------------------------------------------------------------------


def test_occurrence_is_the_date_time_and_message() -> None:
    assert occurrence(FIRED) == occurrence(dict(FIRED))
    assert occurrence(FIRED) != occurrence({**FIRED, "time": "12:05:00"})
    assert occurrence(FIRED) != occurrence({**FIRED, "date": "2026-12-06"})
    assert occurrence(FIRED) != occurrence({**FIRED, "message": "CPU above 95%"})
    # A Format with only {TIMESTAMP} still names the firing
    assert occurrence({"timestamp": "1764936000"}) is not None
    # Fields that are not part of the event do not change it
    assert occurrence(FIRED) == occurrence({**FIRED, "repaired": "true", "app": "shop"})


def test_a_format_without_date_or_time_names_no_occurrence() -> None:
    assert occurrence({"message": "CPU above 90%"}) is None
    assert occurrence({"date": "", "time": "", "message": "x"}) is None


def test_plan_a_trigger_after_the_resolve() -> None:
    from models import AlertRecord

    resolved = AlertRecord(
        cycle=1,
        desired_status=R,
        opened_at=START,
        resolve_received_at=START + timedelta(seconds=5),
        title_from_trigger=True,
        trigger_occurrence=occurrence(FIRED),
    )
    seen = {occurrence(FIRED) or ""}
    assert plan_event(resolved, event(T, 10, **FIRED), seen) is EventOutcome.REPOSTED
    refire = event(T, 10, **{**FIRED, "time": "12:30:00"})
    assert plan_event(resolved, refire, seen) is EventOutcome.OPENED
    # Without a date or time nothing tells them apart: as before, it re-opens
    assert plan_event(resolved, event(T, 10, message="CPU above 90%"), seen) is EventOutcome.OPENED


# ---- applied ----------------------------------------------------------------------------------


def test_a_reposted_trigger_opens_no_new_cycle(sqlite_sessions: sessionmaker[Session]) -> None:
    first = apply_event(sqlite_sessions, event(T, 0, **FIRED), START)
    assert first.outcome is EventOutcome.OPENED
    apply_event(sqlite_sessions, event(R, 5, **FIRED), START)
    # The proxy posts the trigger again, twenty times
    for n in range(20):
        again = apply_event(sqlite_sessions, event(T, 10 + n, **FIRED), START)
        assert (again.outcome, again.needs_delivery) == (EventOutcome.REPOSTED, False)
        assert again.alert_pk == first.alert_pk
    assert cycles(sqlite_sessions) == 1
    with sqlite_sessions() as session:
        recorded = session.scalars(
            select(AlertEvent.outcome).where(AlertEvent.outcome == "reposted")
        ).all()
    assert len(recorded) == 20  # recorded in the timeline, nothing sent


def test_a_real_refire_still_opens_a_cycle(sqlite_sessions: sessionmaker[Session]) -> None:
    apply_event(sqlite_sessions, event(T, 0, **FIRED), START)
    apply_event(sqlite_sessions, event(R, 5, **FIRED), START)
    refire = {**FIRED, "time": "12:10:00"}
    assert apply_event(sqlite_sessions, event(T, 600, **refire), START).outcome is (
        EventOutcome.OPENED
    )
    apply_event(sqlite_sessions, event(R, 700, **refire), START)
    # The first firing posted again after the second resolved: still a re-post
    again = apply_event(sqlite_sessions, event(T, 800, **FIRED), START)
    assert again.outcome is EventOutcome.REPOSTED
    assert cycles(sqlite_sessions) == 2


def test_a_repost_in_the_same_batch_as_the_resolve(sqlite_sessions: sessionmaker[Session]) -> None:
    applied = apply_events(
        sqlite_sessions,
        [event(T, 0, **FIRED), event(R, 5, **FIRED), event(T, 10, **FIRED)],
        START,
    )
    assert [result.outcome for result in applied] == [
        EventOutcome.OPENED,
        EventOutcome.ADVANCED,
        EventOutcome.REPOSTED,
    ]
    assert cycles(sqlite_sessions) == 1


def test_a_cycle_opened_by_an_acknowledge_learns_its_trigger(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    apply_event(sqlite_sessions, event(A, 1, **FIRED), START)
    apply_event(sqlite_sessions, event(T, 0, **FIRED), START)  # the trigger, delivered late
    apply_event(sqlite_sessions, event(R, 5, **FIRED), START)
    assert apply_event(sqlite_sessions, event(T, 10, **FIRED), START).outcome is (
        EventOutcome.REPOSTED
    )


def test_without_a_date_or_time_a_trigger_after_the_resolve_reopens(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    plain = {"message": "CPU above 90%"}
    apply_event(sqlite_sessions, event(T, 0, **plain), START)
    apply_event(sqlite_sessions, event(R, 5, **plain), START)
    assert apply_event(sqlite_sessions, event(T, 10, **plain), START).outcome is (
        EventOutcome.OPENED
    )
    assert cycles(sqlite_sessions) == 2
