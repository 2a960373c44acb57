"""PagerDuty's Events API v2 in process: the simulator's ASGI app behind ``httpx.MockTransport``.

The REST fake (``fakes.FakePagerDuty``) calls the simulator's rules directly; this one passes
each request through the simulator's whole app, so an event meets exactly what
``pagerbridge simulate`` would answer: the Events API's 400 body, de-duplication, and the fault
plan's 429s (with ``ratelimit-*`` headers), outages and lost answers. Scripted outcomes come
first, for what the app cannot do in process (a connection refused, a read timeout, any
answer at all).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.testclient import TestClient

from worker.pagerduty.events import EventsClient
from worker.simulator.events_api import EVENTS_ROUTE
from worker.simulator.fault_plan import ConfigurableFaults
from worker.simulator.faults import FaultSettings
from worker.simulator.server import create_app
from worker.simulator.state import SimulatedPagerDuty

ROUTING_KEY = "R0UTINGKEY0000000000000000000001"
EVENTS_URL = "https://events.pagerduty.test" + EVENTS_ROUTE
FROZEN_NOW = datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC)

#: What the next request gets instead of the app: an ``httpx.Response``, an exception to raise
#: (a transport failure), or a function of the request returning either.
Scripted = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeEventsApi:
    """The simulator's Events API; ``requests`` records every request the client made."""

    routing_keys: Iterable[str] | None = None  # None: any key is accepted
    faults: FaultSettings | None = None
    simulator: SimulatedPagerDuty = field(
        default_factory=lambda: SimulatedPagerDuty(clock=lambda: FROZEN_NOW, seed=7)
    )
    requests: list[httpx.Request] = field(default_factory=list)
    scripted: list[Scripted] = field(default_factory=list)
    #: What the request for an event with this dedup_key gets instead of the app: events sent
    #: together reach the API in any order, so an outcome meant for one of them names it.
    scripted_for: dict[str, Scripted] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # requests come from threads
    monotonic: Callable[[], float] = lambda: 1000.0  # the rate-limit buckets' clock

    def __post_init__(self) -> None:
        self.fault_plan = ConfigurableFaults(self.faults, monotonic=self.monotonic)
        app = create_app(self.simulator, fault_plan=self.fault_plan, routing_keys=self.routing_keys)
        self.app_client = TestClient(app, base_url="https://events.pagerduty.test")

    def client(self, routing_key: str = ROUTING_KEY, **options: Any) -> EventsClient:
        return EventsClient(
            routing_key, url=EVENTS_URL, transport=httpx.MockTransport(self.handle), **options
        )

    def then(self, *outcomes: Scripted) -> None:
        """Answer the next requests with these, in order, before the app answers again."""
        self.scripted.extend(outcomes)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            outcome = self.scripted.pop(0) if self.scripted else None
        if outcome is None:
            outcome = self.scripted_for.get(json.loads(request.content).get("dedup_key"))
        if outcome is not None:
            if isinstance(outcome, Exception):
                raise outcome
            return outcome if isinstance(outcome, httpx.Response) else outcome(request)
        answer = self.app_client.request(
            request.method,
            request.url.path,
            content=request.content,
            headers={"Content-Type": request.headers.get("Content-Type", "")},
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def last_body(self) -> Any:
        return json.loads(self.requests[-1].content)

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.simulator.state()["events"]["alerts"]
        return found

    def close(self) -> None:
        self.app_client.close()
