"""The API contact's update fields (title, priority, assignments, escalation_level, ...): how the
intake keeps them, when the planner sends them, and what reaches PagerDuty (the simulator's rules
behind httpx.MockTransport)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent, AlertRecord
from tests.fakes import FakePagerDuty
from worker.delivery.outcomes import ReconcileResult, fields_left
from worker.delivery.policy import Create, Done, Update, WaitForTrigger, plan_delivery
from worker.delivery.reconcile import Reconciler
from worker.pipeline.intake import (
    AppliedEvent,
    EventOutcome,
    apply_event,
    apply_events,
    merge_update_fields,
    plan_event,
)
from worker.pipeline.message import SOURCE_API, AlertEventMessage, new_event_id
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED
START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
PRIORITY = {"id": "PPRIO01", "type": "priority_reference"}
ASSIGNED = [{"assignee": {"id": "PUSER01", "type": "user_reference"}}]
POLICY = {"id": "PEP0001", "type": "escalation_policy_reference"}


def event(
    action: AlertStatus | None,
    fields: dict[str, Any] | None = None,
    *,
    alert_id: str = "PBAAAAAAAAAAAAAAAA",
    at: float = 0,
) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_API,
        alert_id=alert_id,
        action=action,
        received_at=START + timedelta(seconds=at),
        title="disk full" if action is T else None,
        service_id="PSVC",
        update_fields=fields,
    )


def record(**values: Any) -> AlertRecord:
    columns: dict[str, Any] = {
        "source": SOURCE_API,
        "source_alert_id": "PBAAAAAAAAAAAAAAAA",
        "cycle": 1,
        "incident_key": "k",
        "service_id": "PSVC",
        "title": "disk full",
        "desired_status": T,
        "delivery_state": DeliveryState.PENDING,
        "attempts": 0,
        "title_from_trigger": True,
        "opened_at": START,
        "pagerduty_incident_id": "PINC",
        "confirmed_status": T,
    }
    columns.update(values)
    return AlertRecord(**columns)


# -- the planner (pure) ----------------------------------------------------------------------


def test_the_fields_ride_with_the_status_update() -> None:
    alert = record(desired_status=A, update_fields={"priority": PRIORITY, "escalation_level": 2})
    assert plan_delivery(alert) == Update("PINC", A, {"priority": PRIORITY, "escalation_level": 2})


def test_with_the_status_where_it_should_be_the_fields_go_alone() -> None:
    alert = record(desired_status=A, confirmed_status=A, update_fields={"assignments": ASSIGNED})
    assert plan_delivery(alert) == Update("PINC", None, {"assignments": ASSIGNED})
    assert plan_delivery(record(desired_status=A, confirmed_status=A)) == Done(
        "incident PINC is acknowledged"
    )


def test_the_resolution_goes_only_with_the_resolve() -> None:
    pending = {"resolution": "disk cleaned", "title": "disk was full"}
    resolving = record(desired_status=R, resolve_received_at=START, update_fields=pending)
    assert plan_delivery(resolving) == Update("PINC", R, pending)
    acknowledging = record(desired_status=A, update_fields=pending)
    step = plan_delivery(acknowledging)
    assert isinstance(step, Update) and step.fields == {"title": "disk was full"}


def test_fields_wait_for_the_incident_to_exist() -> None:
    queued = record(pagerduty_incident_id=None, confirmed_status=None, update_fields={"title": "x"})
    step = plan_delivery(queued)
    assert isinstance(step, Create) and step.forwarded is None
    untitled = record(
        pagerduty_incident_id=None, confirmed_status=None, title=None, update_fields={"title": "x"}
    )
    assert plan_delivery(untitled) == WaitForTrigger()


@pytest.mark.parametrize(("desired", "confirmed"), [(R, R), (A, R)])
def test_fields_alone_are_never_sent_to_a_resolved_incident(
    desired: AlertStatus, confirmed: AlertStatus
) -> None:
    alert = record(desired_status=desired, confirmed_status=confirmed, update_fields={"title": "x"})
    assert isinstance(plan_delivery(alert), Done)


def test_what_pagerduty_took_is_cleared_unless_changed_meanwhile() -> None:
    sent = {"priority": PRIORITY, "title": "a"}
    assert fields_left(sent, sent) is None
    # An update changed the title and added a level while the call was out: those stay.
    meanwhile = {"priority": PRIORITY, "title": "b", "escalation_level": 3}
    assert fields_left(meanwhile, sent) == {"title": "b", "escalation_level": 3}


# -- the intake ------------------------------------------------------------------------------


def test_updates_merge_in_arrival_order_and_one_choice_of_who_is_paged_wins() -> None:
    merged = merge_update_fields(None, {"title": "a", "assignments": ASSIGNED})
    merged = merge_update_fields(merged, {"title": "b", "priority": PRIORITY})
    assert merged == {"title": "b", "assignments": ASSIGNED, "priority": PRIORITY}
    # assignments and an escalation policy never wait together (PagerDuty refuses both).
    merged = merge_update_fields(merged, {"escalation_policy": POLICY})
    assert merged == {"title": "b", "priority": PRIORITY, "escalation_policy": POLICY}
    assert merge_update_fields(merged, {"assignments": ASSIGNED})["assignments"] == ASSIGNED
    assert "escalation_policy" not in (merge_update_fields(merged, {"assignments": ASSIGNED}))
    assert merge_update_fields(merged, None) is merged


def test_what_an_update_with_fields_does_to_the_alert() -> None:
    fields_only = event(None, {"title": "x"}, at=5)
    assert plan_event(None, fields_only) is EventOutcome.OPENED
    assert plan_event(record(), fields_only) is EventOutcome.FIELDS
    assert plan_event(record(desired_status=R), fields_only) is EventOutcome.LATE
    # The status already wanted: an acknowledge again, carrying fields, sends the fields.
    acked = record(desired_status=A)
    assert plan_event(acked, event(A, {"title": "x"}, at=5)) is EventOutcome.FIELDS
    assert plan_event(acked, event(A, at=5)) is EventOutcome.UNCHANGED
    assert plan_event(acked, event(R, {"resolution": "ok"}, at=5)) is EventOutcome.ADVANCED


def test_fields_alone_leave_the_status_and_are_recorded_as_an_update(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    apply_event(sqlite_sessions, event(T), START)
    first = apply_event(sqlite_sessions, event(None, {"priority": PRIORITY}, at=1), START)
    second = apply_event(sqlite_sessions, event(None, {"escalation_level": 2}, at=2), START)
    assert (first.outcome, second.outcome) == (EventOutcome.FIELDS, EventOutcome.FIELDS)
    assert first.needs_delivery
    with sqlite_sessions() as session:
        alert = session.scalars(select(Alert)).one()
        assert alert.desired_status is T
        assert alert.update_fields == {"priority": PRIORITY, "escalation_level": 2}
        rows = session.scalars(select(AlertEvent).order_by(AlertEvent.id)).all()
    assert [(row.action, row.outcome, row.detail) for row in rows] == [
        ("triggered", "opened", None),
        ("update", "fields", "with priority"),
        ("update", "fields", "with escalation_level"),
    ]


def test_a_message_without_update_fields_still_decodes() -> None:
    older = event(A).to_message()
    del older["update_fields"]
    assert AlertEventMessage.from_message(older).update_fields is None
    fields_only = event(None, {"title": "x"})
    assert AlertEventMessage.from_message(fields_only.to_message()) == fields_only


# -- through the reconciler to the simulator --------------------------------------------------


@pytest.fixture
def pagerduty() -> FakePagerDuty:
    return FakePagerDuty()


@pytest.fixture
def reconciler(sqlite_sessions: sessionmaker[Session], pagerduty: FakePagerDuty) -> Reconciler:
    settings = Settings(pagerduty_service_id="PSVC", read_before_acknowledge=False)
    return Reconciler(sqlite_sessions, pagerduty.client(), settings)


def deliver(reconciler: Reconciler, applied: AppliedEvent) -> ReconcileResult:
    assert applied.alert_pk is not None
    return reconciler.reconcile(applied.alert_pk)


def stored(sessions: sessionmaker[Session], alert_id: str = "PBAAAAAAAAAAAAAAAA") -> Alert:
    with sessions() as session:
        return session.scalars(select(Alert).where(Alert.source_alert_id == alert_id)).one()


def simulated(pagerduty: FakePagerDuty, incident_id: str) -> dict[str, Any]:
    return pagerduty.simulator.get_incident(incident_id)


def test_fields_alone_reach_the_incident_and_move_no_status(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    send = apply_event
    deliver(reconciler, send(sqlite_sessions, event(T), START))
    fields = {"priority": PRIORITY, "assignments": ASSIGNED, "title": "disk full on web-1"}
    applied = send(sqlite_sessions, event(None, fields, at=1), START)
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    alert = stored(sqlite_sessions)
    incident = simulated(pagerduty, str(alert.pagerduty_incident_id))
    assert incident["status"] == "triggered"
    assert (incident["priority"], incident["assignments"]) == (PRIORITY, ASSIGNED)
    assert incident["title"] == "disk full on web-1"
    assert alert.update_fields is None and alert.desired_status is T
    assert alert.confirmed_status is T
    # Sent once: a reconcile now has nothing to do.
    calls = len(pagerduty.calls)
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    assert len(pagerduty.calls) == calls


def test_fields_ride_with_the_acknowledge_in_one_put(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    deliver(reconciler, apply_event(sqlite_sessions, event(T), START))
    calls = len(pagerduty.calls)
    applied = apply_event(sqlite_sessions, event(A, {"escalation_level": 2}, at=1), START)
    deliver(reconciler, applied)
    assert len(pagerduty.calls) == calls + 1
    alert = stored(sqlite_sessions)
    incident = pagerduty.simulator.state()["incidents"][0]
    assert incident["status"] == "acknowledged"
    assert incident["fields"] == {"escalation_level": 2}
    assert alert.update_fields is None


def test_fields_sent_before_the_create_was_applied_go_once_it_exists(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    early = apply_event(sqlite_sessions, event(None, {"priority": PRIORITY}, at=1), START)
    assert early.outcome is EventOutcome.OPENED
    assert deliver(reconciler, early) is ReconcileResult.WAITING
    assert pagerduty.calls == []
    created = apply_event(sqlite_sessions, event(T), START)
    assert deliver(reconciler, created) is ReconcileResult.DELIVERED
    incident = pagerduty.simulator.state()["incidents"][0]
    assert (incident["status"], incident["fields"]) == ("triggered", {"priority": PRIORITY})
    assert [method for method, _ in pagerduty.calls] == ["POST", "PUT"]


def test_fields_for_a_resolved_incident_are_recorded_not_sent(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    deliver(reconciler, apply_event(sqlite_sessions, event(T), START))
    resolve = event(R, {"resolution": "disk cleaned"}, at=1)
    deliver(reconciler, apply_event(sqlite_sessions, resolve, START))
    incident = pagerduty.simulator.state()["incidents"][0]
    assert (incident["status"], incident["fields"]) == ("resolved", {"resolution": "disk cleaned"})
    calls = len(pagerduty.calls)
    late = apply_event(sqlite_sessions, event(None, {"assignments": ASSIGNED}, at=2), START)
    assert (late.outcome, late.needs_delivery) == (EventOutcome.LATE, False)
    assert deliver(reconciler, late) is ReconcileResult.DELIVERED
    assert len(pagerduty.calls) == calls
    assert stored(sqlite_sessions).update_fields is None


def test_an_acknowledge_pagerduty_already_had_sends_its_fields_alone_after(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    deliver(reconciler, apply_event(sqlite_sessions, event(T), START))
    incident_id = str(stored(sqlite_sessions).pagerduty_incident_id)
    # A responder acknowledged it and the bridge did not hear of it (no webhooks).
    pagerduty.simulator.respond(incident_id, "acknowledge", "Ann")
    applied = apply_event(sqlite_sessions, event(A, {"priority": PRIORITY}, at=1), START)
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    # Refused whole (1002), then the fields on their own.
    assert simulated(pagerduty, incident_id)["priority"] == PRIORITY
    assert stored(sqlite_sessions).update_fields is None
    with sqlite_sessions() as session:
        details = session.scalars(
            select(AlertEvent.detail).where(AlertEvent.kind == "delivery").order_by(AlertEvent.id)
        ).all()
    assert details[-2:] == [
        f"incident {incident_id} was already acknowledged; priority not applied",
        f"incident {incident_id} is now acknowledged, with priority",
    ]


def test_a_bulk_update_carries_each_incidents_own_fields(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    ids = [f"PB{letter * 16}" for letter in "ABC"]
    created = apply_events(sqlite_sessions, [event(T, alert_id=i) for i in ids], START)
    reconciler.reconcile_many([pk for a in created if (pk := a.alert_pk) is not None])
    calls = len(pagerduty.calls)
    updates = [
        event(A, {"priority": PRIORITY}, alert_id=ids[0], at=1),
        event(A, {"title": "renamed"}, alert_id=ids[1], at=1),
        event(A, alert_id=ids[2], at=1),
    ]
    applied = apply_events(sqlite_sessions, updates, START)
    results = reconciler.reconcile_many([pk for a in applied if (pk := a.alert_pk) is not None])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert pagerduty.calls[calls:] == [("PUT", "/incidents")]
    by_id = {
        alert_id: simulated(pagerduty, str(stored(sqlite_sessions, alert_id).pagerduty_incident_id))
        for alert_id in ids
    }
    assert {incident["status"] for incident in by_id.values()} == {"acknowledged"}
    assert by_id[ids[0]]["priority"] == PRIORITY and "priority" not in by_id[ids[1]]
    assert by_id[ids[1]]["title"] == "renamed" and by_id[ids[2]]["title"] == "disk full"
    # Fields alone for two incidents: one bulk request too, their statuses left as they are.
    fields_only = [
        event(None, {"escalation_level": 2}, alert_id=ids[0], at=2),
        event(None, {"urgency": "low"}, alert_id=ids[1], at=2),
    ]
    applied = apply_events(sqlite_sessions, fields_only, START)
    reconciler.reconcile_many([pk for a in applied if (pk := a.alert_pk) is not None])
    assert pagerduty.calls[calls + 1 :] == [("PUT", "/incidents")]
    assert simulated(pagerduty, by_id[ids[1]]["id"])["urgency"] == "low"
    assert {stored(sqlite_sessions, i).update_fields is None for i in ids} == {True}


def test_fields_for_an_incident_the_bridge_did_not_create_go_after_it_is_read(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    opened = pagerduty.simulator.create_incident(
        {
            "incident": {
                "type": "incident",
                "title": "opened before the bridge",
                "service": {"id": "PSVC", "type": "service_reference"},
            }
        }
    )
    pagerduty.simulator.respond(opened["id"], "acknowledge", "Ann")
    adopted = AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_API,
        alert_id=opened["id"],
        action=None,
        received_at=START,
        incident_id=opened["id"],
        update_fields={"escalation_level": 2},
    )
    applied = apply_event(sqlite_sessions, adopted, START)
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    assert pagerduty.calls == [
        ("GET", f"/incidents/{opened['id']}"),
        ("PUT", f"/incidents/{opened['id']}"),
    ]
    (incident,) = pagerduty.simulator.state()["incidents"]
    assert (incident["status"], incident["fields"]) == ("acknowledged", {"escalation_level": 2})
    alert = stored(sqlite_sessions, opened["id"])
    assert (alert.confirmed_status, alert.update_fields) == (A, None)


def test_an_update_whose_answer_was_lost_sends_its_fields_again_harmlessly(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    deliver(reconciler, apply_event(sqlite_sessions, event(T), START))
    pagerduty.fail_next("update", "lost")
    fields = {"priority": PRIORITY, "title": "disk full on web-1"}
    applied = apply_event(sqlite_sessions, event(A, fields, at=1), START)
    assert deliver(reconciler, applied) is ReconcileResult.RETRY
    assert stored(sqlite_sessions).update_fields == fields  # not known to have landed
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    (incident,) = pagerduty.simulator.state()["incidents"]
    assert (incident["status"], incident["title"]) == ("acknowledged", "disk full on web-1")
    assert incident["fields"] == {"priority": PRIORITY}
    assert [change["to"] for change in incident["status_history"]] == ["triggered", "acknowledged"]
    assert stored(sqlite_sessions).update_fields is None


def test_fields_pagerduty_refuses_are_dropped_and_the_status_goes_alone(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    ids = [f"PB{letter * 16}" for letter in "DE"]
    created = apply_events(sqlite_sessions, [event(T, alert_id=i) for i in ids], START)
    reconciler.reconcile_many([pk for a in created if (pk := a.alert_pk) is not None])
    calls = len(pagerduty.calls)
    # One incident's fields are ones PagerDuty refuses (the simulator: an unknown urgency).
    updates = [
        event(A, {"urgency": "urgent"}, alert_id=ids[0], at=1),
        event(A, {"title": "renamed"}, alert_id=ids[1], at=1),
    ]
    applied = apply_events(sqlite_sessions, updates, START)
    results = reconciler.reconcile_many([pk for a in applied if (pk := a.alert_pk) is not None])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    # The bulk request refused whole, then one by one: the refused fields dropped, the
    # acknowledge sent alone.
    assert [path for _, path in pagerduty.calls[calls:]].count("/incidents") == 1
    refused, renamed = (stored(sqlite_sessions, alert_id) for alert_id in ids)
    assert (refused.update_fields, renamed.update_fields) == (None, None)
    assert (refused.confirmed_status, renamed.confirmed_status) == (A, A)
    assert simulated(pagerduty, str(refused.pagerduty_incident_id))["urgency"] == "high"
    assert simulated(pagerduty, str(renamed.pagerduty_incident_id))["title"] == "renamed"
    with sqlite_sessions() as session:
        outcomes = session.scalars(
            select(AlertEvent.outcome).where(AlertEvent.alert_pk == refused.id)
        ).all()
    assert "fields-refused" in outcomes and "failed" not in outcomes
