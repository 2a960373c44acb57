"""`pagerbridge test-trigger`: the seed's "Test trigger" button, end to end.

It plays CoScale against a running api: a trigger for a fresh alert id, then waits (through
``GET /alerts/{id}``) until a worker has opened the PagerDuty incident; then a resolve, and waits
until PagerDuty confirmed it resolved. Every way this can fail ends in :class:`SmokeFailed`, whose
message says what went wrong and what was last seen, for the operator to act on.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from worker.ingress.schemas import AlertView
from worker.pipeline.message import SOURCE_COSCALE

ALERT_ID_PREFIX = "pagerbridge-test-"
POLL_INTERVAL = 0.5  # seconds between two looks at the alert
REQUEST_TIMEOUT = 10.0  # seconds for one call to the api


class SmokeFailed(Exception):
    """The test trigger did not go through; the message says why."""


@dataclass(frozen=True, slots=True)
class SmokeResult:
    alert_id: str
    incident_id: str
    incident_url: str | None
    seconds_to_incident: float
    seconds_to_resolved: float


def new_alert_id() -> str:
    """An alert id no CoScale alert has: the test never touches a real alert."""
    return f"{ALERT_ID_PREFIX}{secrets.token_hex(6)}"


@dataclass
class SmokeTest:
    """One test trigger against the api ``client`` (its ``base_url`` is the api's)."""

    client: httpx.Client
    token: str
    timeout: float = 30.0  # seconds to wait for each of the incident and its resolve
    poll_interval: float = POLL_INTERVAL
    say: Callable[[str], None] = lambda _message: None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self, alert_id: str | None = None) -> SmokeResult:
        alert_id = alert_id or new_alert_id()
        started = self.clock()
        self.send(alert_id, "triggered")
        self.say(f"trigger for alert {alert_id} accepted; waiting for the PagerDuty incident")
        try:
            opened = self.wait(
                alert_id, "the PagerDuty incident", lambda view: bool(view.pagerduty_incident_id)
            )
        except SmokeFailed as exc:
            # Whatever happened, this alert must not page anybody later.
            raise SmokeFailed(f"{exc}{self._clean_up(alert_id)}") from exc
        assert opened.pagerduty_incident_id is not None
        incident_at = self.clock()
        self.say(
            f"incident {opened.pagerduty_incident_id} opened"
            + (f": {opened.pagerduty_incident_url}" if opened.pagerduty_incident_url else "")
        )
        self.send(alert_id, "resolved")
        self.say("resolve accepted; waiting for PagerDuty to confirm it")
        self.wait(
            alert_id,
            f"incident {opened.pagerduty_incident_id} to be resolved",
            lambda view: view.confirmed_status == "resolved" and view.delivery_state == "delivered",
        )
        return SmokeResult(
            alert_id=alert_id,
            incident_id=opened.pagerduty_incident_id,
            incident_url=opened.pagerduty_incident_url,
            seconds_to_incident=round(incident_at - started, 2),
            seconds_to_resolved=round(self.clock() - incident_at, 2),
        )

    def send(self, alert_id: str, action: str) -> None:
        """POST one CoScale webhook event; SmokeFailed unless the api queued it (202)."""
        body = {
            "alert_id": alert_id,
            "action": action,
            "message": "pagerbridge test trigger",
            "app": "pagerbridge",
        }
        answer = self._call("POST", "/webhooks/coscale", json=body)
        if answer.status_code != 202:
            raise SmokeFailed(f"the api refused the {action} event: {_describe(answer)}")

    def wait(self, alert_id: str, what: str, done: Callable[[AlertView], bool]) -> AlertView:
        """Poll the alert until ``done``; SmokeFailed when it fails or ``timeout`` passes."""
        deadline = self.clock() + self.timeout
        seen: AlertView | None = None
        while True:
            answer = self._call("GET", f"/alerts/{alert_id}", params={"source": SOURCE_COSCALE})
            if answer.status_code == 200:
                seen = _alert_view(answer)
                if seen.delivery_state == "failed":
                    raise SmokeFailed(
                        f"delivery of alert {alert_id} failed: {seen.last_error or 'no error'}"
                    )
                if done(seen):
                    return seen
            elif answer.status_code != 404:  # 404: the event is still in the queue
                raise SmokeFailed(f"the api could not show alert {alert_id}: {_describe(answer)}")
            if self.clock() >= deadline:
                raise SmokeFailed(
                    f"timed out after {self.timeout:g}s waiting for {what}; {_seen(seen)}"
                )
            self.sleep(self.poll_interval)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = self.client.request(
                method, path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs
            )
        except httpx.TransportError as exc:
            raise SmokeFailed(
                f"the api at {self.client.base_url} is unreachable "
                f"({type(exc).__name__}: {exc or 'no detail'})"
            ) from exc
        if answer.status_code == 401:
            raise SmokeFailed(
                f"the api at {self.client.base_url} refused the ingress token (401): "
                "is PAGERBRIDGE_INGRESS_TOKENS here the api's?"
            )
        return answer

    def _clean_up(self, alert_id: str) -> str:
        try:
            self.send(alert_id, "resolved")
        except SmokeFailed as exc:
            return f" (the clean-up resolve failed too: {exc})"
        return " (a resolve was sent so that no incident stays open)"


def _alert_view(answer: httpx.Response) -> AlertView:
    try:
        return AlertView.model_validate(answer.json())
    except (ValueError, ValidationError) as exc:
        raise SmokeFailed(f"the api answered GET /alerts with an unexpected body: {exc}") from exc


def _describe(answer: httpx.Response) -> str:
    """The status and the api's error message (the ``{"error": {"message"}}`` shape)."""
    try:
        message = answer.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = answer.text[:200] or answer.reason_phrase
    return f"{answer.status_code} {message}"


def _seen(view: AlertView | None) -> str:
    if view is None:
        return "the alert never appeared (is a worker running and reading this namespace?)"
    return (
        f"last seen: delivery state {view.delivery_state}, desired {view.desired_status}, "
        f"confirmed {view.confirmed_status or 'nothing yet'}, {view.attempts} attempt(s)"
        + (f", last error: {view.last_error}" if view.last_error else "")
    )
