"""Fakes shared by unit tests: PagerDuty behind an ``httpx.MockTransport``, a queue in a list,
CoScale events, and a count of a reconciler's planning transactions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from worker.delivery.reconcile import Reconciler
from worker.errors import ServiceUnavailable
from worker.pagerduty import PagerDutyClient
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.queue import QueuedIn
from worker.simulator.rest import SimulatedError
from worker.simulator.state import SimulatedPagerDuty
from worker.vocabulary import AlertStatus

TOKEN = "unit-test-pagerduty-token"


@dataclass
class FakePagerDuty:
    """The simulator's rules served through ``httpx.MockTransport``, with scripted faults.

    ``faults`` holds, per call kind ("create", "update", "find"), a list of what the next calls
    of that kind do: ``"503"`` answers 503 without acting, ``"lost"`` acts and answers 502 (the
    bridge never hears that PagerDuty did the work), ``"401"`` refuses the credentials.
    ``create_faults`` says the same of the creates for given alert ids: creates that go out
    together reach PagerDuty in any order, so a fault meant for one of them names it.
    """

    simulator: SimulatedPagerDuty = field(default_factory=lambda: SimulatedPagerDuty(seed=1))
    faults: dict[str, list[str]] = field(default_factory=dict)
    create_faults: Callable[[str], str | None] | None = None  # an alert id's create's fault
    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # requests come from threads

    def client(self) -> PagerDutyClient:
        return PagerDutyClient(
            "https://pagerduty.test",
            TOKEN,
            "bridge@example.com",
            transport=httpx.MockTransport(self.handle),
        )

    def fail_next(self, kind: str, *outcomes: str) -> None:
        self.faults.setdefault(kind, []).extend(outcomes)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = (
            "create"
            if request.method == "POST"
            else "find"
            if request.method == "GET"
            else "update"
        )
        with self.lock:
            self.calls.append((request.method, path))
            fault = self.faults[kind].pop(0) if self.faults.get(kind) else None
        if kind == "create" and self.create_faults is not None:
            # pagerbridge/<source>/<alert id>/<cycle> (worker/pipeline/intake.py)
            key = json.loads(request.content)["incident"]["incident_key"]
            fault = self.create_faults(key.split("/")[2])
        if fault == "503":
            return httpx.Response(503, text="upstream unavailable")
        if fault == "401":
            return httpx.Response(401, json={"error": {"message": "Unauthorized", "code": 2006}})
        try:
            body = self._dispatch(request, path)
        except SimulatedError as error:
            return httpx.Response(error.status, json=error.envelope())
        if fault == "lost":
            return httpx.Response(502, text="bad gateway")
        return httpx.Response(201 if request.method == "POST" else 200, json=body)

    def _dispatch(self, request: httpx.Request, path: str) -> dict[str, object]:
        sim = self.simulator
        if request.method == "POST" and path == "/incidents":
            return {"incident": sim.create_incident(json.loads(request.content))}
        if request.method == "PUT" and path == "/incidents":
            return {"incidents": sim.update_incidents(json.loads(request.content))}
        if request.method == "PUT":
            return {
                "incident": sim.update_incident(path.rsplit("/", 1)[1], json.loads(request.content))
            }
        if path.startswith("/incidents/"):
            return {"incident": sim.get_incident(path.rsplit("/", 1)[1])}
        params = request.url.params
        return sim.list_incidents(
            incident_key=params.get("incident_key"),
            statuses=params.get_list("statuses[]"),
            date_range=params.get("date_range"),
        )

    def incidents(self) -> list[dict[str, object]]:
        return list(self.simulator.state()["incidents"])


@dataclass
class ListQueue:
    """The ingress's queue, as a list; ``broken`` makes it refuse like a Redis that is down."""

    events: list[AlertEventMessage] = field(default_factory=list)
    broken: bool = False
    on_publish: Callable[[AlertEventMessage], None] | None = None
    batches: list[int] = field(default_factory=list)  # events per publish_many call

    def publish(self, event: AlertEventMessage) -> QueuedIn:
        return self.publish_many([event])

    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        if self.broken:
            raise ServiceUnavailable("redis is down (fake)")
        self.events.extend(events)
        self.batches.append(len(events))
        for event in events:
            if self.on_publish:
                self.on_publish(event)
        return "queue"


def trigger_events(
    *alert_ids: str,
    received_at: datetime,
    action: AlertStatus = AlertStatus.TRIGGERED,
) -> list[AlertEventMessage]:
    """One CoScale event per alert id, as the ingress would stamp them (a trigger carries the
    title; other actions none)."""
    return [
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id=alert_id,
            action=action,
            received_at=received_at,
            title="CPU high" if action is AlertStatus.TRIGGERED else None,
            details="Message: CPU high",
            service_id="PSVC",
        )
        for alert_id in alert_ids
    ]


def count_plans(reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The alert ids of every planning transaction ``reconciler`` runs from now on."""
    planned: list[list[int]] = []
    plan = reconciler._plan

    def counted(alert_pks: list[int], *args: Any, **kwargs: Any) -> Any:
        planned.append(list(alert_pks))
        return plan(alert_pks, *args, **kwargs)

    monkeypatch.setattr(reconciler, "_plan", counted)
    return planned
