"""The reconcile loop against SQLite and the simulator's rules behind httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from tests.fakes import FakePagerDuty, count_plans, trigger_events
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.pipeline.intake import AppliedEvent, EventOutcome, apply_event, apply_events
from worker.pipeline.message import SOURCE_API, SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.sweeper import due_alerts
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED
START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pagerduty() -> FakePagerDuty:
    return FakePagerDuty()


@pytest.fixture
def reconciler(
    sqlite_sessions: sessionmaker[Session], pagerduty: FakePagerDuty, clock: Clock
) -> Reconciler:
    settings = Settings(
        retry_min_backoff=5, retry_max_backoff=300, give_up_after=3600, pagerduty_service_id="PSVC"
    )
    return Reconciler(sqlite_sessions, pagerduty.client(), settings, clock=clock)


Send = Callable[..., AppliedEvent]


@pytest.fixture
def send(sqlite_sessions: sessionmaker[Session], clock: Clock) -> Send:
    """Apply an event as a worker would; ``at`` is the ingress receipt time (seconds)."""

    def _send(
        action: AlertStatus,
        *,
        alert_id: str = "42",
        at: float = 0,
        event_id: str | None = None,
        source: str = SOURCE_COSCALE,
        incident_id: str | None = None,
        title: str | None = "CPU high",
    ) -> AppliedEvent:
        event = AlertEventMessage(
            event_id=event_id or new_event_id(),
            source=source,
            alert_id=alert_id,
            action=action,
            received_at=START + timedelta(seconds=at),
            title=title if source == SOURCE_COSCALE or action is T else None,
            details="Message: CPU high",
            service_id="PSVC",
            incident_id=incident_id,
        )
        return apply_event(sqlite_sessions, event, clock())

    return _send


def alert(sessions: sessionmaker[Session], alert_id: str = "42", cycle: int | None = None) -> Alert:
    with sessions() as session:
        query = select(Alert).where(Alert.source_alert_id == alert_id)
        if cycle:
            query = query.where(Alert.cycle == cycle)
        found = session.scalars(query.order_by(Alert.cycle.desc())).first()
        assert found is not None
        return found


def deliver(reconciler: Reconciler, applied: AppliedEvent) -> ReconcileResult:
    assert applied.alert_pk is not None
    return reconciler.reconcile(applied.alert_pk)


def test_trigger_acknowledge_resolve(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    assert deliver(reconciler, send(T, at=0)) is ReconcileResult.DELIVERED
    incident = pagerduty.incidents()[0]
    assert incident["status"] == "triggered"
    assert incident["incident_key"] == "pagerbridge/coscale/42/1"
    deliver(reconciler, send(A, at=1))
    assert pagerduty.incidents()[0]["status"] == "acknowledged"
    deliver(reconciler, send(R, at=2))
    row = alert(sqlite_sessions)
    assert (row.pagerduty_incident_id, row.confirmed_status, row.delivery_state) == (
        incident["id"],
        R,
        DeliveryState.DELIVERED,
    )
    assert pagerduty.incidents()[0]["status"] == "resolved"
    assert len(pagerduty.incidents()) == 1


def test_acknowledge_before_trigger_creates_then_acknowledges(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given the acknowledge (received later) is processed first
    ack = send(A, at=5)
    deliver(reconciler, ack)
    # When the trigger (received first) arrives
    trigger = send(T, at=1)
    # Then it only adds its text; one incident, acknowledged
    assert trigger.outcome in (EventOutcome.UNCHANGED, EventOutcome.DETAILS)
    deliver(reconciler, trigger)
    (incident,) = pagerduty.incidents()
    assert incident["status"] == "acknowledged"
    assert [c["to"] for c in incident["status_history"]] == ["triggered", "acknowledged"]
    assert alert(sqlite_sessions).delivery_state is DeliveryState.DELIVERED


def test_resolve_never_triggered_sends_nothing(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    assert deliver(reconciler, send(R, at=0)) is ReconcileResult.DELIVERED
    assert pagerduty.calls == []
    row = alert(sqlite_sessions)
    assert (row.desired_status, row.delivery_state) == (R, DeliveryState.DELIVERED)
    # And a trigger received before that resolve, processed after it, stays silent too.
    late = send(T, at=-1)
    assert late.outcome in (EventOutcome.DETAILS, EventOutcome.LATE)
    assert not late.needs_delivery
    assert pagerduty.calls == []


def test_duplicated_event_is_a_no_op(
    send: Send, reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    first = send(T, event_id="e1")
    deliver(reconciler, first)
    again = send(T, event_id="e1")
    assert again.outcome is EventOutcome.DUPLICATE
    assert deliver(reconciler, again) is ReconcileResult.DELIVERED  # a look, no call
    # A second trigger (another event id) for an open alert changes nothing either.
    assert send(T, at=3).outcome is EventOutcome.UNCHANGED
    assert len(pagerduty.incidents()) == 1
    assert pagerduty.calls == [("POST", "/incidents")]


def test_lost_create_answer_is_adopted_not_doubled(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given PagerDuty creates the incident but the answer is lost
    pagerduty.fail_next("create", "lost")
    assert deliver(reconciler, send(T)) is ReconcileResult.RETRY
    row = alert(sqlite_sessions)
    assert row.delivery_state is DeliveryState.PENDING and row.attempts == 1
    assert row.next_attempt_at is not None and row.next_attempt_at >= clock() + timedelta(seconds=5)
    # When the retry comes due
    clock.advance(400)
    assert due_alerts(sqlite_sessions, clock(), limit=10) == [row.id]
    assert reconciler.reconcile(row.id) is ReconcileResult.DELIVERED
    # Then the duplicate key is refused and the open incident adopted: one incident
    (incident,) = pagerduty.incidents()
    assert alert(sqlite_sessions).pagerduty_incident_id == incident["id"]
    assert pagerduty.simulator.state()["counts"]["duplicate_creates_refused"] == 1
    # And the log and the timeline call it an adoption, not a creation
    lines = [r.getMessage() for r in caplog.records if "incident=" in r.getMessage()]
    assert any(": adopted incident" in line for line in lines), lines
    with sqlite_sessions() as session:
        outcomes = session.scalars(select(AlertEvent.outcome)).all()
    assert "findbykey" in outcomes and "create" not in outcomes


def test_resolve_after_lost_create_finds_and_resolves_the_incident(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty.fail_next("create", "lost")
    deliver(reconciler, send(T, at=0))
    # The resolve arrives while the bridge does not know the incident id
    assert deliver(reconciler, send(R, at=1)) is ReconcileResult.DELIVERED
    (incident,) = pagerduty.incidents()
    assert incident["status"] == "resolved"
    assert alert(sqlite_sessions).pagerduty_incident_id == incident["id"]


def test_a_pruned_alerts_old_incident_is_not_taken_for_the_new_cycles(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given an incident resolved long ago with the key cycle 1 of alert 42 will use again
    # (retention pruned the alert's rows, so its cycles count from 1 once more)
    old = pagerduty.simulator.create_incident(
        {
            "incident": {
                "type": "incident",
                "title": "long ago",
                "service": {"id": "PSVC", "type": "service_reference"},
                "incident_key": "pagerbridge/coscale/42/1",
            }
        }
    )
    pagerduty.simulator.update_incident(
        old["id"], {"incident": {"type": "incident_reference", "status": "resolved"}}
    )
    # When the new trigger's create is answered but the answer lost, and a resolve follows
    pagerduty.fail_next("create", "lost")
    deliver(reconciler, send(T, at=0))
    assert deliver(reconciler, send(R, at=1)) is ReconcileResult.DELIVERED
    # Then the new incident is the one resolved, and the alert maps to it
    new = next(i for i in pagerduty.incidents() if i["id"] != old["id"])
    assert new["status"] == "resolved"
    assert alert(sqlite_sessions).pagerduty_incident_id == new["id"]


def test_retryable_errors_back_off_then_fail_after_give_up_age(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty.fail_next("create", *["503"] * 100)
    applied = send(T)
    waits = []
    while deliver(reconciler, applied) is ReconcileResult.RETRY:
        row = alert(sqlite_sessions)
        assert row.next_attempt_at is not None
        waits.append((row.next_attempt_at - clock()).total_seconds())
        clock.now = row.next_attempt_at
    row = alert(sqlite_sessions)
    assert row.delivery_state is DeliveryState.FAILED
    assert "gave up" in (row.last_error or "") and "503" in (row.last_error or "")
    assert all(5 <= wait <= 300 for wait in waits)
    assert waits[-1] > waits[0]
    assert (clock() - START) >= timedelta(seconds=3600)
    assert pagerduty.incidents() == []


def test_permanent_error_fails_at_once_with_pagerduty_message(
    send: Send,
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    applied = send(T, title="x" * 1025)  # the simulator refuses titles over 1024 characters
    assert deliver(reconciler, applied) is ReconcileResult.FAILED
    row = alert(sqlite_sessions)
    assert row.delivery_state is DeliveryState.FAILED
    assert row.last_error and "400" in row.last_error


def test_credentials_refused_parks_without_spending_attempts(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty.fail_next("create", "401")
    assert deliver(reconciler, send(T)) is ReconcileResult.PARKED
    row = alert(sqlite_sessions)
    assert (row.delivery_state, row.attempts) == (DeliveryState.PARKED, 0)
    clock.advance(600)
    assert due_alerts(sqlite_sessions, clock(), limit=10) == [row.id]
    assert reconciler.reconcile(row.id) is ReconcileResult.DELIVERED


def test_retrigger_after_resolve_opens_a_new_incident(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    deliver(reconciler, send(T, at=0))
    deliver(reconciler, send(R, at=1))
    again = send(T, at=2)
    assert again.outcome is EventOutcome.OPENED
    deliver(reconciler, again)
    first, second = sorted(pagerduty.incidents(), key=lambda i: int(str(i["incident_number"])))
    assert (first["status"], second["status"]) == ("resolved", "triggered")
    assert second["incident_key"] == "pagerbridge/coscale/42/2"
    assert alert(sqlite_sessions).cycle == 2


def test_pending_resolve_of_first_cycle_survives_a_refire(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    deliver(reconciler, send(T, at=0))
    pagerduty.fail_next("update", "503")
    resolve = send(R, at=1)
    assert deliver(reconciler, resolve) is ReconcileResult.RETRY
    deliver(reconciler, send(T, at=2))  # CoScale fires the alert again
    clock.advance(1000)
    for pk in due_alerts(sqlite_sessions, clock(), limit=10):
        reconciler.reconcile(pk)
    statuses = sorted(str(i["status"]) for i in pagerduty.incidents())
    assert statuses == ["resolved", "triggered"]


def test_api_contact_update_for_unknown_pagerduty_id_adopts_it(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
) -> None:
    # An incident PagerDuty opened before the switch to the bridge
    existing = pagerduty.simulator.create_incident(
        {
            "incident": {
                "type": "incident",
                "title": "old",
                "service": {"id": "PSVC", "type": "service_reference"},
            }
        }
    )
    applied = send(
        R, alert_id=str(existing["id"]), source=SOURCE_API, incident_id=str(existing["id"])
    )
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    assert pagerduty.incidents()[0]["status"] == "resolved"


def _foreign_incident(pagerduty: FakePagerDuty, service_id: str) -> str:
    """An incident PagerDuty opened before the switch to the bridge."""
    existing = pagerduty.simulator.create_incident(
        {
            "incident": {
                "type": "incident",
                "title": "old",
                "service": {"id": service_id, "type": "service_reference"},
            }
        }
    )
    return str(existing["id"])


def test_an_adopted_incident_on_another_service_is_left_alone(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    incident_id = _foreign_incident(pagerduty, "PSOMEONE")
    applied = send(R, alert_id=incident_id, source=SOURCE_API, incident_id=incident_id)
    assert deliver(reconciler, applied) is ReconcileResult.FAILED
    # Read, never written
    assert pagerduty.incidents()[0]["status"] == "triggered"
    assert [method for method, _ in pagerduty.calls] == ["GET"]
    assert "not one of this route's" in (alert(sqlite_sessions, incident_id).last_error or "")


def test_a_resolved_adopted_incident_is_never_acknowledged(
    send: Send, reconciler: Reconciler, pagerduty: FakePagerDuty
) -> None:
    # A responder resolved it in PagerDuty; then the API contact acknowledges it
    incident_id = _foreign_incident(pagerduty, "PSVC")
    pagerduty.simulator.update_incident(
        incident_id, {"incident": {"type": "incident_reference", "status": "resolved"}}
    )
    applied = send(A, alert_id=incident_id, source=SOURCE_API, incident_id=incident_id)
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    # It was read, and nothing was sent: an acknowledge would have reopened it
    assert [method for method, _ in pagerduty.calls] == ["GET"]
    assert pagerduty.incidents()[0]["status"] == "resolved"


def test_lease_keeps_a_second_worker_out(
    send: Send,
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
) -> None:
    applied = send(T)
    assert applied.alert_pk is not None
    # Another worker holds the alert's lease
    with sqlite_sessions.begin() as session:
        row = session.get(Alert, applied.alert_pk)
        assert row is not None
        row.lease_owner = "other-worker"
        row.lease_expires_at = clock() + timedelta(seconds=reconciler.settings.lease_seconds)
    assert reconciler.reconcile(applied.alert_pk) is ReconcileResult.BUSY
    # A lease left by a killed worker expires
    clock.advance(reconciler.settings.lease_seconds + 1)
    assert reconciler.reconcile(applied.alert_pk) is ReconcileResult.DELIVERED


def test_a_dead_workers_leases_on_this_machine_are_taken_back_at_once(
    send: Send,
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
) -> None:
    from worker.delivery.leases import release_dead_leases

    dead, alive, elsewhere = (send(T, alert_id=f"l{n}").alert_pk for n in range(3))
    owners = {dead: "host:node1234:4001:aaaa", alive: "host:node1234:4002:bbbb"}
    owners[elsewhere] = "host:othernod:4001:cccc"  # another machine's pid 4001: unknowable
    until = clock() + timedelta(seconds=reconciler.settings.lease_seconds)
    with sqlite_sessions.begin() as session:
        for pk, owner in owners.items():
            row = session.get(Alert, pk)
            assert row is not None
            row.lease_owner, row.lease_expires_at = owner, until
    # Every lease is held: no worker may reconcile these alerts
    assert {reconciler.reconcile(pk) for pk in owners} == {ReconcileResult.BUSY}  # type: ignore[arg-type]

    # A worker starting on node1234, where process 4001 is gone and 4002 runs
    released = release_dead_leases(
        sqlite_sessions, clock(), node="node1234", alive=lambda pid: pid == 4002
    )

    assert released == [dead]
    assert reconciler.reconcile(dead) is ReconcileResult.DELIVERED  # type: ignore[arg-type]
    # The live process's lease and the other machine's stay until they expire
    assert reconciler.reconcile(alive) is ReconcileResult.BUSY  # type: ignore[arg-type]
    assert reconciler.reconcile(elsewhere) is ReconcileResult.BUSY  # type: ignore[arg-type]


def test_a_lease_owner_fits_its_column_and_names_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import socket

    from worker.delivery import leases

    monkeypatch.setattr(socket, "gethostname", lambda: "h:" + "x" * 250)
    owner = leases.lease_owner_id()
    assert len(owner) <= Alert.__table__.c.lease_owner.type.length  # type: ignore[attr-defined]
    node = leases.node_id()
    assert node is not None  # Linux: /proc says
    assert leases.owner_pid(owner, node) == os.getpid()
    assert leases.owner_pid(owner, "othernod") is None
    assert leases.owner_pid("other-worker", node) is None  # an owner of before this format


def test_every_step_is_in_the_timeline(
    send: Send,
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    deliver(reconciler, send(T, at=0))
    deliver(reconciler, send(R, at=1))
    with sqlite_sessions() as session:
        rows = session.scalars(select(AlertEvent).order_by(AlertEvent.id)).all()
    assert [(r.kind, r.action or r.outcome) for r in rows] == [
        ("received", "triggered"),
        ("delivery", "create"),
        ("received", "resolved"),
        ("delivery", "update"),
    ]


# -- the gate: outages, rate limits, credentials, bulk updates --------------------------------


class GateClock:
    """The gate's clock (unix seconds), driven by the test's datetime clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self) -> float:
        return self.clock().timestamp()


@pytest.fixture
def gated(
    sqlite_sessions: sessionmaker[Session], pagerduty: FakePagerDuty, clock: Clock
) -> Reconciler:
    import fakeredis

    from worker.delivery.gate import DeliveryGate

    gate = DeliveryGate(
        fakeredis.FakeRedis(),
        "unit-token",
        clock=GateClock(clock),
        failure_threshold=3,
        rate_per_minute=6000,
        burst=1000,
    )
    settings = Settings(retry_min_backoff=5, retry_max_backoff=300, give_up_after=3600)
    requeued: list[list[int]] = []
    return Reconciler(
        sqlite_sessions,
        pagerduty.client(),
        settings,
        gate=gate,
        clock=clock,
        requeue=requeued.append,
        sleep=lambda seconds: clock.advance(seconds),
    )


def test_outage_parks_without_calls_then_drains_on_recovery(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given PagerDuty answers 503 to everything
    pagerduty.fail_next("create", *["503"] * 1000)
    applied = [send(T, alert_id=f"o{n}", at=n) for n in range(20)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    # Then three calls open the breaker and the rest park, spending no attempt
    assert len(pagerduty.calls) == 3
    assert list(results.values()).count(ReconcileResult.PARKED) == 17
    parked = alert(sqlite_sessions, "o19")
    assert (parked.delivery_state, parked.attempts) == (DeliveryState.PARKED, 0)
    # While down, one probe a second at most
    for _ in range(10):
        clock.advance(0.25)
        gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert len(pagerduty.calls) <= 3 + 3
    # When PagerDuty is back, the probe succeeds and every parked alert is handed back at once
    pagerduty.faults.clear()
    clock.advance(1.1)
    probe = due_alerts(
        sqlite_sessions, clock() + timedelta(hours=1), limit=1000, closed_routes={"default"}
    )
    assert probe and len(probe) <= 4  # pending ones with backoff, plus the oldest parked
    gated.reconcile_many(probe)
    drained: list[list[int]] = gated.requeue.__self__  # type: ignore[union-attr]
    (batch,) = drained
    assert len(batch) == 19 and batch == sorted(batch)  # all but the probe, oldest first
    gated.reconcile_many(batch)
    clock.advance(400)
    gated.reconcile_many(due_alerts(sqlite_sessions, clock(), limit=1000))
    assert len(pagerduty.incidents()) == 20


def test_the_gate_is_asked_once_per_several_calls(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    from worker.delivery.gate import MAX_ADMIT

    gate = gated.gate
    assert gate is not None
    asked: list[int] = []
    told: list[bool] = []
    admit, succeeded = gate.admit, gate.succeeded
    gate.admit = lambda calls=1: asked.append(calls) or admit(calls)  # type: ignore[method-assign]
    gate.succeeded = lambda: told.append(True) or succeeded()  # type: ignore[method-assign]
    applied = [send(T, alert_id=f"g{n}", at=n) for n in range(25)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert len(pagerduty.calls) == 25
    # 25 creates: three round trips to admit them (10, 10, 5) and three to report success
    assert asked == [25, 15, 5] and len(asked) == -(-25 // MAX_ADMIT)
    assert len(told) == 3


def test_a_failure_hands_the_admitted_calls_back_to_the_gate(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    # PagerDuty answers four creates, then fails: the breaker (three in a row) opens and the
    # calls admitted with the failing ones park instead of being made.
    pagerduty.create_faults = lambda alert_id: None if int(alert_id[1:]) < 4 else "503"
    applied = [send(T, alert_id=f"h{n}", at=n) for n in range(20)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert len(pagerduty.calls) == 4 + 3
    assert list(results.values()).count(ReconcileResult.DELIVERED) == 4
    assert list(results.values()).count(ReconcileResult.PARKED) >= 20 - 4 - 3


def test_resolve_burst_goes_out_in_bulk(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
) -> None:
    triggers = [send(T, alert_id=f"b{n}", at=0) for n in range(300)]
    gated.reconcile_many([t.alert_pk for t in triggers if t.alert_pk])
    assert len(pagerduty.incidents()) == 300
    pagerduty.calls.clear()
    resolves = [send(R, alert_id=f"b{n}", at=1) for n in range(300)]
    results = gated.reconcile_many([r.alert_pk for r in resolves if r.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert pagerduty.calls == [("PUT", "/incidents"), ("PUT", "/incidents")]  # 250 + 50
    assert {i["status"] for i in pagerduty.incidents()} == {"resolved"}


def test_bulk_refused_falls_back_to_single_updates(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    triggers = [send(T, alert_id=f"f{n}", at=0) for n in range(3)]
    gated.reconcile_many([t.alert_pk for t in triggers if t.alert_pk])
    # A human resolved one incident in PagerDuty already: the bulk resolve is refused (1001)
    first = alert(sqlite_sessions, "f0").pagerduty_incident_id
    assert first
    pagerduty.simulator.update_incident(
        first, {"incident": {"type": "incident_reference", "status": "resolved"}}
    )
    resolves = [send(R, alert_id=f"f{n}", at=1) for n in range(3)]
    results = gated.reconcile_many([r.alert_pk for r in resolves if r.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert {i["status"] for i in pagerduty.incidents()} == {"resolved"}


def test_429_waits_for_the_reset_without_spending_attempts(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    import httpx

    original = pagerduty.handle
    answers = iter([httpx.Response(429, headers={"ratelimit-reset": "12"})])

    def limited(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or original(request)

    pagerduty.handle = limited  # type: ignore[method-assign]
    gated.client = pagerduty.client()
    applied = send(T, alert_id="r1")
    assert applied.alert_pk is not None
    assert gated.reconcile(applied.alert_pk) is ReconcileResult.WAITING
    row = alert(sqlite_sessions, "r1")
    assert row.attempts == 0 and row.delivery_state is DeliveryState.PENDING
    assert row.next_attempt_at == clock() + timedelta(seconds=12)
    # Every worker sees the pause
    assert gated.gate is not None and gated.gate.admit().wait == pytest.approx(12, abs=0.01)
    clock.advance(12)
    assert gated.reconcile(applied.alert_pk) is ReconcileResult.DELIVERED


def test_refused_credentials_park_every_delivery_and_never_fail(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty.fail_next("create", "401", "401")
    applied = [send(T, alert_id=f"c{n}") for n in range(5)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert set(results.values()) == {ReconcileResult.PARKED}
    assert len(pagerduty.calls) == 1  # the rest park without calling
    assert gated.gate is not None and gated.gate.status().credentials_error
    row = alert(sqlite_sessions, "c4")
    assert row.attempts == 0 and "refused the API token" in (row.last_error or "")
    # A restart with a fixed token resumes
    gated.gate.forget_credentials()
    pagerduty.faults.clear()
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}


def test_a_4xx_answer_ends_an_outage_and_drains_parked_alerts(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given an outage parked some alerts
    pagerduty.fail_next("create", *["503"] * 3)
    parked = [send(T, alert_id=f"q{n}") for n in range(5)]
    gated.reconcile_many([p.alert_pk for p in parked if p.alert_pk])
    assert gated.gate is not None and gated.gate.status().breaker_open
    # When the probe's answer is a permanent 4xx (a title PagerDuty refuses): PagerDuty is up
    clock.advance(1.1)
    refused = send(T, alert_id="too-long", title="x" * 1025)
    assert refused.alert_pk is not None
    assert gated.reconcile(refused.alert_pk) is ReconcileResult.FAILED
    # Then the breaker is closed and the parked alerts are handed back at once
    assert not gated.gate.status().breaker_open
    drained: list[list[int]] = gated.requeue.__self__  # type: ignore[union-attr]
    assert drained and len(drained[-1]) >= 2


def test_acknowledge_arriving_after_its_resolve_is_late_not_a_new_incident(
    send: Send,
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    deliver(reconciler, send(T, at=0))
    deliver(reconciler, send(R, at=2))
    # CoScale's acknowledge reaches the bridge after the resolve
    late = send(A, at=3)
    assert late.outcome is EventOutcome.LATE and not late.needs_delivery
    (incident,) = pagerduty.incidents()
    assert incident["status"] == "resolved"
    assert alert(sqlite_sessions).cycle == 1


def test_a_killed_process_not_yet_reaped_is_not_alive() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from worker.delivery.leases import process_exists

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_exists(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        # Not reaped yet (no wait): a zombie, which os.kill(pid, 0) alone would call alive
        for _ in range(100):
            if not process_exists(child.pid):
                break
            time.sleep(0.02)
        assert not process_exists(child.pid)
    finally:
        child.kill()
        child.wait()
    assert process_exists(os.getpid())


def test_an_event_applied_during_the_call_is_kept_and_delivered_next(
    send: Send, sqlite_sessions: sessionmaker[Session], clock: Clock
) -> None:
    """The reconcile writes back only its own decisions, on the row as it is when the answer
    comes: a resolve applied while the create was in flight is neither lost nor overwritten."""
    pagerduty = FakePagerDuty()
    forward = pagerduty.handle
    during: list[AppliedEvent] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not during:
            during.append(send(R, at=1))  # CoScale resolves while the create is in flight
        return forward(request)

    pagerduty.handle = handle  # type: ignore[method-assign]
    settings = Settings(retry_min_backoff=5, retry_max_backoff=300, give_up_after=3600)
    reconciler = Reconciler(sqlite_sessions, pagerduty.client(), settings, clock=clock)
    assert deliver(reconciler, send(T, at=0)) is ReconcileResult.DELIVERED
    assert during[0].outcome is EventOutcome.ADVANCED
    row = alert(sqlite_sessions)
    assert (row.desired_status, row.resolve_received_at) == (R, START + timedelta(seconds=1))
    assert (row.confirmed_status, row.delivery_state) == (R, DeliveryState.DELIVERED)
    assert row.lease_owner is None and row.title == "CPU high"
    (incident,) = pagerduty.incidents()
    assert incident["status"] == "resolved" and row.pagerduty_incident_id == incident["id"]


# -- the first step taken where the batch is applied (BatchClaim) ---------------------------


def _events(*alert_ids: str, action: AlertStatus = T, at: float = 0) -> list[AlertEventMessage]:
    return trigger_events(*alert_ids, action=action, received_at=START + timedelta(seconds=at))


def test_a_claimed_batch_is_stored_leased_and_reconciled_without_a_planning_transaction(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an alert already open (its acknowledge is a stored cycle's change) and two new ones
    (opened,) = apply_events(sqlite_sessions, _events("c0"), clock())
    reconciler.reconcile_many([opened.alert_pk or 0])
    planned = count_plans(reconciler, monkeypatch)
    claim = reconciler.claim(limit=10)
    applied = apply_events(
        sqlite_sessions,
        [*_events("c0", action=A, at=1), *_events("c1", "c2")],
        clock(),
        claim=claim,
    )
    # Then the transaction that applied the events also took the leases and marked the creates
    with sqlite_sessions() as session:
        rows = {a.source_alert_id: a for a in session.scalars(select(Alert))}
    assert {rows[k].lease_owner for k in ("c0", "c1", "c2")} == {claim.owner}
    assert rows["c1"].create_sent_at == clock() and rows["c0"].create_sent_at is not None
    assert set(claim.first_calls()) == {a.alert_pk for a in applied}
    # And the reconcile starts at the calls: no planning transaction, everything delivered
    results = reconciler.reconcile_many([], claim=claim)
    assert planned == []
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert sorted(i["status"] for i in pagerduty.incidents()) == [
        "acknowledged",
        "triggered",
        "triggered",
    ]
    assert alert(sqlite_sessions, "c1").lease_owner is None


def test_a_claim_leaves_live_leases_alerts_without_a_call_and_alerts_past_its_limit(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an alert another worker holds (a live lease), and one whose expired lease is free
    opened = apply_events(sqlite_sessions, _events("held", "free"), clock())
    reconciler.reconcile_many([a.alert_pk or 0 for a in opened])
    with sqlite_sessions.begin() as session:
        for alert_id, expires in (("held", 30), ("free", -1)):
            row = session.scalars(select(Alert).where(Alert.source_alert_id == alert_id)).one()
            row.lease_owner = f"another-worker-{alert_id}"
            row.lease_expires_at = clock() + timedelta(seconds=expires)
    planned = count_plans(reconciler, monkeypatch)
    claim = reconciler.claim(limit=2)
    # When a batch resolves both, acknowledges an alert never triggered (nothing to call until
    # its trigger's text comes), and opens two more with room left for one
    applied = apply_events(
        sqlite_sessions,
        [
            *_events("held", "free", action=R, at=1),
            *_events("untitled", action=A, at=1),
            *_events("n1", "n2"),
        ],
        clock(),
        claim=claim,
    )
    names = ["held", "free", "untitled", "n1", "n2"]
    pk = dict(zip(names, (a.alert_pk or 0 for a in applied), strict=True))
    # Then it claimed the free one and the first new one only
    assert set(claim.first_calls()) == {pk["free"], pk["n1"]}
    assert alert(sqlite_sessions, "held").lease_owner == "another-worker-held"
    assert alert(sqlite_sessions, "untitled").lease_owner is None
    # And reconcile_many plans the rest itself, as without a claim: the held one is BUSY
    results = reconciler.reconcile_many(
        [a.alert_pk or 0 for a in applied if a.needs_delivery], claim=claim
    )
    assert planned[0] == [pk["held"], pk["untitled"], pk["n2"]]
    assert results[pk["held"]] is ReconcileResult.BUSY
    assert results[pk["untitled"]] is ReconcileResult.WAITING
    assert results[pk["free"]] is results[pk["n1"]] is results[pk["n2"]]
    assert results[pk["n1"]] is ReconcileResult.DELIVERED


def test_a_claim_is_not_kept_when_the_batch_is_applied_again_one_event_at_a_time(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the batch's transaction meets a conflict (another worker opened the same cycle)
    import worker.pipeline.intake as intake

    batch = intake._apply_batch
    conflicts = [True]

    def conflicting(session: Session, events: list[AlertEventMessage], *args: object) -> object:
        result = batch(session, events, *args)  # type: ignore[arg-type]
        if len(events) > 1 and conflicts.pop():
            raise IntegrityError("INSERT", {}, Exception("unique constraint"))
        return result

    monkeypatch.setattr(intake, "_apply_batch", conflicting)
    claim = reconciler.claim(limit=10)
    applied = apply_events(sqlite_sessions, _events("r1", "r2"), clock(), claim=claim)
    # Then the events are applied one by one, unclaimed, and reconciled all the same
    assert claim.first_calls() == {}
    assert {alert(sqlite_sessions, k).lease_owner for k in ("r1", "r2")} == {None}
    results = reconciler.reconcile_many([a.alert_pk or 0 for a in applied], claim=claim)
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert len(pagerduty.incidents()) == 2


# -- several creates in flight at once (Settings.pagerduty_calls_in_flight) ------------------


def _in_flight(reconciler: Reconciler, calls: int) -> list[int]:
    """Let ``reconciler`` send ``calls`` creates at once; the sizes of the groups it sends."""
    reconciler.settings = reconciler.settings.model_copy(
        update={"pagerduty_calls_in_flight": calls}
    )
    client = reconciler.client
    assert client is not None
    sizes: list[int] = []
    create_incidents = client.create_incidents
    client.create_incidents = lambda incidents: (  # type: ignore[method-assign]
        sizes.append(len(incidents)) or create_incidents(incidents)
    )
    return sizes


def test_creates_go_out_together_after_a_slow_start(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    groups = _in_flight(gated, 4)
    creates = [send(T, alert_id=f"f{n}", at=n) for n in range(10)]
    acked = send(A, alert_id="f0", at=20)  # f0's create, then its acknowledge: a single call
    results = gated.reconcile_many([a.alert_pk for a in [*creates, acked] if a.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    # The first create alone, then 2, then 4 (the limit), then the 3 left
    assert groups == [2, 4, 3]
    assert len(pagerduty.incidents()) == 10
    assert [c for c in pagerduty.calls if c[0] == "PUT"] == [("PUT", pagerduty.calls[-1][1])]


def test_one_call_in_flight_sends_creates_one_by_one(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    groups = _in_flight(gated, 1)
    applied = [send(T, alert_id=f"s{n}", at=n) for n in range(5)]
    gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert groups == [] and len(pagerduty.incidents()) == 5


def test_a_failure_in_a_group_counts_the_calls_beside_it_and_narrows_to_one(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    # 1, then 2, then 4 creates in flight; the group of 4 has one 503 among its answers. The
    # calls beside the failure were made and their answers count; then one call at a time
    # again, and three 503s in a row open the breaker: the other ten park without a call.
    groups = _in_flight(gated, 4)
    pagerduty.create_faults = lambda alert_id: (
        "503" if int(alert_id[1:]) in (4, *range(7, 20)) else None
    )
    applied = [send(T, alert_id=f"m{n}", at=n) for n in range(20)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert groups == [2, 4]
    assert len(pagerduty.calls) == 1 + 2 + 4 + 3
    outcome = [results[a.alert_pk] for a in applied if a.alert_pk]
    delivered, retry = ReconcileResult.DELIVERED, ReconcileResult.RETRY
    assert outcome[:10] == [delivered] * 4 + [retry] + [delivered] * 2 + [retry] * 3
    assert outcome[10:] == [ReconcileResult.PARKED] * 10
    assert gated.gate is not None and gated.gate.status().breaker_open


def test_a_refused_token_meets_one_call_not_a_group(
    send: Send, gated: Reconciler, pagerduty: FakePagerDuty
) -> None:
    groups = _in_flight(gated, 4)
    pagerduty.fail_next("create", *["401"] * 100)
    applied = [send(T, alert_id=f"r{n}", at=n) for n in range(12)]
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert groups == [] and len(pagerduty.calls) == 1
    assert set(results.values()) == {ReconcileResult.PARKED}


def test_a_create_in_a_group_whose_answer_was_lost_is_adopted_not_doubled(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    groups = _in_flight(gated, 2)
    # l0's create fails (503, nothing made); l1's is made but the bridge hears 502
    pagerduty.fail_next("create", "503", "lost")
    applied = [send(T, alert_id=f"l{n}", at=n) for n in range(2)]
    first = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert set(first.values()) == {ReconcileResult.RETRY}
    assert len(pagerduty.incidents()) == 1
    # Retried beside a new alert: l0 alone, then l1 and l2 together. l1's create is refused
    # as a duplicate and the incident its lost answer made is adopted.
    third = send(T, alert_id="l2", at=5)
    clock.advance(60)
    due = due_alerts(sqlite_sessions, clock(), limit=10)
    again = gated.reconcile_many([*due, third.alert_pk])
    assert set(again.values()) == {ReconcileResult.DELIVERED}
    assert groups == [2]
    assert len(pagerduty.incidents()) == 3
    lost = alert(sqlite_sessions, "l1")
    assert lost.pagerduty_incident_id == pagerduty.incidents()[0]["id"]


def test_a_task_paces_in_place_briefly_then_hands_the_rest_back_on_the_budgets_schedule(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    from worker.delivery.gated_calls import MAX_PACING_IN_PLACE

    # Given a budget of one call a second with a burst of two, and ten creates waiting
    gate = gated.gate
    assert gate is not None
    gate.rate_per_minute, gate.burst = 60, 2
    applied = [send(T, alert_id=f"p{n}", at=n) for n in range(10)]
    started = clock()

    # When one task reconciles them
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])

    # Then it sends the burst and what MAX_PACING_IN_PLACE seconds of waiting allow, no more
    sent = 2 + int(MAX_PACING_IN_PLACE)
    assert len(pagerduty.calls) == sent
    assert list(results.values()).count(ReconcileResult.DELIVERED) == sent
    assert list(results.values()).count(ReconcileResult.WAITING) == 10 - sent
    # And the rest wait in the database, spending no attempt, due one a second (the budget's
    # pace) from when the gate has a token again
    rows = [alert(sqlite_sessions, f"p{n}") for n in range(sent, 10)]
    assert {(row.delivery_state, row.attempts) for row in rows} == {(DeliveryState.PENDING, 0)}
    due = [row.next_attempt_at for row in rows]
    assert all(later is not None for later in due)
    offsets = [(moment - started).total_seconds() for moment in due if moment is not None]
    assert offsets == [
        pytest.approx(MAX_PACING_IN_PLACE + n + 1, abs=0.01) for n in range(10 - sent)
    ]


def test_a_create_waiting_for_the_budget_is_withdrawn_when_its_alert_resolves_meanwhile(
    send: Send,
    gated: Reconciler,
    pagerduty: FakePagerDuty,
    clock: Clock,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given a budget of one call a second with a burst of one, and three creates planned
    gate = gated.gate
    assert gate is not None
    gate.rate_per_minute, gate.burst = 60, 1
    applied = [send(T, alert_id=f"w{n}", at=n) for n in range(3)]

    # When, while the task waits for the budget, the intake applies a resolve of the last
    waits: list[float] = []

    def resolve_while_waiting(seconds: float) -> None:
        if not waits:
            send(R, alert_id="w2", at=10)
        waits.append(seconds)
        clock.advance(seconds)

    gated.sleep = resolve_while_waiting
    results = gated.reconcile_many([a.alert_pk for a in applied if a.alert_pk])

    # Then its create is not sent: nobody is paged for an alert that is over
    created = {incident["incident_key"].split("/")[2] for incident in pagerduty.incidents()}
    assert created == {"w0", "w1"}
    assert waits, "the task never waited for the budget"
    # And, planned again, the alert ends without an incident (a look-up by key at most: its
    # create mark was committed before the wait)
    withdrawn = alert(sqlite_sessions, "w2")
    assert withdrawn.pagerduty_incident_id is None
    assert results[withdrawn.id] is ReconcileResult.WAITING
    clock.advance(5)
    again = gated.reconcile_many(due_alerts(sqlite_sessions, clock(), limit=10))
    assert again == {withdrawn.id: ReconcileResult.DELIVERED}
    assert alert(sqlite_sessions, "w2").pagerduty_incident_id is None
    assert [method for method, _ in pagerduty.calls].count("POST") == 2
