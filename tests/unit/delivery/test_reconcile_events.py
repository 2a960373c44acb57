"""The reconcile loop for a route on the Events API v2 backend, against the simulator's Events
API behind httpx.MockTransport (tests/fake_events_api.py), with SQLite."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert
from tests.fake_events_api import ROUTING_KEY, FakeEventsApi
from worker.delivery.answers import Backend
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.pipeline.intake import AppliedEvent, apply_event
from worker.pipeline.message import BACKEND_EVENTS, SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.routes_file import parse_routes
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

T, A, R = AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED
START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ROUTE = "db-team"
ROUTES = parse_routes(
    {
        "route": [
            {
                "name": ROUTE,
                "tokens": ["an-ingress-token-for-db-team-01234567"],
                "backend": "events",
                "events": {"routing_key": ROUTING_KEY, "severity": "warning"},
            }
        ]
    }
)
FIELDS = {"alert_id": "42", "message": "Disk 95% full", "subject": "db-1", "metric": "disk"}


@pytest.fixture
def events_api() -> Iterator[FakeEventsApi]:
    api = FakeEventsApi()
    yield api
    api.close()


@pytest.fixture
def reconciler(sqlite_sessions: sessionmaker[Session], events_api: FakeEventsApi) -> Reconciler:
    client = events_api.client()
    backends = {ROUTE: Backend(events=client)}
    settings = Settings(retry_min_backoff=5, retry_max_backoff=300, give_up_after=3600)
    return Reconciler(
        sqlite_sessions,
        None,
        settings,
        backends=backends.get,
        clock=lambda: START + timedelta(seconds=5),
    )


Send = Callable[..., AppliedEvent]


@pytest.fixture
def send(sqlite_sessions: sessionmaker[Session]) -> Send:
    """Apply an event of the events route as a worker would (the ingress built the trigger)."""

    def _send(action: AlertStatus, *, at: float = 0, route: str = ROUTE) -> AppliedEvent:
        config = ROUTES.by_name(ROUTE)
        assert config is not None and config.events is not None
        payload = config.events.build("trigger", "set-by-the-worker", FIELDS)
        del payload["dedup_key"], payload["event_action"]
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=f"{SOURCE_COSCALE}:{route}",
            alert_id="42",
            action=action,
            received_at=START + timedelta(seconds=at),
            title=payload["payload"]["summary"],
            fields=FIELDS,
            route=route,
            backend=BACKEND_EVENTS,
            event_payload=payload if action is T else None,
        )
        return apply_event(sqlite_sessions, event, START + timedelta(seconds=at))

    return _send


def deliver(reconciler: Reconciler, applied: AppliedEvent) -> ReconcileResult:
    assert applied.alert_pk is not None
    return reconciler.reconcile(applied.alert_pk)


def row(sessions: sessionmaker[Session]) -> Alert:
    with sessions() as session:
        found = session.scalars(select(Alert).order_by(Alert.cycle.desc())).first()
        assert found is not None
        return found


def test_trigger_acknowledge_resolve_reach_one_alert_by_its_dedup_key(
    send: Send, reconciler: Reconciler, events_api: FakeEventsApi
) -> None:
    assert deliver(reconciler, send(T, at=0)) is ReconcileResult.DELIVERED
    (alert,) = events_api.alerts()
    assert alert["dedup_key"] == f"pagerbridge/coscale:{ROUTE}/42/1"
    assert "Disk 95% full" in alert["summary"]  # the seed template by default
    assert alert["severity"] == "warning"
    assert alert["custom_details"]["subject"] == "db-1"
    assert deliver(reconciler, send(A, at=1)) is ReconcileResult.DELIVERED
    assert events_api.alerts()[0]["status"] == "acknowledged"
    assert deliver(reconciler, send(R, at=2)) is ReconcileResult.DELIVERED
    assert events_api.alerts()[0]["status"] == "resolved"
    # No routing key ever left the client but in the request body
    assert all(ROUTING_KEY not in str(request.url) for request in events_api.requests)


def test_a_resolve_before_the_trigger_was_sent_sends_nothing(
    send: Send, reconciler: Reconciler, events_api: FakeEventsApi
) -> None:
    send(T, at=0)
    assert deliver(reconciler, send(R, at=1)) is ReconcileResult.DELIVERED
    assert events_api.requests == []


def test_an_acknowledge_is_never_sent_after_a_resolve(
    send: Send, reconciler: Reconciler, events_api: FakeEventsApi
) -> None:
    deliver(reconciler, send(T, at=0))
    send(R, at=2)
    # CoScale acknowledged before it resolved, but the acknowledge is applied last
    deliver(reconciler, send(A, at=1))
    assert [body["event_action"] for body in bodies(events_api)] == ["trigger", "resolve"]


def test_a_lost_answer_is_retried_and_joins_the_same_alert(
    send: Send,
    reconciler: Reconciler,
    events_api: FakeEventsApi,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # The first trigger lands, its answer is lost on the way back
    events_api.then(lambda request: lost(events_api, request))
    applied = send(T, at=0)
    assert deliver(reconciler, applied) is ReconcileResult.RETRY
    assert row(sqlite_sessions).delivery_state is DeliveryState.PENDING
    assert deliver(reconciler, applied) is ReconcileResult.DELIVERED
    (alert,) = events_api.alerts()
    assert alert["triggers_joined"] == 1


def test_a_bad_request_fails_the_alert_with_pagerdutys_errors(
    send: Send,
    reconciler: Reconciler,
    events_api: FakeEventsApi,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    events_api.then(
        httpx.Response(
            400,
            json={
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["'payload.summary' is missing or blank"],
            },
        )
    )
    assert deliver(reconciler, send(T)) is ReconcileResult.FAILED
    assert "payload.summary" in (row(sqlite_sessions).last_error or "")


def test_a_route_gone_from_the_routes_file_parks_its_alerts(
    send: Send,
    reconciler: Reconciler,
    events_api: FakeEventsApi,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    assert deliver(reconciler, send(T, route="gone")) is ReconcileResult.PARKED
    assert "gone" in (row(sqlite_sessions).last_error or "")
    assert events_api.requests == []


def bodies(api: FakeEventsApi) -> list[dict[str, object]]:
    return [json.loads(request.content) for request in api.requests]


def lost(api: FakeEventsApi, request: httpx.Request) -> httpx.Response:
    """The simulator takes the event; the answer never arrives."""
    api.app_client.request(
        request.method,
        request.url.path,
        content=request.content,
        headers={"Content-Type": "application/json"},
    )
    raise httpx.ReadTimeout("the answer was lost", request=request)


def test_a_storms_events_go_out_together_after_a_slow_start(
    sqlite_sessions: sessionmaker[Session], reconciler: Reconciler, events_api: FakeEventsApi
) -> None:
    reconciler.settings = reconciler.settings.model_copy(update={"pagerduty_calls_in_flight": 4})
    client = reconciler.backends(ROUTE).events  # type: ignore[misc, union-attr]
    groups: list[int] = []
    send_together = client.send_together
    client.send_together = lambda events: groups.append(len(events)) or send_together(events)
    config = ROUTES.by_name(ROUTE)
    assert config is not None and config.events is not None
    applied = []
    for n in range(9):
        payload = config.events.build(
            "trigger", "set-by-the-worker", {**FIELDS, "alert_id": str(n)}
        )
        del payload["dedup_key"], payload["event_action"]
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=f"{SOURCE_COSCALE}:{ROUTE}",
            alert_id=f"storm-{n}",
            action=T,
            received_at=START,
            title=payload["payload"]["summary"],
            fields=FIELDS,
            route=ROUTE,
            backend=BACKEND_EVENTS,
            event_payload=payload,
        )
        applied.append(apply_event(sqlite_sessions, event, START))
    results = reconciler.reconcile_many([a.alert_pk for a in applied if a.alert_pk])
    assert set(results.values()) == {ReconcileResult.DELIVERED}
    assert groups == [2, 4, 2]  # the first alone, then 2, then 4, then the 2 left
    assert len(events_api.alerts()) == 9
