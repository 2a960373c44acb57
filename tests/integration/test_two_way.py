"""Two-way: PagerDuty's webhooks tell the bridge what responders did, and the bridge never
undoes it. Real api, worker, beat and simulator; the subscription is made with
``pagerbridge pagerduty subscribe`` against the simulator, whose deliveries are signed with the
secret it printed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    INGRESS_TOKEN,
    Bridge,
    fresh_database,
    running_bridge,
    start_service,
    wait_for,
    wait_until_up,
)
from worker.ingress.signatures import sign

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Token token={INGRESS_TOKEN}"}


@dataclass
class TwoWay:
    bridge: Bridge
    secret: str
    subscribe_output: str


def _cli(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=bridge.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def two_way(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWay]:
    """A bridge subscribed to the simulator's webhooks; its api knows the secret."""
    logs = tmp_path_factory.mktemp("two-way-logs")
    with (
        fresh_database() as database_url,
        running_bridge(
            database_url, redis_url, f"pagerbridge-twoway-{uuid.uuid4().hex[:8]}", logs
        ) as bridge,
    ):
        made = _cli(
            bridge, "pagerduty", "subscribe", "--url", f"{bridge.api_url}/webhooks/pagerduty"
        )
        assert made.returncode == 0, made.stdout + made.stderr
        (line,) = [
            text.strip()
            for text in made.stdout.splitlines()
            if text.strip().startswith("PAGERBRIDGE_PAGERDUTY_WEBHOOK_SECRETS=")
        ]
        secret = line.split("=", 1)[1]
        # The api reads its settings at start: restart it with the secret, as an operator would.
        bridge.services["api"].stop()
        bridge.env["PAGERBRIDGE_PAGERDUTY_WEBHOOK_SECRETS"] = secret
        port = bridge.api_url.rsplit(":", 1)[1]
        api = start_service("api-subscribed", ["api", "--port", port], bridge.env, Path(logs))
        bridge.services["api"] = api
        wait_until_up(api, lambda: httpx.get(f"{bridge.api_url}/healthz").status_code == 200)
        yield TwoWay(bridge, secret, made.stdout)


def _send(bridge: Bridge, alert_id: str, action: str) -> None:
    answer = httpx.post(
        f"{bridge.api_url}/webhooks/coscale",
        json={"alert_id": alert_id, "action": action, "message": "CPU high", "subject": "web-1"},
        headers=AUTH,
    )
    assert answer.status_code == 202, answer.text


def _view(bridge: Bridge, alert_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{bridge.api_url}/alerts/{alert_id}", headers=AUTH)
    return dict(answer.json()) if answer.status_code == 200 else {}


def _incident(bridge: Bridge, incident_id: str) -> dict[str, Any]:
    (found,) = [i for i in bridge.simulator.state()["incidents"] if i["id"] == incident_id]
    return dict(found)


def _updates_sent(bridge: Bridge) -> int:
    calls = bridge.simulator.counts()["calls"]
    return sum(call["count"] for call in calls if call["method"] == "PUT")


def _opened(bridge: Bridge, alert_id: str) -> str:
    _send(bridge, alert_id, "triggered")
    view = wait_for(
        lambda: (v := _view(bridge, alert_id)).get("confirmed_status") == "triggered" and v,
        what=f"{alert_id}'s incident",
    )
    return str(view["pagerduty_incident_id"])


def _heard(bridge: Bridge, alert_id: str, status: str, responder: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (v := _view(bridge, alert_id)).get("confirmed_status") == status
            and v.get("responder") == responder
            and v
        ),
        what=f"the bridge hearing {responder}'s {status}",
    )


def _received(bridge: Bridge, alert_id: str, count: int) -> list[dict[str, Any]]:
    def events() -> list[dict[str, Any]] | None:
        timeline = _view(bridge, alert_id).get("timeline", [])
        received = [entry for entry in timeline if entry["kind"] == "received"]
        return received if len(received) >= count else None

    return wait_for(events, what=f"{count} CoScale events applied to {alert_id}")


def test_subscribe_made_one_subscription_for_the_service(two_way: TwoWay) -> None:
    listed = _cli(two_way.bridge, "pagerduty", "subscriptions", "--json")
    assert listed.returncode == 0, listed.stderr
    (subscription,) = json.loads(listed.stdout)
    assert subscription["url"] == f"{two_way.bridge.api_url}/webhooks/pagerduty"
    assert subscription["filter"] == "service_reference PINTEGR"
    assert set(subscription["events"]) == {
        "incident.triggered",
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.resolved",
        "incident.reopened",
    }
    assert two_way.secret not in listed.stdout


def test_a_responders_resolve_is_never_undone(two_way: TwoWay) -> None:
    bridge = two_way.bridge
    alert_id = f"resolved-by-a-person-{uuid.uuid4().hex[:6]}"
    incident_id = _opened(bridge, alert_id)
    bridge.simulator.respond(incident_id, "resolve", "Ada Lovelace")
    view = _heard(bridge, alert_id, "resolved", "Ada Lovelace")
    assert any(
        entry["kind"] == "pagerduty" and "Ada Lovelace" in (entry["detail"] or "")
        for entry in view["timeline"]
    )
    updates = _updates_sent(bridge)
    # CoScale acknowledges late, then resolves
    _send(bridge, alert_id, "acknowledged")
    _send(bridge, alert_id, "resolved")
    received = _received(bridge, alert_id, 3)
    # Recorded as the responder's doing; an acknowledge applied after the resolve (two
    # batches, either order) is merely late: either way it sends nothing.
    outcomes = [entry["outcome"] for entry in received[1:]]
    assert "responded" in outcomes and set(outcomes) <= {"responded", "late"}, outcomes
    # Then nothing was sent: no acknowledge reopened the incident, no second resolve
    assert _updates_sent(bridge) == updates
    incident = _incident(bridge, incident_id)
    assert incident["status"] == "resolved"
    assert not any(change["reopened"] for change in incident["status_history"])
    assert _view(bridge, alert_id)["delivery_state"] == "delivered"


def test_after_a_responders_acknowledge_coscales_resolve_is_sent(two_way: TwoWay) -> None:
    bridge = two_way.bridge
    alert_id = f"acknowledged-by-a-person-{uuid.uuid4().hex[:6]}"
    incident_id = _opened(bridge, alert_id)
    bridge.simulator.respond(incident_id, "acknowledge", "Grace Hopper")
    _heard(bridge, alert_id, "acknowledged", "Grace Hopper")
    _send(bridge, alert_id, "resolved")
    wait_for(
        lambda: _incident(bridge, incident_id)["status"] == "resolved",
        what="CoScale's resolve reaching PagerDuty",
    )
    wait_for(lambda: _view(bridge, alert_id).get("confirmed_status") == "resolved")


def test_after_a_responders_reopen_coscales_later_resolve_is_sent(two_way: TwoWay) -> None:
    bridge = two_way.bridge
    alert_id = f"reopened-by-a-person-{uuid.uuid4().hex[:6]}"
    incident_id = _opened(bridge, alert_id)
    bridge.simulator.respond(incident_id, "resolve", "Ada Lovelace")
    _heard(bridge, alert_id, "resolved", "Ada Lovelace")
    bridge.simulator.respond(incident_id, "reopen", "Grace Hopper")
    _heard(bridge, alert_id, "triggered", "Grace Hopper")
    _send(bridge, alert_id, "resolved")
    wait_for(
        lambda: _incident(bridge, incident_id)["status"] == "resolved",
        what="CoScale's resolve of the reopened incident",
    )


def _delivery(two_way: TwoWay, incident_id: str, event_type: str) -> dict[str, Any]:
    for delivery in two_way.bridge.simulator.webhook_deliveries():
        event = json.loads(delivery["body"])["event"]
        if event["data"]["id"] == incident_id and event["event_type"] == event_type:
            return dict(delivery)
    raise AssertionError(f"no {event_type} delivery for {incident_id}")


def test_forged_and_unsigned_deliveries_change_nothing(two_way: TwoWay) -> None:
    bridge = two_way.bridge
    alert_id = f"forged-{uuid.uuid4().hex[:6]}"
    incident_id = _opened(bridge, alert_id)
    # The simulator's delivery of this incident's trigger, rewritten as a resolve
    template = json.loads(_delivery(two_way, incident_id, "incident.triggered")["body"])
    template["event"].update(id=f"01FORGED{uuid.uuid4().hex[:8]}", event_type="incident.resolved")
    template["event"]["data"]["status"] = "resolved"
    body = json.dumps(template).encode()
    url = f"{bridge.api_url}/webhooks/pagerduty"
    forged = httpx.post(
        url,
        content=body,
        headers={"X-PagerDuty-Signature": sign(body, "not-the-subscriptions-secret")},
    )
    unsigned = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert _view(bridge, alert_id)["confirmed_status"] == "triggered"
    assert _view(bridge, alert_id)["responder"] is None
    # The same body signed with the subscription's secret is taken: only the signature differed
    signed = httpx.post(
        url, content=body, headers={"X-PagerDuty-Signature": sign(body, two_way.secret)}
    )
    assert signed.status_code == 200 and signed.json()["outcome"] == "responder"


def test_a_replayed_delivery_is_applied_once(two_way: TwoWay) -> None:
    bridge = two_way.bridge
    alert_id = f"replayed-{uuid.uuid4().hex[:6]}"
    incident_id = _opened(bridge, alert_id)
    bridge.simulator.respond(incident_id, "acknowledge", "Ada Lovelace")
    _heard(bridge, alert_id, "acknowledged", "Ada Lovelace")
    delivery = _delivery(two_way, incident_id, "incident.acknowledged")
    again = httpx.post(
        delivery["url"], content=delivery["body"].encode(), headers=delivery["headers"]
    )
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    timeline = _view(bridge, alert_id)["timeline"]
    assert len([entry for entry in timeline if entry["kind"] == "pagerduty"]) == 1
