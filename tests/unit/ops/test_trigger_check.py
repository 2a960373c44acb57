"""`pagerbridge test-trigger` against a fake api (httpx.MockTransport): each way it ends."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from worker.ops.trigger_check import ALERT_ID_PREFIX, SmokeFailed, SmokeTest, new_alert_id

TOKEN = "ingress-token-0123456789abcdef0123456"
ALERT_ID = "pagerbridge-test-0123456789ab"


def view(**changes: Any) -> dict[str, Any]:
    """A GET /alerts/{id} answer (AlertView), changed by ``changes``."""
    answer: dict[str, Any] = {
        "source": "coscale",
        "alert_id": ALERT_ID,
        "cycle": 1,
        "cycles": 1,
        "incident_key": f"pagerbridge/coscale/{ALERT_ID}/1",
        "service_id": "PSERVIC",
        "title": "Alert triggered for pagerbridge test trigger",
        "pagerduty_incident_id": None,
        "pagerduty_incident_number": None,
        "pagerduty_incident_url": None,
        "desired_status": "triggered",
        "confirmed_status": None,
        "delivery_state": "pending",
        "attempts": 0,
        "next_attempt_at": None,
        "last_error": None,
        "created_at": "2026-11-27T12:00:00+00:00",
        "updated_at": "2026-11-27T12:00:00+00:00",
        "timeline": [],
    }
    answer.update(changes)
    return answer


OPENED = view(
    pagerduty_incident_id="PINC1",
    pagerduty_incident_url="https://example.pagerduty.com/incidents/PINC1",
    confirmed_status="triggered",
    delivery_state="delivered",
)
RESOLVED = {**OPENED, "desired_status": "resolved", "confirmed_status": "resolved"}


@dataclass
class FakeApi:
    """The api as the test trigger sees it: views to answer GETs with, in turn, per phase."""

    before_resolve: list[tuple[int, dict[str, Any]]]
    after_resolve: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    post_status: int = 202
    posted: list[dict[str, Any]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers.get("authorization", ""))
        if request.method == "POST":
            assert request.url.path == "/webhooks/coscale"
            self.posted.append(json.loads(request.content))
            if self.post_status != 202:
                return httpx.Response(
                    self.post_status, json={"error": {"message": "no", "errors": []}}
                )
            return httpx.Response(202, json={"state": "queued"})
        assert request.url.path == f"/alerts/{ALERT_ID}"
        assert request.url.params["source"] == "coscale"
        resolving = any(body["action"] == "resolved" for body in self.posted)
        script = self.after_resolve if resolving else self.before_resolve
        status, body = script.pop(0) if len(script) > 1 else script[0]
        return httpx.Response(status, json=body)

    def actions(self) -> list[str]:
        return [body["action"] for body in self.posted]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def smoke(handler: Callable[[httpx.Request], httpx.Response], timeout: float = 5) -> SmokeTest:
    clock = FakeClock()
    client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return SmokeTest(client, TOKEN, timeout=timeout, sleep=clock.sleep, clock=clock)


def test_trigger_then_resolve_both_confirmed() -> None:
    # Given an api where the event is queued a moment, then delivered, then resolved
    api = FakeApi(
        before_resolve=[
            (404, {"error": {"message": "no alert yet"}}),
            (200, view()),
            (200, OPENED),
        ],
        after_resolve=[(200, {**OPENED, "desired_status": "resolved"}), (200, RESOLVED)],
    )

    # When the test trigger runs
    result = smoke(api).run(ALERT_ID)

    # Then it reports the incident, having sent a trigger and a resolve with the token
    assert (result.incident_id, result.incident_url) == (
        "PINC1",
        "https://example.pagerduty.com/incidents/PINC1",
    )
    assert result.seconds_to_incident == 1.0  # two polls of 0.5 s
    assert api.actions() == ["triggered", "resolved"]
    assert {body["alert_id"] for body in api.posted} == {ALERT_ID}
    assert set(api.headers) == {f"Bearer {TOKEN}"}


def test_unreachable_api() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(SmokeFailed, match=r"api at http://api.test is unreachable.*refused"):
        smoke(refuse).run(ALERT_ID)


def test_refused_token() -> None:
    api = FakeApi(before_resolve=[(200, OPENED)], post_status=401)

    with pytest.raises(SmokeFailed, match="refused the ingress token \\(401\\)"):
        smoke(api).run(ALERT_ID)
    assert api.actions() == ["triggered"]  # nothing accepted, nothing to clean up


def test_event_refused_says_the_apis_message() -> None:
    api = FakeApi(before_resolve=[(200, OPENED)], post_status=422)

    with pytest.raises(SmokeFailed, match="refused the triggered event: 422 no"):
        smoke(api).run(ALERT_ID)


def test_failed_delivery_says_the_error_and_resolves_the_test_alert() -> None:
    # Given a delivery PagerDuty refused for good
    failed = view(delivery_state="failed", last_error="400 Invalid Input Provided: service")
    api = FakeApi(before_resolve=[(200, view()), (200, failed)])

    # When the test trigger runs
    with pytest.raises(SmokeFailed) as caught:
        smoke(api).run(ALERT_ID)

    # Then it names the error, and resolves the alert so nothing pages later
    assert "failed: 400 Invalid Input Provided: service" in str(caught.value)
    assert "a resolve was sent" in str(caught.value)
    assert api.actions() == ["triggered", "resolved"]


def test_timeout_says_the_state_seen() -> None:
    # Given PagerDuty down: the alert stays pending with an error
    waiting = view(attempts=3, last_error="503 Service Unavailable")
    api = FakeApi(before_resolve=[(200, waiting)])

    with pytest.raises(SmokeFailed) as caught:
        smoke(api, timeout=3).run(ALERT_ID)

    message = str(caught.value)
    assert "timed out after 3s waiting for the PagerDuty incident" in message
    assert "delivery state pending" in message and "3 attempt(s)" in message
    assert "last error: 503 Service Unavailable" in message
    assert api.actions() == ["triggered", "resolved"]


def test_timeout_when_the_alert_never_appears() -> None:
    api = FakeApi(before_resolve=[(404, {"error": {"message": "no alert"}})])

    with pytest.raises(SmokeFailed, match="never appeared"):
        smoke(api, timeout=1).run(ALERT_ID)


def test_timeout_waiting_for_the_resolve() -> None:
    api = FakeApi(
        before_resolve=[(200, OPENED)],
        after_resolve=[
            (200, {**OPENED, "desired_status": "resolved", "delivery_state": "pending"})
        ],
    )

    with pytest.raises(SmokeFailed, match="waiting for incident PINC1 to be resolved"):
        smoke(api, timeout=2).run(ALERT_ID)
    assert api.actions() == ["triggered", "resolved"]


def test_alert_ids_are_new_each_time() -> None:
    first, second = new_alert_id(), new_alert_id()
    assert first != second and first.startswith(ALERT_ID_PREFIX)
