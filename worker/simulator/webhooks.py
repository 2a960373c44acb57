"""The simulator's v3 webhooks: subscriptions, and a signed delivery for every status change.

As PagerDuty (PagerDuty docs, "Webhooks v3 overview", "Verifying Signatures"): a subscription
is made with ``POST /webhook_subscriptions``, whose answer carries the signing secret, once; a
listing shows it as null. Each incident event a subscription filters in is POSTed to its URL
as ``{"event": {...}}``, signed ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the body>``,
with the event's id in ``X-Webhook-Id``. Deliveries go out from one thread, in order, and a
delivery not answered 2xx is tried again a few times.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

SIGNATURE_HEADER = "X-PagerDuty-Signature"
WEBHOOK_ATTEMPTS = 3  # PagerDuty retries for longer; a few tries are enough on loopback
WEBHOOK_RETRY_S = 0.2
INCIDENT_EVENT_TYPES = (
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
)
# Who changed an incident through the REST API, as the webhooks name it: the simulator has no
# users, so every API caller is this one.
API_AGENT = {"id": "PSIMAPI", "type": "user_reference", "summary": "REST API user"}


class SubscriptionError(ValueError):
    """A ``POST /webhook_subscriptions`` body the simulator refuses (PagerDuty's 400)."""


@dataclass(slots=True)
class Subscription:
    id: str
    url: str
    secret: str
    events: tuple[str, ...]
    filter_type: str
    filter_id: str | None
    description: str | None

    def to_pagerduty(self, *, with_secret: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "webhook_subscription",
            "active": True,
            "description": self.description,
            "delivery_method": {
                "id": f"D{self.id}",
                "type": "http_delivery_method",
                "url": self.url,
                "secret": self.secret if with_secret else None,
                "temporarily_disabled": False,
                "custom_headers": [],
            },
            "events": list(self.events),
            "filter": {"type": self.filter_type, "id": self.filter_id},
        }

    def wants(self, event_type: str, service_id: str) -> bool:
        if event_type not in self.events:
            return False
        return self.filter_type == "account_reference" or self.filter_id == service_id


@dataclass(slots=True)
class SentDelivery:
    """A delivery as sent (for tests: its body and headers can be sent again, as PagerDuty
    retries)."""

    url: str
    body: str
    headers: dict[str, str]
    status: int | None = None  # the answer to its last attempt; None: none yet, or no answer

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "body": self.body, "headers": self.headers, "status": self.status}


@dataclass
class WebhookHub:
    """Subscriptions and the sending of their deliveries. Thread-safe."""

    post: Callable[[str, bytes, dict[str, str]], int] | None = None
    _subscriptions: dict[str, Subscription] = field(default_factory=dict)
    _sent: list[SentDelivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _outbox: queue.Queue[SentDelivery | None] = field(default_factory=queue.Queue)
    _sender: threading.Thread | None = None

    def subscribe(self, body: object) -> dict[str, Any]:
        """``POST /webhook_subscriptions``: the subscription, with its secret (this once)."""
        if not isinstance(body, dict) or not isinstance(body.get("webhook_subscription"), dict):
            raise SubscriptionError("Body must be an object with a 'webhook_subscription' object")
        given = body["webhook_subscription"]
        method = given.get("delivery_method")
        url = method.get("url") if isinstance(method, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SubscriptionError("delivery_method.url must be an http(s) URL")
        events = given.get("events")
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(name, str) for name in events)
        ):
            raise SubscriptionError("events must be a non-empty list of event types")
        where = given.get("filter")
        filter_type = where.get("type") if isinstance(where, dict) else None
        filter_id = where.get("id") if isinstance(where, dict) else None
        if filter_type not in ("account_reference", "service_reference", "team_reference"):
            raise SubscriptionError(
                "filter.type must be account_reference, service_reference or team_reference"
            )
        if filter_type != "account_reference" and not isinstance(filter_id, str):
            raise SubscriptionError("filter.id is required for this filter type")
        description = given.get("description")
        subscription = Subscription(
            id="P" + uuid.uuid4().hex[:6].upper(),
            url=url,
            secret=secrets.token_urlsafe(24),
            events=tuple(dict.fromkeys(events)),
            filter_type=filter_type,
            filter_id=filter_id if filter_type != "account_reference" else None,
            description=description if isinstance(description, str) else None,
        )
        with self._lock:
            self._subscriptions[subscription.id] = subscription
        return subscription.to_pagerduty(with_secret=True)

    def subscriptions(self) -> list[dict[str, Any]]:
        """``GET /webhook_subscriptions``: every subscription, never its secret."""
        with self._lock:
            return [s.to_pagerduty(with_secret=False) for s in self._subscriptions.values()]

    def sent(self) -> list[dict[str, Any]]:
        with self._lock:
            return [delivery.to_json() for delivery in self._sent]

    def clear(self) -> None:
        with self._lock:
            self._subscriptions.clear()
            self._sent.clear()

    def publish(
        self, event_type: str, incident: dict[str, Any], agent: dict[str, Any] | None
    ) -> None:
        """A status change of ``incident`` (as the REST API shows it), to every subscription
        that wants it."""
        service_id = str(incident.get("service", {}).get("id", ""))
        event_id = uuid.uuid4().hex[:26].upper()
        occurred_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            wanted = [s for s in self._subscriptions.values() if s.wants(event_type, service_id)]
            for subscription in wanted:
                body = json.dumps(
                    {
                        "event": {
                            "id": event_id,
                            "event_type": event_type,
                            "resource_type": "incident",
                            "occurred_at": occurred_at,
                            "agent": agent,
                            "client": None,
                            "data": {
                                **incident,
                                "type": "incident",
                                "number": incident.get("incident_number"),
                            },
                        }
                    }
                )
                delivery = SentDelivery(
                    subscription.url,
                    body,
                    {
                        "Content-Type": "application/json",
                        "User-Agent": "PagerDuty-Webhook/V3.0",
                        "X-Webhook-Id": event_id,
                        "X-Webhook-Subscription": subscription.id,
                        SIGNATURE_HEADER: _signature(body.encode(), subscription.secret),
                    },
                )
                self._sent.append(delivery)
                self._outbox.put(delivery)
                self._start_sender()

    def _start_sender(self) -> None:
        # Under the lock. One thread for every delivery, started at the first one.
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_all, name="webhooks", daemon=True)
            self._sender.start()

    def _send_all(self) -> None:
        post = self.post or _post
        while True:
            delivery = self._outbox.get()
            if delivery is None:
                return
            for attempt in range(WEBHOOK_ATTEMPTS):
                try:
                    delivery.status = post(delivery.url, delivery.body.encode(), delivery.headers)
                except httpx.HTTPError:
                    delivery.status = None
                if delivery.status is not None and 200 <= delivery.status < 300:
                    break
                if attempt + 1 < WEBHOOK_ATTEMPTS:
                    time.sleep(WEBHOOK_RETRY_S)


def _signature(body: bytes, secret: str) -> str:
    # Made here, not with the bridge's code: the simulator checks the bridge, not itself.
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    # PagerDuty waits 5 s for an answer (PagerDuty docs, "Webhook Behavior").
    return httpx.post(url, content=body, headers=headers, timeout=5.0).status_code


def event_type_of(from_status: str | None, to_status: str, *, reopened: bool) -> str | None:
    """The webhook event type of a status change; None when the status did not change."""
    if from_status is None:
        return "incident.triggered"
    if reopened or (from_status == "resolved" and to_status != "resolved"):
        return "incident.reopened"
    if from_status == to_status:
        return None
    if to_status == "acknowledged":
        return "incident.acknowledged"
    if to_status == "resolved":
        return "incident.resolved"
    return "incident.unacknowledged"
