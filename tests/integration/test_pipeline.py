"""End to end: CoScale's requests → api → Redis → Celery worker → PostgreSQL → simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models import AlertEvent, utcnow
from tests.integration.conftest import Bridge, wait_for
from worker.pipeline.celery_app import create_celery
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.queue import CeleryEventQueue
from worker.settings import Settings
from worker.vocabulary import AlertStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def api(bridge: Bridge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as client:
        yield client


def new_alert_id() -> str:
    return str(uuid.uuid4().int % 10**9)


def webhook(alert_id: str, action: str, **extra: str) -> dict[str, str]:
    return {
        "alert_id": alert_id,
        "action": action,
        "message": f"disk full {alert_id}",
        "metric": "disk",
        "app": "shop",
        **extra,
    }


def incident_of(bridge: Bridge, alert_id: str, source: str = "coscale") -> dict[str, Any]:
    incidents = bridge.incidents(f"pagerbridge/{source}/{alert_id}/")
    assert len(incidents) <= 1, f"duplicate incidents: {incidents}"
    return incidents[0] if incidents else {}


def wait_status(
    bridge: Bridge, alert_id: str, status: str, source: str = "coscale"
) -> dict[str, Any]:
    return wait_for(
        lambda: (lambda i: i if i.get("status") == status else None)(
            incident_of(bridge, alert_id, source)
        ),
        what=f"incident of {source}:{alert_id} to be {status}\n{bridge.logs()}",
    )


def wait_delivered(api: httpx.Client, alert_id: str, status: str) -> dict[str, Any]:
    def delivered() -> dict[str, Any] | None:
        answer = api.get(f"/alerts/{alert_id}")
        view: dict[str, Any] = answer.json()
        ok = (
            answer.status_code == 200
            and view["delivery_state"] == "delivered"
            and (view["desired_status"] == status)
        )
        return view if ok else None

    return wait_for(delivered, what=f"alert {alert_id} delivered as {status}")


def test_webhook_trigger_acknowledge_resolve(bridge: Bridge, api: httpx.Client) -> None:
    alert_id = new_alert_id()
    answer = api.post("/webhooks/coscale", json=webhook(alert_id, "triggered"))
    assert answer.status_code == 202, answer.text
    incident = wait_status(bridge, alert_id, "triggered")
    assert incident["title"].startswith(f"Alert triggered for disk full {alert_id} disk")
    assert incident["service_id"] == "PINTEGR"

    assert api.post("/webhooks/coscale", json=webhook(alert_id, "acknowledged")).status_code == 202
    wait_status(bridge, alert_id, "acknowledged")
    assert api.post("/webhooks/coscale", json=webhook(alert_id, "resolved")).status_code == 202
    wait_status(bridge, alert_id, "resolved")

    view = wait_delivered(api, alert_id, "resolved")
    assert view["pagerduty_incident_id"] == incident["id"]
    assert view["pagerduty_incident_number"] == incident["incident_number"]
    assert view["pagerduty_incident_url"] == incident["html_url"]
    assert view["confirmed_status"] == "resolved" and view["attempts"] == 0
    assert [c["to"] for c in incident_of(bridge, alert_id)["status_history"]] == [
        "triggered",
        "acknowledged",
        "resolved",
    ]


# The seed page's bodies, verbatim (tabs and all), placeholders as CoScale has rendered them.
SEED_TRIGGER_BODY = """{
\t"incident": {
\t\t"type": "incident",
\t\t"title": "Alert triggered for CPU high cpu web-1 at 10:00 (2026-11-27) on application shop. ",
\t\t"service": {
\t\t\t"id": "PXFL9LI",
\t\t\t"type": "service_reference"
\t\t}
\t}
}"""
SEED_ACK_BODY = """{
\t"incidents": [{
\t\t"id": "{ID}",
\t\t"type": "incident_reference",
\t\t"status": "acknowledged"
\t}]
}"""


def test_seed_api_contact_unchanged_but_for_host_and_token(
    bridge: Bridge, api: httpx.Client
) -> None:
    # The seed page's three tabs, verbatim bodies and headers (token and host changed).
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/vnd.pagerduty+json;version=2",
        "Authorization": "Token token=integration-ingress-token-0123456789",
        "From": "oncall@example.com",
    }
    trigger = api.post("/incidents", headers=headers, content=SEED_TRIGGER_BODY)
    assert trigger.status_code == 201, trigger.text
    bridge_id = trigger.json()["incident"]["id"]  # "Parse response: JSON incident.id" → {ID}
    incident = wait_status(bridge, bridge_id, "triggered", source="api")
    assert incident["service_id"] == "PXFL9LI"

    # CoScale pastes {ID} into the Acknowledge tab's body as text
    ack = api.put("/incidents", headers=headers, content=SEED_ACK_BODY.replace("{ID}", bridge_id))
    assert ack.status_code == 200, ack.text
    wait_status(bridge, bridge_id, "acknowledged", source="api")
    resolve = api.put(
        f"/incidents/{bridge_id}",
        headers=headers,
        json={"incident": {"type": "incident_reference", "status": "resolved"}},
    )
    assert resolve.status_code == 200, resolve.text
    wait_status(bridge, bridge_id, "resolved", source="api")
    assert wait_delivered(api, bridge_id, "resolved")["pagerduty_incident_id"] == incident["id"]


def test_api_contact_updates_carry_pagerdutys_fields_to_the_incident(
    bridge: Bridge, api: httpx.Client
) -> None:
    created = api.post(
        "/incidents",
        json={"incident": {"type": "incident", "title": "disk full", "service": {"id": "PINTEGR"}}},
    )
    assert created.status_code == 201, created.text
    bridge_id = created.json()["incident"]["id"]
    wait_status(bridge, bridge_id, "triggered", source="api")
    priority = {"id": "PPRIO01", "type": "priority_reference"}
    assigned = [{"assignee": {"id": "PUSER01", "type": "user_reference"}}]

    # A reassignment, a priority and an escalation, no status: the incident stays triggered.
    fields_only = {"type": "incident_reference", "priority": priority, "assignments": assigned}
    answer = api.put(f"/incidents/{bridge_id}", json={"incident": fields_only})
    assert answer.status_code == 200, answer.text
    escalated = wait_for(
        lambda: (lambda i: i if i.get("fields", {}).get("assignments") == assigned else None)(
            incident_of(bridge, bridge_id, "api")
        ),
        what=f"the assignments to reach the incident\n{bridge.logs()}",
    )
    assert escalated["status"] == "triggered" and escalated["fields"]["priority"] == priority

    # With a status, in a bulk PUT: the fields ride in the same request as the acknowledge.
    bulk = [
        {
            "id": bridge_id,
            "type": "incident_reference",
            "status": "acknowledged",
            "title": "disk full on web-1",
            "escalation_level": 2,
        }
    ]
    assert api.put("/incidents", json={"incidents": bulk}).status_code == 200
    acknowledged = wait_status(bridge, bridge_id, "acknowledged", source="api")
    assert acknowledged["title"] == "disk full on web-1"
    assert acknowledged["fields"]["escalation_level"] == 2
    resolve = {"type": "incident_reference", "status": "resolved", "resolution": "disk cleaned"}
    assert api.put(f"/incidents/{bridge_id}", json={"incident": resolve}).status_code == 200
    resolved = wait_status(bridge, bridge_id, "resolved", source="api")
    assert resolved["fields"]["resolution"] == "disk cleaned"
    assert [change["to"] for change in resolved["status_history"]] == [
        "triggered",
        "acknowledged",
        "resolved",
    ]
    view = wait_delivered(api, bridge_id, "resolved")
    received = [(e["action"], e["outcome"]) for e in view["timeline"] if e["kind"] == "received"]
    assert received == [
        ("triggered", "opened"),
        ("update", "fields"),
        ("acknowledged", "advanced"),
        ("resolved", "advanced"),
    ]


def test_acknowledge_sent_before_trigger(bridge: Bridge, api: httpx.Client) -> None:
    alert_id = new_alert_id()
    api.post("/webhooks/coscale", json=webhook(alert_id, "acknowledged"))
    api.post("/webhooks/coscale", json=webhook(alert_id, "triggered"))
    wait_status(bridge, alert_id, "acknowledged")
    wait_delivered(api, alert_id, "acknowledged")
    assert len(bridge.incidents(f"pagerbridge/coscale/{alert_id}/")) == 1


def test_acknowledge_dequeued_before_its_trigger(bridge: Bridge, api: httpx.Client) -> None:
    # Given the queue hands the acknowledge out before the trigger received first
    alert_id = new_alert_id()
    queue = CeleryEventQueue(
        create_celery(
            Settings(
                redis_url=bridge.env["PAGERBRIDGE_REDIS_URL"],
                namespace=bridge.env["PAGERBRIDGE_NAMESPACE"],
            )
        )
    )
    now = utcnow()
    trigger, ack = (
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id=alert_id,
            action=action,
            received_at=now + timedelta(milliseconds=offset),
            title=f"{action.value} text",
            service_id="PINTEGR",
        )
        for action, offset in ((AlertStatus.TRIGGERED, 0), (AlertStatus.ACKNOWLEDGED, 5))
    )
    queue.publish(ack)
    wait_for(lambda: api.get(f"/alerts/{alert_id}").status_code == 200, what="ack applied")
    queue.publish(trigger)
    # Then one incident, acknowledged
    incident = wait_status(bridge, alert_id, "acknowledged")
    wait_delivered(api, alert_id, "acknowledged")
    assert len(bridge.incidents(f"pagerbridge/coscale/{alert_id}/")) == 1
    assert [c["to"] for c in incident["status_history"]] == ["triggered", "acknowledged"]


def _already_resolved_answers(bridge: Bridge) -> int:
    """PUT /incidents/{id} answered 400 ("already resolved"), counted over the whole test
    session's simulator: other tests' calls are in it too, so compare before and after."""
    return sum(
        call["count"]
        for call in bridge.simulator.state()["counts"]["calls"]
        if (call["method"], call["route"], call["status"]) == ("PUT", "/incidents/{id}", 400)
    )


def test_duplicated_event_and_message(bridge: Bridge, api: httpx.Client) -> None:
    alert_id = new_alert_id()
    already_resolved = _already_resolved_answers(bridge)
    # The same webhook twice (CoScale sending again) ...
    for _ in range(2):
        assert api.post("/webhooks/coscale", json=webhook(alert_id, "triggered")).status_code == 202
    wait_delivered(api, alert_id, "triggered")
    # ... and the same Celery message twice (at-least-once delivery)
    queue = CeleryEventQueue(
        create_celery(
            Settings(
                redis_url=bridge.env["PAGERBRIDGE_REDIS_URL"],
                namespace=bridge.env["PAGERBRIDGE_NAMESPACE"],
            )
        )
    )
    resolve = AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=AlertStatus.RESOLVED,
        received_at=utcnow(),
    )
    queue.publish(resolve)
    queue.publish(resolve)
    wait_status(bridge, alert_id, "resolved")
    wait_delivered(api, alert_id, "resolved")

    def outcomes() -> list[str] | None:
        with bridge.sessions() as session:
            rows = session.scalars(
                select(AlertEvent.outcome).where(
                    AlertEvent.source_alert_id == alert_id,
                    AlertEvent.kind == "received",
                    AlertEvent.event_id == resolve.event_id,
                )
            ).all()
        return list(rows) or None

    assert wait_for(outcomes, what="resolve recorded") == ["advanced"]
    assert len(bridge.incidents(f"pagerbridge/coscale/{alert_id}/")) == 1
    # Never "already resolved": the duplicate resolve is not sent a second time
    assert _already_resolved_answers(bridge) == already_resolved


def test_resolve_for_alert_never_triggered(bridge: Bridge, api: httpx.Client) -> None:
    alert_id = new_alert_id()
    answer = api.post("/webhooks/coscale", json=webhook(alert_id, "resolved"))
    assert answer.status_code == 202
    view = wait_delivered(api, alert_id, "resolved")
    assert view["pagerduty_incident_id"] is None
    assert view["timeline"][0]["outcome"] == "opened"
    assert bridge.incidents(f"pagerbridge/coscale/{alert_id}/") == []


def test_readiness_sees_redis_database_and_pagerduty(api: httpx.Client) -> None:
    answer = api.get("/readyz")
    assert answer.status_code == 200
    checks = {name: check["status"] for name, check in answer.json()["checks"].items()}
    # Whether Redis can confirm writes are on disk depends on how the suite's Redis runs (CI
    # starts it without AOF): reported either way, never making the bridge not ready.
    assert checks.pop("redis_durability") in ("ok", "degraded")
    assert checks == {
        "redis": "ok",
        "database": "ok",
        "pagerduty_credentials": "ok",
        "pagerduty_breaker": "ok",
        "backlog": "ok",
    }


def test_secrets_never_reach_logs_or_answers(bridge: Bridge, api: httpx.Client) -> None:
    # Given a full trigger → resolve flow has been logged by every process
    alert_id = new_alert_id()
    api.post("/webhooks/coscale", json=webhook(alert_id, "triggered"))
    wait_status(bridge, alert_id, "triggered")
    api.post("/webhooks/coscale", json=webhook(alert_id, "resolved"))
    view = wait_delivered(api, alert_id, "resolved")
    # Then neither the PagerDuty token nor the ingress token appears anywhere
    secrets = [bridge.env["PAGERBRIDGE_PAGERDUTY_TOKEN"], bridge.env["PAGERBRIDGE_INGRESS_TOKENS"]]
    outputs = {name: service.output() for name, service in bridge.services.items()}
    outputs["GET /alerts"] = str(view)
    outputs["GET /readyz"] = api.get("/readyz").text
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in {where}"
    assert "delivered alert=coscale:" + alert_id in outputs["worker"]
