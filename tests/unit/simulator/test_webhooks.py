"""The simulator's v3 webhooks: subscriptions, and a signed delivery per status change, the
REST API's and a responder's."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from worker.simulator.rest import PAGERDUTY_ACCEPT
from worker.simulator.server import create_app
from worker.simulator.state import SimulatedPagerDuty

TOKEN = "sim-token"
HEADERS = {
    "Authorization": f"Token token={TOKEN}",
    "Accept": PAGERDUTY_ACCEPT,
    "Content-Type": "application/json",
    "From": "bridge@example.com",
}
INCIDENT_EVENTS = [
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
]


class Receiver:
    """Stands in for the bridge: keeps every delivery, answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, bytes, dict[str, str]]] = []
        self.arrived = threading.Condition()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        with self.arrived:
            self.deliveries.append((url, body, headers))
            self.arrived.notify_all()
        return 200

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout=10)
            return [json.loads(body)["event"] for _, body, _ in self.deliveries]


@pytest.fixture
def simulator() -> SimulatedPagerDuty:
    return SimulatedPagerDuty(seed=3)


@pytest.fixture
def receiver(simulator: SimulatedPagerDuty) -> Receiver:
    receiver = Receiver()
    simulator.webhooks.post = receiver.post
    return receiver


@pytest.fixture
def client(simulator: SimulatedPagerDuty) -> Iterator[TestClient]:
    with TestClient(create_app(simulator, token=TOKEN), headers=HEADERS) as test_client:
        yield test_client


def _subscribe(client: TestClient, service: str = "PSVC") -> dict[str, Any]:
    answer = client.post(
        "/webhook_subscriptions",
        json={
            "webhook_subscription": {
                "type": "webhook_subscription",
                "delivery_method": {"type": "http_delivery_method", "url": "http://bridge/wh"},
                "events": INCIDENT_EVENTS,
                "filter": {"type": "service_reference", "id": service},
            }
        },
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["webhook_subscription"])


def _create(client: TestClient, service: str = "PSVC") -> str:
    answer = client.post(
        "/incidents",
        json={
            "incident": {
                "type": "incident",
                "title": "CPU",
                "service": {"id": service, "type": "service_reference"},
            }
        },
    )
    assert answer.status_code == 201
    return str(answer.json()["incident"]["id"])


def test_the_secret_is_shown_once(client: TestClient) -> None:
    made = _subscribe(client)
    assert made["delivery_method"]["secret"]
    listed = client.get("/webhook_subscriptions").json()["webhook_subscriptions"]
    assert [item["id"] for item in listed] == [made["id"]]
    assert listed[0]["delivery_method"]["secret"] is None


def test_a_subscription_needs_a_url_and_events(client: TestClient) -> None:
    answer = client.post("/webhook_subscriptions", json={"webhook_subscription": {}})
    assert answer.status_code == 400


def test_every_status_change_is_delivered_signed(
    client: TestClient, simulator: SimulatedPagerDuty, receiver: Receiver
) -> None:
    secret = _subscribe(client)["delivery_method"]["secret"]
    incident = _create(client)
    _create(client, service="POTHER")  # not the subscription's service: no delivery
    client.put(
        f"/incidents/{incident}",
        json={"incident": {"type": "incident_reference", "status": "acknowledged"}},
    )
    simulator.respond(incident, "resolve", "Ada Lovelace")
    simulator.respond(incident, "reopen", "Grace Hopper")
    events = receiver.wait_for(4)
    assert [event["event_type"] for event in events] == [
        "incident.triggered",
        "incident.acknowledged",
        "incident.resolved",
        "incident.reopened",
    ]
    assert [event["data"]["status"] for event in events] == [
        "triggered",
        "acknowledged",
        "resolved",
        "triggered",
    ]
    assert events[2]["agent"]["summary"] == "Ada Lovelace"
    assert len({event["id"] for event in events}) == 4
    for _, body, headers in receiver.deliveries:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-PagerDuty-Signature"] == f"v1={expected}"
        assert headers["X-Webhook-Id"] == json.loads(body)["event"]["id"]


def test_a_responder_can_only_do_what_the_ui_allows(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    incident = _create(client)
    answer = client.post(
        "/_simulator/responder", json={"incident_id": incident, "action": "reopen"}
    )
    assert answer.status_code == 400  # not resolved
    answer = client.post(
        "/_simulator/responder", json={"incident_id": incident, "action": "acknowledge"}
    )
    assert answer.status_code == 200 and answer.json()["incident"]["status"] == "acknowledged"
