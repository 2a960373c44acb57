"""PagerDuty's webhooks: signatures, what each incident event does to its alert cycle, echoes,
de-duplication, and the rules that never undo a responder (no Redis, no worker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertRecord, PagerDutyDelivery
from tests.fakes import FakePagerDuty, ListQueue
from worker.delivery.policy import Done, Inspect, Update, plan_delivery
from worker.delivery.reconcile import Reconciler
from worker.ingress.app import carries_events, create_app
from worker.ingress.signatures import presented_signatures, sign, signature_matches
from worker.pipeline.intake import EventOutcome, apply_event, plan_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.responders import (
    ReportOutcome,
    StatusReport,
    apply_stored_deliveries,
    follow_responder,
    is_echo,
    judge,
    prune_deliveries,
    read_report,
    responder_wish,
)
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

SECRET = "whsec-current-0123456789"
OLD_SECRET = "whsec-previous-0123456789"
TOKEN = "ingress-secret-1-0123456789abcdef01"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
BODY = b'{"event": {"id": "01ABC", "event_type": "incident.resolved"}}'


# -- signatures ---------------------------------------------------------------------------


def test_a_signature_made_with_the_secret_matches() -> None:
    assert signature_matches(BODY, sign(BODY, SECRET), [SECRET])


def test_during_a_rotation_either_entry_matches_either_secret() -> None:
    header = f"{sign(BODY, 'a-new-secret-not-set-yet')}, {sign(BODY, OLD_SECRET)}"
    assert signature_matches(BODY, header, [SECRET, OLD_SECRET])
    assert signature_matches(BODY, f"{sign(BODY, SECRET)},{sign(BODY, OLD_SECRET)}", [SECRET])
    assert not signature_matches(BODY, header, [SECRET])


def test_one_byte_of_the_body_changed_matches_nothing() -> None:
    header = sign(BODY, SECRET)
    changed = BODY.replace(b"resolved", b"resolveD")
    assert len(changed) == len(BODY) and changed != BODY
    assert not signature_matches(changed, header, [SECRET])


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=", "v1=zz" + "0" * 62, "v1=abc", "v0=" + "0" * 64, "sha256=00", ",,,"],
)
def test_a_missing_or_malformed_header_matches_nothing(header: str | None) -> None:
    assert not signature_matches(BODY, header, [SECRET])


def test_bad_hex_is_skipped_not_fatal() -> None:
    assert presented_signatures("v1=not-hex, v1=00ff") == [b"\x00\xff"]
    assert signature_matches(BODY, f"v1=not-hex,{sign(BODY, SECRET)}", [SECRET])


def test_no_secret_configured_matches_nothing() -> None:
    assert not signature_matches(BODY, sign(BODY, SECRET), [])
    # An empty secret (a trailing comma in the setting) is no secret: HMAC with "" is public.
    assert not signature_matches(BODY, sign(BODY, ""), [""])


# -- reading a delivery -------------------------------------------------------------------


def _event(event_type: str, **data: Any) -> dict[str, Any]:
    return {
        "id": data.pop("event_id", "01" + new_event_id()[:24].upper()),
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": data.pop("occurred_at", "2026-12-01T10:05:00.000Z"),
        "agent": {"type": "user_reference", "summary": data.pop("agent", "Ada Lovelace")},
        "data": {"id": "PINC1", "type": "incident", "incident_key": "key-1", **data},
    }


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("incident.triggered", AlertStatus.TRIGGERED),
        ("incident.acknowledged", AlertStatus.ACKNOWLEDGED),
        ("incident.unacknowledged", AlertStatus.TRIGGERED),
        ("incident.resolved", AlertStatus.RESOLVED),
        ("incident.reopened", AlertStatus.TRIGGERED),
    ],
)
def test_each_incident_event_reports_a_status(event_type: str, status: AlertStatus) -> None:
    report = read_report(_event(event_type))
    assert report.status is status
    assert (report.incident_id, report.incident_key, report.agent) == (
        "PINC1",
        "key-1",
        "Ada Lovelace",
    )


def test_the_incident_status_in_the_data_wins_over_the_event_type() -> None:
    # PagerDuty: acknowledging a resolved incident reopens it, and it is acknowledged.
    report = read_report(_event("incident.reopened", status="acknowledged"))
    assert report.status is AlertStatus.ACKNOWLEDGED


def test_other_event_types_report_no_status() -> None:
    report = read_report({"id": "01X", "event_type": "incident.annotated", "data": {}})
    assert report.status is None
    assert read_report({"id": "01Y", "event_type": "pagey.ping"}).status is None


# -- the rules ---------------------------------------------------------------------------


def _cycle(**columns: Any) -> AlertRecord:
    values: dict[str, Any] = {
        "source": SOURCE_COSCALE,
        "source_alert_id": "a-1",
        "cycle": 1,
        "incident_key": "key-1",
        "desired_status": AlertStatus.TRIGGERED,
        "confirmed_status": AlertStatus.TRIGGERED,
        "delivery_state": DeliveryState.DELIVERED,
        "pagerduty_incident_id": "PINC1",
        "title": "CPU high",
        "service_id": "PSVC",
        "opened_at": T0,
        "create_sent_at": T0,
    }
    values.update(columns)
    return AlertRecord(**values)


def _report(status: AlertStatus, *, at: datetime = T0 + timedelta(minutes=5)) -> StatusReport:
    return StatusReport("01R", "incident.x", "PINC1", "key-1", status, "Ada Lovelace", at)


@pytest.mark.parametrize(
    ("desired", "confirmed", "reported", "wanted", "state"),
    [
        # A responder resolves: nothing is left to send, whatever CoScale wanted.
        ("triggered", "triggered", "resolved", "resolved", "delivered"),
        ("acknowledged", "acknowledged", "resolved", "resolved", "delivered"),
        # A responder acknowledges: CoScale's pending resolve still goes.
        ("triggered", "triggered", "acknowledged", "acknowledged", "delivered"),
        ("resolved", "triggered", "acknowledged", "resolved", "pending"),
        # A responder reopens or unacknowledges: the cycle is open again, nothing is sent.
        ("resolved", "resolved", "triggered", "triggered", "delivered"),
        ("acknowledged", "acknowledged", "triggered", "triggered", "delivered"),
    ],
)
def test_a_responders_change_becomes_the_cycles_status(
    desired: str, confirmed: str, reported: str, wanted: str, state: str
) -> None:
    alert = _cycle(
        desired_status=AlertStatus(desired),
        confirmed_status=AlertStatus(confirmed),
        delivery_state=DeliveryState.PENDING if desired != confirmed else DeliveryState.DELIVERED,
    )
    report = _report(AlertStatus(reported))
    assert judge(alert, report, T0) is ReportOutcome.RESPONDER
    follow_responder(alert, report, T0 + timedelta(minutes=5))
    assert alert.confirmed_status is AlertStatus(reported)
    assert alert.desired_status is AlertStatus(wanted)
    assert alert.delivery_state is DeliveryState(state)
    assert alert.responder == "Ada Lovelace"
    assert alert.pagerduty_event_at == report.occurred_at


def test_responder_wish_never_moves_an_acknowledge_backwards() -> None:
    assert responder_wish(AlertStatus.RESOLVED, AlertStatus.ACKNOWLEDGED) is AlertStatus.RESOLVED
    assert responder_wish(AlertStatus.RESOLVED, AlertStatus.TRIGGERED) is AlertStatus.TRIGGERED


def test_the_status_the_bridge_confirmed_is_an_echo() -> None:
    alert = _cycle(
        desired_status=AlertStatus.ACKNOWLEDGED, confirmed_status=AlertStatus.ACKNOWLEDGED
    )
    assert judge(alert, _report(AlertStatus.ACKNOWLEDGED), T0) is ReportOutcome.ECHO


def test_the_triggered_of_the_bridges_own_create_is_an_echo() -> None:
    alert = _cycle(confirmed_status=None, pagerduty_incident_id=None)
    assert is_echo(alert, AlertStatus.TRIGGERED, T0)


def test_a_call_in_flight_is_an_echo_before_its_answer_is_recorded() -> None:
    # The bridge is sending the acknowledge (a live lease); PagerDuty's webhook came first.
    alert = _cycle(
        desired_status=AlertStatus.ACKNOWLEDGED,
        confirmed_status=AlertStatus.TRIGGERED,
        lease_owner="worker-1",
        lease_expires_at=T0 + timedelta(seconds=30),
    )
    assert is_echo(alert, AlertStatus.ACKNOWLEDGED, T0)
    assert not is_echo(alert, AlertStatus.RESOLVED, T0)
    # Once the lease expired nobody is calling: the same report is a responder's.
    assert not is_echo(alert, AlertStatus.ACKNOWLEDGED, T0 + timedelta(minutes=1))


def test_a_delivery_older_than_the_status_applied_is_stale() -> None:
    alert = _cycle(pagerduty_event_at=T0 + timedelta(minutes=10))
    assert judge(alert, _report(AlertStatus.RESOLVED), T0) is ReportOutcome.STALE


def test_an_event_type_not_followed_is_ignored() -> None:
    report = StatusReport("01R", "incident.annotated", "PINC1", None, None, None, None)
    assert judge(_cycle(), report, T0) is ReportOutcome.IGNORED


# -- CoScale's events after a responder ------------------------------------------------------


def _coscale(action: AlertStatus, at: datetime) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id="a-1",
        action=action,
        received_at=at,
        title="CPU high" if action is AlertStatus.TRIGGERED else None,
        service_id="PSVC",
    )


def _resolved_by_responder(at: datetime) -> AlertRecord:
    alert = _cycle()
    follow_responder(alert, _report(AlertStatus.RESOLVED), at)
    return alert


def test_after_a_responder_resolved_coscales_acknowledge_and_resolve_send_nothing() -> None:
    heard = T0 + timedelta(minutes=5)
    alert = _resolved_by_responder(heard)
    later = heard + timedelta(minutes=1)
    assert plan_event(alert, _coscale(AlertStatus.ACKNOWLEDGED, later)) is EventOutcome.RESPONDED
    assert plan_event(alert, _coscale(AlertStatus.TRIGGERED, later)) is EventOutcome.RESPONDED
    assert plan_event(alert, _coscale(AlertStatus.RESOLVED, later)) is EventOutcome.RESPONDED
    assert isinstance(plan_delivery(alert), Done)


def test_coscales_resolve_after_a_responders_is_recorded_so_the_next_trigger_opens_a_cycle(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    apply_event(sqlite_sessions, _coscale(AlertStatus.TRIGGERED, T0), T0)
    heard = T0 + timedelta(minutes=5)
    with sqlite_sessions.begin() as session:
        alert = session.scalars(select(Alert)).one()
        alert.pagerduty_incident_id, alert.confirmed_status = "PINC1", AlertStatus.TRIGGERED
        follow_responder(alert, _report(AlertStatus.RESOLVED), heard)
    resolve = apply_event(
        sqlite_sessions, _coscale(AlertStatus.RESOLVED, heard + timedelta(seconds=1)), T0
    )
    assert resolve.outcome is EventOutcome.RESPONDED and not resolve.needs_delivery
    again = apply_event(
        sqlite_sessions, _coscale(AlertStatus.TRIGGERED, heard + timedelta(seconds=2)), T0
    )
    assert again.outcome is EventOutcome.OPENED


def test_coscale_events_received_before_a_responders_reopen_are_late() -> None:
    alert = _cycle(desired_status=AlertStatus.RESOLVED, confirmed_status=AlertStatus.RESOLVED)
    alert.resolve_received_at = T0 + timedelta(minutes=1)
    heard = T0 + timedelta(minutes=5)
    follow_responder(alert, _report(AlertStatus.TRIGGERED), heard)
    before = heard - timedelta(seconds=1)
    assert plan_event(alert, _coscale(AlertStatus.ACKNOWLEDGED, before)) is EventOutcome.LATE
    # The reopened cycle is open: CoScale's later resolve is sent.
    assert plan_event(alert, _coscale(AlertStatus.RESOLVED, heard + timedelta(seconds=1))) is (
        EventOutcome.ADVANCED
    )


# -- reading the status before an acknowledge ------------------------------------------------


def test_without_webhooks_an_acknowledge_is_preceded_by_a_read() -> None:
    alert = _cycle(
        desired_status=AlertStatus.ACKNOWLEDGED,
        delivery_state=DeliveryState.PENDING,
        pending_since=T0 + timedelta(minutes=1),
    )
    assert plan_delivery(alert, read_before_acknowledge=True) == Inspect(
        "PINC1", check_service=False
    )
    alert.status_read_at = T0 + timedelta(minutes=2)
    assert plan_delivery(alert, read_before_acknowledge=True) == Update(
        "PINC1", AlertStatus.ACKNOWLEDGED
    )
    # Turned off (or webhooks configured): no read.
    alert.status_read_at = None
    assert isinstance(plan_delivery(alert, read_before_acknowledge=False), Update)


def test_an_incident_created_in_the_same_stretch_is_not_read() -> None:
    alert = _cycle(
        desired_status=AlertStatus.ACKNOWLEDGED,
        delivery_state=DeliveryState.PENDING,
        pending_since=T0,
        create_sent_at=T0 + timedelta(seconds=1),
    )
    assert isinstance(plan_delivery(alert, read_before_acknowledge=True), Update)


def test_a_resolve_is_never_preceded_by_a_read() -> None:
    alert = _cycle(
        desired_status=AlertStatus.RESOLVED,
        delivery_state=DeliveryState.PENDING,
        pending_since=T0 + timedelta(minutes=1),
    )
    assert plan_delivery(alert, read_before_acknowledge=True) == Update(
        "PINC1", AlertStatus.RESOLVED
    )


# -- the endpoint ------------------------------------------------------------------------------


@pytest.fixture
def api(sqlite_sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    settings = Settings(
        ingress_tokens=TOKEN,  # type: ignore[arg-type]
        pagerduty_service_id="PSVC",
        pagerduty_webhook_secrets=f"{SECRET},{OLD_SECRET}",  # type: ignore[arg-type]
    )
    app = create_app(settings, queue=ListQueue(), sessions=sqlite_sessions, redis_ping=lambda: None)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def cycle(sqlite_sessions: sessionmaker[Session]) -> int:
    applied = apply_event(sqlite_sessions, _coscale(AlertStatus.TRIGGERED, T0), T0)
    assert applied.alert_pk is not None
    with sqlite_sessions.begin() as session:
        session.execute(
            update(Alert)
            .where(Alert.id == applied.alert_pk)
            .values(
                pagerduty_incident_id="PINC1",
                confirmed_status=AlertStatus.TRIGGERED,
                delivery_state=DeliveryState.DELIVERED,
            )
        )
    return applied.alert_pk


def _post(client: TestClient, event: dict[str, Any], secret: str | None = SECRET) -> Any:
    body = json.dumps({"event": event}).encode()
    headers = {"Content-Type": "application/json", "X-Webhook-Id": event["id"]}
    if secret is not None:
        headers["X-PagerDuty-Signature"] = sign(body, secret)
    return client.post("/webhooks/pagerduty", content=body, headers=headers)


def _alert(sessions: sessionmaker[Session], pk: int) -> Alert:
    with sessions() as session:
        alert = session.get(Alert, pk)
        assert alert is not None
        session.expunge(alert)
        return alert


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_signed_resolve_becomes_the_cycles_status(
    api: TestClient, sqlite_sessions: sessionmaker[Session], cycle: int
) -> None:
    event = _event("incident.resolved", key="ignored", incident_key=None)
    event["data"]["incident_key"] = None
    answer = _post(api, event)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "responder"
    alert = _alert(sqlite_sessions, cycle)
    assert alert.confirmed_status is AlertStatus.RESOLVED
    assert alert.desired_status is AlertStatus.RESOLVED
    assert alert.responder == "Ada Lovelace"
    view = api.get("/alerts/a-1", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert view["confirmed_status"] == "resolved" and view["responder"] == "Ada Lovelace"
    (entry,) = [e for e in view["timeline"] if e["kind"] == "pagerduty"]
    assert entry["action"] == "resolved" and "Ada Lovelace" in entry["detail"]


def test_a_cycle_is_found_by_its_incident_key_when_its_id_is_not_known_yet(
    api: TestClient, sqlite_sessions: sessionmaker[Session], cycle: int
) -> None:
    with sqlite_sessions.begin() as session:
        alert = session.get(Alert, cycle)
        assert alert is not None
        key = alert.incident_key
        alert.pagerduty_incident_id = None
    event = _event("incident.acknowledged", id="PNEW", incident_key=key)
    assert _post(api, event).json()["outcome"] == "responder"
    assert _alert(sqlite_sessions, cycle).pagerduty_incident_id == "PNEW"


@pytest.mark.parametrize("secret", [None, "a-forged-secret-0123", ""])
def test_an_unsigned_or_forged_delivery_changes_nothing(
    api: TestClient, sqlite_sessions: sessionmaker[Session], cycle: int, secret: str | None
) -> None:
    refused = _metric("pagerbridge_pagerduty_webhook_signatures_refused_total", route="default")
    answer = _post(api, _event("incident.resolved"), secret)
    assert answer.status_code == 401
    assert answer.json()["error"]["field"] == "X-PagerDuty-Signature"
    assert _alert(sqlite_sessions, cycle).confirmed_status is AlertStatus.TRIGGERED
    with sqlite_sessions() as session:
        assert session.scalar(select(func.count()).select_from(PagerDutyDelivery)) == 0
    assert (
        _metric("pagerbridge_pagerduty_webhook_signatures_refused_total", route="default")
        == refused + 1
    )


def test_the_old_secret_still_works_during_a_rotation(api: TestClient, cycle: int) -> None:
    assert _post(api, _event("incident.acknowledged"), OLD_SECRET).status_code == 200


def test_a_repeated_delivery_is_applied_once(
    api: TestClient, sqlite_sessions: sessionmaker[Session], cycle: int
) -> None:
    resolve = _event("incident.resolved", occurred_at="2026-12-01T10:05:00Z")
    assert _post(api, resolve).json()["outcome"] == "responder"
    reopen = _event("incident.reopened", occurred_at="2026-12-01T10:06:00Z", agent="Grace")
    assert _post(api, reopen).json()["outcome"] == "responder"
    # PagerDuty retries the resolve (its answer was lost): it is not applied again.
    assert _post(api, resolve).json()["outcome"] == "duplicate"
    alert = _alert(sqlite_sessions, cycle)
    assert alert.confirmed_status is AlertStatus.TRIGGERED and alert.responder == "Grace"
    with sqlite_sessions() as session:
        assert session.scalar(select(func.count()).select_from(PagerDutyDelivery)) == 2


def test_other_event_types_are_answered_and_ignored(
    api: TestClient, sqlite_sessions: sessionmaker[Session], cycle: int
) -> None:
    answer = _post(api, {"id": "01PING", "event_type": "pagey.ping", "data": {}})
    assert answer.status_code == 200 and answer.json()["outcome"] == "ignored"
    assert _alert(sqlite_sessions, cycle).confirmed_status is AlertStatus.TRIGGERED


def test_an_incident_no_cycle_owns_is_answered_unknown(api: TestClient) -> None:
    event = _event("incident.resolved", id="PELSE", incident_key="someone-elses")
    assert _post(api, event).json()["outcome"] == "unknown"


def test_a_signed_body_that_is_not_an_event_is_400(api: TestClient) -> None:
    body = b'{"event": {"event_type": "incident.resolved"}}'
    answer = api.post(
        "/webhooks/pagerduty",
        content=body,
        headers={"X-PagerDuty-Signature": sign(body, SECRET)},
    )
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "event.id"


def test_a_route_without_webhook_secrets_refuses_every_delivery(api: TestClient) -> None:
    body = json.dumps({"event": _event("incident.resolved")}).encode()
    answer = api.post(
        "/webhooks/pagerduty/no-such-route",
        content=body,
        headers={"X-PagerDuty-Signature": sign(body, SECRET)},
    )
    assert answer.status_code == 401


def test_pagerduty_webhooks_are_not_quarantined_as_coscale_events() -> None:
    assert not carries_events("POST", "/webhooks/pagerduty")
    assert not carries_events("POST", "/webhooks/pagerduty/web-team")
    assert carries_events("POST", "/webhooks/coscale")


def test_the_sweeper_applies_a_delivery_stored_but_not_applied(
    sqlite_sessions: sessionmaker[Session], cycle: int
) -> None:
    with sqlite_sessions.begin() as session:
        session.add(
            PagerDutyDelivery(
                webhook_id="01STORED",
                route="default",
                event_type="incident.resolved",
                event=_event("incident.resolved", event_id="01STORED"),
                received_at=T0,
            )
        )
    assert apply_stored_deliveries(sqlite_sessions, T0 + timedelta(minutes=1), limit=10) == 1
    assert _alert(sqlite_sessions, cycle).confirmed_status is AlertStatus.RESOLVED
    assert apply_stored_deliveries(sqlite_sessions, T0 + timedelta(minutes=2), limit=10) == 0
    # Retention forgets it once applied long enough ago.
    assert prune_deliveries(sqlite_sessions, T0) == 0
    assert prune_deliveries(sqlite_sessions, datetime.now(UTC) + timedelta(seconds=1)) == 1


# -- without webhooks: the read before an acknowledge, end to end ----------------------------


def _reconciler(
    sessions: sessionmaker[Session], pagerduty: FakePagerDuty, **settings: Any
) -> Reconciler:
    return Reconciler(
        sessions, pagerduty.client(), Settings(pagerduty_service_id="PSVC", **settings)
    )


def _delivered_triggers(
    sessions: sessionmaker[Session], reconciler: Reconciler, count: int
) -> list[int]:
    pks = []
    for n in range(count):
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id=f"a-{n}",
            action=AlertStatus.TRIGGERED,
            received_at=T0,
            title="CPU high",
            service_id="PSVC",
        )
        applied = apply_event(sessions, event, T0)
        assert applied.alert_pk is not None
        pks.append(applied.alert_pk)
    reconciler.reconcile_many(pks)
    return pks


def _acknowledge(sessions: sessionmaker[Session], count: int) -> None:
    later = datetime.now(UTC)
    for n in range(count):
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id=f"a-{n}",
            action=AlertStatus.ACKNOWLEDGED,
            received_at=later,
        )
        apply_event(sessions, event, later)


def test_without_webhooks_a_resolved_incident_is_read_and_never_acknowledged(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty = FakePagerDuty()
    reconciler = _reconciler(sqlite_sessions, pagerduty)
    (pk,) = _delivered_triggers(sqlite_sessions, reconciler, 1)
    incident_id = _alert(sqlite_sessions, pk).pagerduty_incident_id
    assert incident_id is not None
    pagerduty.simulator.respond(incident_id, "resolve", "Ada Lovelace")  # the bridge is not told
    _acknowledge(sqlite_sessions, 1)
    pagerduty.calls.clear()
    reconciler.reconcile(pk)
    assert pagerduty.calls == [("GET", f"/incidents/{incident_id}")]
    assert pagerduty.simulator.counts()["reopened"] == 0
    assert _alert(sqlite_sessions, pk).confirmed_status is AlertStatus.RESOLVED


@pytest.mark.parametrize(("read", "acks", "calls"), [(True, 1, 2), (False, 1, 1), (True, 20, 21)])
def test_what_the_read_costs_per_acknowledge(
    sqlite_sessions: sessionmaker[Session], read: bool, acks: int, calls: int
) -> None:
    # One GET per acknowledge; the acknowledges themselves still go as one bulk update.
    pagerduty = FakePagerDuty()
    reconciler = _reconciler(sqlite_sessions, pagerduty, read_before_acknowledge=read)
    pks = _delivered_triggers(sqlite_sessions, reconciler, acks)
    _acknowledge(sqlite_sessions, acks)
    pagerduty.calls.clear()
    reconciler.reconcile_many(pks)
    assert len(pagerduty.calls) == calls
    assert {_alert(sqlite_sessions, pk).confirmed_status for pk in pks} == {
        AlertStatus.ACKNOWLEDGED
    }


def test_with_webhook_secrets_the_default_route_reads_nothing(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty = FakePagerDuty()
    reconciler = _reconciler(
        sqlite_sessions,
        pagerduty,
        pagerduty_webhook_secrets=SECRET,
    )
    pks = _delivered_triggers(sqlite_sessions, reconciler, 1)
    _acknowledge(sqlite_sessions, 1)
    pagerduty.calls.clear()
    reconciler.reconcile_many(pks)
    assert [method for method, _ in pagerduty.calls] == ["PUT"]
