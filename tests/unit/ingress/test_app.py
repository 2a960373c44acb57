"""The ingress: what CoScale sends, what it gets back, what is queued (no Redis, no worker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Tracer
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tests.fakes import ListQueue
from worker.ingress import incidents
from worker.ingress.access import BRIDGE_ID_PREFIX
from worker.ingress.app import create_app, fastapi_telemetry
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import apply_event
from worker.pipeline.message import SOURCE_API, SOURCE_COSCALE
from worker.settings import Settings
from worker.vocabulary import AlertStatus

TOKEN = "ingress-secret-1-0123456789abcdef01"
AUTH = {"Authorization": f"Token token={TOKEN}"}
WEBHOOK = {
    "alert_id": "1234",
    "action": "triggered",
    "message": "CPU > 90%",
    "metric": "cpu",
    "subject": "web-1",
    "dimensions": "",
    "app": "shop",
    "link": "https://app.coscale.com/x",
    "date": "2026-11-27",
    "time": "10:00",
    "host": "web-1",
}


@pytest.fixture
def queue() -> ListQueue:
    return ListQueue()


@pytest.fixture
def redis_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(
    queue: ListQueue, sqlite_sessions: sessionmaker[Session], redis_server: fakeredis.FakeServer
) -> Iterator[TestClient]:
    settings = Settings(
        ingress_tokens=f"{TOKEN},second-token-0123456789abcdef012345",  # type: ignore[arg-type]
        pagerduty_service_id="PDEFAULT",
        public_url="https://bridge.example",
    )
    redis = fakeredis.FakeRedis(server=redis_server)

    def redis_ping() -> None:
        redis.ping()

    # Through the inbox, as in production: updates are checked against what it recorded.
    durable = DurableEventQueue(queue, sqlite_sessions)
    app = create_app(settings, queue=durable, sessions=sqlite_sessions, redis_ping=redis_ping)
    with TestClient(app) as test_client:
        yield test_client


def test_webhook_queues_the_event_and_answers_202(client: TestClient, queue: ListQueue) -> None:
    answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.status_code == 202
    body = answer.json()
    assert body["alert_id"] == "1234" and body["state"] == "queued"
    (event,) = queue.events
    assert event.event_id == body["event_id"]
    assert (event.source, event.alert_id, event.action) == (
        SOURCE_COSCALE,
        "1234",
        AlertStatus.TRIGGERED,
    )
    assert event.service_id == "PDEFAULT"
    assert event.title == (
        "Alert triggered for CPU > 90% cpuweb-1at 10:00 (2026-11-27) on application shop. "
        "https://app.coscale.com/x"
    )


def test_bearer_and_any_valid_token(client: TestClient, queue: ListQueue) -> None:
    answer = client.post(
        "/webhooks/coscale",
        json=WEBHOOK,
        headers={"Authorization": "Bearer second-token-0123456789abcdef012345"},
    )
    assert answer.status_code == 202


@pytest.mark.parametrize("header", [None, "Token token=wrong", "Bearer", "Basic abc", TOKEN])
def test_bad_token_is_401_and_nothing_queued(
    client: TestClient, queue: ListQueue, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=headers)
    assert answer.status_code == 401
    assert "WWW-Authenticate" in answer.headers
    assert TOKEN not in answer.text and "second-token" not in answer.text
    assert queue.events == []


def test_numeric_alert_id_and_verb_action(client: TestClient, queue: ListQueue) -> None:
    answer = client.post(
        "/webhooks/coscale", json={"alert_id": 77, "action": "RESOLVE"}, headers=AUTH
    )
    assert answer.status_code == 202
    assert (queue.events[0].alert_id, queue.events[0].action) == ("77", AlertStatus.RESOLVED)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "triggered"}, "alert_id"),
        ({"alert_id": "1", "action": "exploded"}, "action"),
        ({"alert_id": "", "action": "triggered"}, "alert_id"),
        ({"alert_id": "a\nb", "action": "triggered"}, "alert_id"),
        ({"alert_id": "1", "action": "triggered", "urgency": "urgent"}, "urgency"),
    ],
)
def test_invalid_webhook_is_422_naming_the_field(
    client: TestClient, queue: ListQueue, body: dict[str, object], field: str
) -> None:
    answer = client.post("/webhooks/coscale", json=body, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field
    assert queue.events == []


def test_title_field_overrides_template(client: TestClient, queue: ListQueue) -> None:
    client.post("/webhooks/coscale", json={**WEBHOOK, "title": "{MSG} custom"}, headers=AUTH)
    assert queue.events[0].title == "{MSG} custom"


def test_redis_and_database_down_is_503_not_a_silent_drop(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    queue.broken = True
    with sqlite_sessions.begin() as session:  # the inbox table gone: the database refuses
        session.execute(text("DROP TABLE inbox_events"))
    answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]


def test_the_api_contacts_503_is_in_pagerdutys_error_shape_without_a_null_code(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    queue.broken = True
    with sqlite_sessions.begin() as session:
        session.execute(text("DROP TABLE inbox_events"))
    incident = {"type": "incident", "title": "t", "service": {"id": "P1", "type": "service"}}
    answer = client.post("/incidents", json={"incident": incident}, headers=AUTH)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    error = answer.json()["error"]
    assert "code" not in error and "field" not in error
    assert error["message"] and error["errors"]


def test_the_api_contacts_500_carries_pagerdutys_internal_error_code(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def a_bug(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr(incidents, "incident_by_id", a_bug)
    client_500 = TestClient(client.app, raise_server_exceptions=False)
    answer = client_500.get("/incidents/PBAAAAAAAAAAAAAAAA", headers=AUTH)
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == 2000
    assert "secret detail" not in answer.text


def test_api_contact_create_answers_pagerduty_shape(client: TestClient, queue: ListQueue) -> None:
    # The seed's Trigger tab, unchanged but for host and token
    seed_body = {
        "incident": {
            "type": "incident",
            "title": "Alert triggered for CPU high",
            "service": {"id": "PXFL9LI", "type": "service_reference"},
        }
    }
    answer = client.post(
        "/incidents",
        json=seed_body,
        headers={
            **AUTH,
            "Accept": "application/vnd.pagerduty+json;version=2",
            "From": "me@example.com",
        },
    )
    assert answer.status_code == 201
    incident = answer.json()["incident"]
    assert incident["id"].startswith(BRIDGE_ID_PREFIX)  # "Parse response: JSON incident.id"
    (event,) = queue.events
    assert (event.source, event.alert_id, event.service_id, event.title) == (
        SOURCE_API,
        incident["id"],
        "PXFL9LI",
        "Alert triggered for CPU high",
    )


def test_api_contact_bulk_and_single_updates(client: TestClient, queue: ListQueue) -> None:
    bridge_id = client.post(
        "/incidents",
        headers=AUTH,
        json={
            "incident": {
                "type": "incident",
                "title": "t",
                "service": {"id": "P1", "type": "service_reference"},
            },
        },
    ).json()["incident"]["id"]
    bulk = client.put(
        "/incidents",
        headers=AUTH,
        json={
            "incidents": [{"id": bridge_id, "type": "incident_reference", "status": "acknowledged"}]
        },
    )
    assert bulk.status_code == 200
    assert bulk.json()["incidents"][0] == {
        "id": bridge_id,
        "type": "incident",
        "status": "acknowledged",
        "html_url": f"https://bridge.example/alerts/{bridge_id}",
    }
    single = client.put(
        f"/incidents/{bridge_id}",
        headers=AUTH,
        json={"incident": {"type": "incident_reference", "status": "resolved"}},
    )
    assert single.status_code == 200
    actions = [(e.alert_id, e.action, e.incident_id) for e in queue.events[1:]]
    assert actions == [
        (bridge_id, AlertStatus.ACKNOWLEDGED, None),
        (bridge_id, AlertStatus.RESOLVED, None),
    ]


def test_api_contact_update_of_a_pagerduty_id_is_refused_by_default(
    client: TestClient, queue: ListQueue
) -> None:
    answer = client.put(
        "/incidents/PT4KHLK",
        headers=AUTH,
        json={"incident": {"type": "incident_reference", "status": "resolved"}},
    )
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == 2100
    assert "PAGERBRIDGE_FORWARD_FOREIGN_UPDATES" in error["errors"][0]
    assert queue.events == []


def test_bulk_update_over_250_is_refused(client: TestClient) -> None:
    items = [
        {"id": f"PB{i}", "type": "incident_reference", "status": "resolved"} for i in range(251)
    ]
    answer = client.put("/incidents", headers=AUTH, json={"incidents": items})
    assert answer.status_code == 413  # updateIncidents documents 413 past 250


def test_alert_mapping_is_visible(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    assert client.get("/alerts/1234", headers=AUTH).status_code == 404
    queue.on_publish = lambda event: apply_event(sqlite_sessions, event, event.received_at)
    client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    view = client.get("/alerts/1234", headers=AUTH).json()
    assert (view["desired_status"], view["delivery_state"], view["pagerduty_incident_id"]) == (
        "triggered",
        "pending",
        None,
    )
    assert view["timeline"][0]["outcome"] == "opened"


def test_health_and_readiness(client: TestClient, redis_server: fakeredis.FakeServer) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz", headers=AUTH)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    redis_server.connected = False
    not_ready = client.get("/readyz", headers=AUTH)
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"]["status"] == "down"
    assert not_ready.json()["checks"]["database"]["status"] == "ok"


def test_metrics_count_events(client: TestClient) -> None:
    client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    text = client.get("/metrics", headers=AUTH).text
    assert 'pagerbridge_events_received_total{action="triggered",source="coscale"}' in text


def test_no_service_anywhere_is_422(
    queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    settings = Settings(ingress_tokens=TOKEN)  # type: ignore[arg-type]
    app = create_app(settings, queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None)
    with TestClient(app) as client:
        answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.status_code == 422
    assert "PAGERBRIDGE_PAGERDUTY_SERVICE_ID" in answer.json()["error"]["message"]


def test_readiness_reports_refused_credentials_and_breaker(
    queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    from worker.delivery.gate import DeliveryGate

    gate = DeliveryGate(fakeredis.FakeRedis(), "pd-token", failure_threshold=1)
    settings = Settings(ingress_tokens=TOKEN)  # type: ignore[arg-type]
    app = create_app(
        settings, queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None, gate=gate
    )
    with TestClient(app) as client:
        gate.failed()  # the breaker opens: reported, still ready (events are still taken)
        open_breaker = client.get("/readyz", headers=AUTH)
        assert open_breaker.status_code == 200
        assert open_breaker.json()["checks"]["pagerduty_breaker"]["status"] == "open"
        gate.refused_credentials("PagerDuty HTTP 401: Unauthorized")
        refused = client.get("/readyz", headers=AUTH)
    assert refused.status_code == 503
    assert "401" in refused.json()["checks"]["pagerduty_credentials"]["reason"]
    assert "pd-token" not in refused.text


def test_the_schema_says_which_operations_need_the_ingress_token(client: TestClient) -> None:
    schema = client.get("/openapi.json", headers=AUTH).json()
    assert schema["components"]["securitySchemes"]["IngressToken"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "An ingress token: 'Token token=<token>' or 'Bearer <token>'.",
    }
    secured = {
        (path, method)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"IngressToken": []}]
    }
    every = {
        (path, method) for path, operations in schema["paths"].items() for method in operations
    }
    # PagerDuty's webhooks are authenticated by its signature, not by a token.
    assert every - secured == {
        ("/healthz", "get"),
        ("/webhooks/pagerduty", "post"),
        ("/webhooks/pagerduty/{route_name}", "post"),
    }
    assert {("/webhooks/coscale", "post"), ("/incidents", "post"), ("/metrics", "get")} <= secured
    # The token is not also a header parameter of its own
    for operations in schema["paths"].values():
        for operation in operations.values():
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            assert "authorization" not in names


class _RecordingTracerProvider(trace.TracerProvider):
    """A configured OpenTelemetry tracer provider that counts the tracers asked of it."""

    def __init__(self) -> None:
        self.tracers = 0

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        self.tracers += 1
        return NoOpTracer()


@pytest.mark.parametrize(
    ("environ", "traced"),
    [({}, False), ({"PATH": "/bin"}, False), ({"OTEL_SERVICE_NAME": "pagerbridge"}, True)],
)
def test_fastapi_telemetry_only_where_the_environment_configures_opentelemetry(
    monkeypatch: pytest.MonkeyPatch,
    queue: ListQueue,
    sqlite_sessions: sessionmaker[Session],
    environ: dict[str, str],
    traced: bool,
) -> None:
    provider = _RecordingTracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    for name in [name for name in os.environ if name.startswith(("OTEL_", "FASTAPI_OTEL_"))]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = Settings(ingress_tokens=TOKEN, pagerduty_service_id="PDEFAULT")  # type: ignore[arg-type]
    app = create_app(settings, queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None)
    with TestClient(app) as test_client:
        answer = test_client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.status_code == 202
    assert (provider.tracers > 0) is traced
    assert fastapi_telemetry(environ) == (
        None if traced else dict.fromkeys(("tracing", "metrics", "logs"), False)
    )
