"""The PagerDuty-shaped API contact as PagerDuty answers: the client's incident_key and its
duplicate, the fields PagerDuty takes, reads from the mapping, errors in PagerDuty's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, utcnow
from tests.fakes import ListQueue
from tests.unit.ingress.test_access import DEFAULT_TOKEN, ROUTES, WEB_TOKEN, auth
from worker.delivery.policy import Create, plan_delivery
from worker.ingress.app import create_app
from worker.ingress.incidents import DUPLICATE_KEY
from worker.ingress.schemas import REOPEN_REFUSED
from worker.pagerduty import PagerDutyClient
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import apply_event
from worker.settings import Settings
from worker.vocabulary import AlertStatus

AUTH = auth(DEFAULT_TOKEN)
PRIORITY = {"id": "PPRIO01", "type": "priority_reference"}


@pytest.fixture
def queue() -> ListQueue:
    return ListQueue()


@pytest.fixture
def client(queue: ListQueue, sqlite_sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    settings = Settings(
        ingress_tokens=DEFAULT_TOKEN,  # type: ignore[arg-type]
        pagerduty_service_id="PDEFAULT",
        public_url="https://bridge.example",
    )
    app = create_app(
        settings,
        queue=DurableEventQueue(queue, sqlite_sessions),
        sessions=sqlite_sessions,
        redis_ping=lambda: None,
        routes=ROUTES,
    )
    with TestClient(app) as test_client:
        yield test_client


def incident(**fields: Any) -> dict[str, Any]:
    return {"incident": {"type": "incident", "title": "disk full", **fields}}


def apply_all(queue: ListQueue, sessions: sessionmaker[Session]) -> None:
    for event in queue.events:
        apply_event(sessions, event, utcnow())
    queue.events.clear()


def test_the_clients_key_is_the_incident_key_and_its_duplicate_is_refused_as_pagerduty_does(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    first = client.post("/incidents", headers=AUTH, json=incident(incident_key="disk/web-1"))
    assert first.status_code == 201
    assert first.json()["incident"]["incident_key"] == "disk/web-1"
    assert queue.events[0].incident_key == "disk/web-1"
    # Refused while the first waits in the inbox, and once it is in the mapping.
    for _ in range(2):
        again = client.post("/incidents", headers=AUTH, json=incident(incident_key="disk/web-1"))
        assert again.status_code == 400
        assert again.json()["error"] == {
            "message": "Invalid Input Provided",
            "code": 2001,
            "errors": [DUPLICATE_KEY],
            "field": "incident.incident_key",
        }
        apply_all(queue, sqlite_sessions)
    with sqlite_sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
        assert alert.incident_key == "disk/web-1"
    # Another service's key is another key; without a key the bridge mints its own.
    other = incident(incident_key="disk/web-1", service={"id": "POTHER1"})
    assert client.post("/incidents", headers=AUTH, json=other).status_code == 201
    minted = client.post("/incidents", headers=AUTH, json=incident()).json()["incident"]
    assert minted["incident_key"] and minted["incident_key"] != "disk/web-1"
    # Resolved, the key may open a new incident (PagerDuty refuses only an open one's key).
    bridge_id = first.json()["incident"]["id"]
    resolve = {"incident": {"type": "incident_reference", "status": "resolved"}}
    assert client.put(f"/incidents/{bridge_id}", headers=AUTH, json=resolve).status_code == 200
    apply_all(queue, sqlite_sessions)
    reused = client.post("/incidents", headers=AUTH, json=incident(incident_key="disk/web-1"))
    assert reused.status_code == 201
    apply_all(queue, sqlite_sessions)
    with sqlite_sessions() as session:
        keyed = session.scalars(select(Alert).where(Alert.incident_key == "disk/web-1")).all()
        assert len(keyed) == 3


def test_the_fields_pagerduty_takes_travel_to_the_create(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    fields = {
        "priority": PRIORITY,
        "assignments": [{"assignee": {"id": "PUSER01", "type": "user_reference"}}],
        "conference_bridge": {"conference_url": "https://meet.example/x"},
        "incident_type": {"name": "major"},
        "body": {"type": "incident_body", "details": {"disk": "/var", "used": 99}},
        "urgency": "low",
    }
    answer = client.post("/incidents", headers=AUTH, json=incident(**fields))
    assert answer.status_code == 201
    assert answer.json()["incident"]["priority"] == PRIORITY
    apply_all(queue, sqlite_sessions)
    with sqlite_sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
        step = plan_delivery(alert)
    assert isinstance(step, Create) and step.urgency == "low"
    sent: list[dict[str, Any]] = []

    def pagerduty(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json={"incident": {"id": "PNEW001", "status": "triggered"}})

    rest = PagerDutyClient(
        "https://pagerduty.test", "t", "a@example.com", transport=httpx.MockTransport(pagerduty)
    )
    rest.create_incident(
        title=step.title,
        service_id=step.service_id,
        incident_key=step.incident_key,
        urgency=step.urgency,
        details=step.details,
        forwarded=step.forwarded,
    )
    body = sent[0]["incident"]
    for name in ("priority", "assignments", "conference_bridge", "incident_type", "body"):
        assert body[name] == fields[name], name
    assert body["service"]["id"] == "PDEFAULT" and body["incident_key"] == alert.incident_key


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [
        ({"type": "banana"}, "incident.type"),
        ({"priority": {"id": "P1", "type": "banana"}}, "incident.priority.type"),
        ({"urgency": "urgent"}, "incident.urgency"),
        ({"assignments": [{"assignee": {"type": "user_reference"}}]}, "incident.assignments"),
        (
            {
                "assignments": [{"assignee": {"id": "PU1", "type": "user_reference"}}],
                "escalation_policy": {"id": "PE1", "type": "escalation_policy_reference"},
            },
            "incident",
        ),
        ({"title": ""}, "incident.title"),
    ],
)
def test_what_pagerduty_refuses_is_refused_its_way(
    client: TestClient, queue: ListQueue, fields: dict[str, Any], wrong: str
) -> None:
    answer = client.post("/incidents", headers=AUTH, json=incident(**fields))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["message"], error["code"]) == ("Invalid Input Provided", 2001)
    assert error["errors"] and error["errors"][0].startswith(wrong)
    assert queue.events == []


def test_reads_answer_from_the_mapping_in_pagerdutys_shape(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    ids = [
        client.post("/incidents", headers=AUTH, json=incident(incident_key=f"k{n}")).json()[
            "incident"
        ]["id"]
        for n in range(3)
    ]
    queued = client.get(f"/incidents/{ids[0]}", headers=AUTH).json()["incident"]
    assert (queued["id"], queued["status"], queued["bridge"]["delivery_state"]) == (
        ids[0],
        "triggered",
        "queued",
    )
    apply_all(queue, sqlite_sessions)
    with sqlite_sessions.begin() as session:
        alert = session.scalars(select(Alert).where(Alert.source_alert_id == ids[1])).one()
        alert.pagerduty_incident_id = "PT4KHLK"
        alert.confirmed_status = alert.desired_status
    ack = {"incident": {"type": "incident_reference", "status": "acknowledged"}}
    client.put(f"/incidents/{ids[1]}", headers=AUTH, json=ack)
    apply_all(queue, sqlite_sessions)
    by_pagerduty_id = client.get("/incidents/PT4KHLK", headers=AUTH).json()["incident"]
    # PagerDuty's status as last known, the bridge's progress beside it.
    assert by_pagerduty_id["id"] == ids[1] and by_pagerduty_id["status"] == "triggered"
    assert by_pagerduty_id["bridge"]["desired_status"] == "acknowledged"
    assert by_pagerduty_id["bridge"]["delivery_state"] == "pending"
    keyed = client.get("/incidents", headers=AUTH, params={"incident_key": "k2"}).json()
    assert [i["id"] for i in keyed["incidents"]] == [ids[2]]
    assert (keyed["limit"], keyed["offset"], keyed["more"]) == (25, 0, False)
    page = client.get("/incidents", headers=AUTH, params={"limit": 2, "offset": 1}).json()
    assert ([i["id"] for i in page["incidents"]], page["more"]) == (ids[1:], False)
    first = client.get("/incidents", headers=AUTH, params={"limit": 1, "total": "true"}).json()
    assert (first["more"], first["total"]) == (True, 3)
    resolved = client.get("/incidents", headers=AUTH, params={"statuses[]": "resolved"}).json()
    assert resolved["incidents"] == []
    other = client.get("/incidents", headers=AUTH, params={"service_ids[]": "POTHER"}).json()
    assert other["incidents"] == []


def test_a_token_reads_only_its_routes_incidents(client: TestClient) -> None:
    mine = client.post(
        "/incidents", headers=auth(WEB_TOKEN), json=incident(service={"id": "PWEB001"})
    )
    theirs = client.post("/incidents", headers=AUTH, json=incident())
    mine_id, theirs_id = mine.json()["incident"]["id"], theirs.json()["incident"]["id"]
    refused = client.get(f"/incidents/{theirs_id}", headers=auth(WEB_TOKEN))
    assert refused.status_code == 404 and refused.json()["error"]["code"] == 2100
    assert client.get(f"/incidents/{mine_id}", headers=auth(WEB_TOKEN)).status_code == 200
    listed = client.get("/incidents", headers=auth(WEB_TOKEN)).json()["incidents"]
    assert [i["id"] for i in listed] == [mine_id]


def test_errors_in_pagerdutys_codes_and_the_webhooks_keep_theirs(
    client: TestClient, queue: ListQueue
) -> None:
    unauthenticated = client.get("/incidents")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["code"] == 2006
    notes = client.post("/incidents/PT4KHLK/notes", headers=AUTH, json={"note": {}})
    assert notes.status_code == 404 and "not supported" in notes.json()["error"]["errors"][0]
    reopen = {"incident": {"type": "incident_reference", "status": "triggered"}}
    refused = client.put("/incidents/PT4KHLK", headers=AUTH, json=reopen)
    assert refused.status_code == 400
    assert refused.json()["error"]["errors"] == [f"incident.status: Value error, {REOPEN_REFUSED}"]
    assert client.get("/incidents", headers=AUTH, params={"limit": 101}).status_code == 400
    webhook = client.post("/webhooks/coscale", headers=AUTH, json={"action": "triggered"})
    assert webhook.status_code == 422
    assert set(webhook.json()["error"]) == {"message", "errors", "field"}
    assert queue.events == []


# -- updates with the fields PagerDuty takes --------------------------------------------------

ASSIGNED = [{"assignee": {"id": "PUSER01", "type": "user_reference"}}]
POLICY = {"id": "PEP0001", "type": "escalation_policy_reference"}


def created(client: TestClient, queue: ListQueue, sessions: sessionmaker[Session]) -> str:
    answer = client.post("/incidents", headers=AUTH, json=incident())
    apply_all(queue, sessions)
    return str(answer.json()["incident"]["id"])


def test_an_update_forwards_the_fields_pagerduty_takes(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    bridge_id = created(client, queue, sqlite_sessions)
    update = {
        "type": "incident_reference",
        "status": "acknowledged",
        "priority": PRIORITY,
        "escalation_level": 2,
        "title": "disk full on web-1",
        "urgency": "low",
        "incident_type": {"name": "major"},
        "conference_bridge": {"conference_url": "https://meet.example/x"},
    }
    answer = client.put(f"/incidents/{bridge_id}", headers=AUTH, json={"incident": update})
    assert answer.status_code == 200
    shown = answer.json()["incident"]
    assert (shown["status"], shown["priority"], shown["title"]) == (
        "acknowledged",
        PRIORITY,
        "disk full on web-1",
    )
    (event,) = queue.events
    assert event.action is not None and event.action.value == "acknowledged"
    assert event.update_fields == {
        name: value for name, value in update.items() if name not in ("type", "status")
    }


def test_an_update_with_fields_alone_moves_no_status(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    bridge_id = created(client, queue, sqlite_sessions)
    with sqlite_sessions.begin() as session:
        alert = session.scalars(select(Alert)).one()
        alert.pagerduty_incident_id = "PT4KHLK"
        alert.desired_status = alert.confirmed_status = AlertStatus.ACKNOWLEDGED
    reassign = {"incident": {"type": "incident_reference", "assignments": ASSIGNED}}
    answer = client.put(f"/incidents/{bridge_id}", headers=AUTH, json=reassign)
    assert answer.status_code == 200
    # The status last known: the update does not change it.
    assert answer.json()["incident"]["status"] == "acknowledged"
    (assignment,) = answer.json()["incident"]["assignments"]
    assert assignment["assignee"] == ASSIGNED[0]["assignee"] and assignment["at"]
    (event,) = queue.events
    assert event.action is None and event.update_fields == {"assignments": ASSIGNED}
    apply_all(queue, sqlite_sessions)
    with sqlite_sessions() as session:
        alert = session.scalars(select(Alert)).one()
        assert alert.desired_status is AlertStatus.ACKNOWLEDGED
        assert alert.update_fields == {"assignments": ASSIGNED}


def test_a_bulk_update_carries_each_items_fields(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    first = created(client, queue, sqlite_sessions)
    second = created(client, queue, sqlite_sessions)
    bulk = {
        "incidents": [
            {"id": first, "type": "incident_reference", "status": "resolved", "resolution": "ok"},
            {"id": second, "type": "incident_reference", "priority": "P1"},
        ]
    }
    answer = client.put("/incidents", headers=AUTH, json=bulk)
    assert answer.status_code == 200
    assert [i["status"] for i in answer.json()["incidents"]] == ["resolved", "triggered"]
    events = {event.alert_id: event for event in queue.events}
    assert events[first].update_fields == {"resolution": "ok"}
    assert events[first].action is not None and events[first].action.value == "resolved"
    # A priority by name, as PagerDuty takes it.
    assert (events[second].action, events[second].update_fields) == (None, {"priority": "P1"})


@pytest.mark.parametrize(
    ("update", "wrong"),
    [
        ({"status": "triggered"}, "incident.status: Value error, status triggered (reopening"),
        (
            {"status": "resolved", "service": {"id": "POTHER1", "type": "service_reference"}},
            "incident.service: Value error, moving an incident to another service",
        ),
        ({"status": "acknowledged", "resolution": "x"}, "incident: Value error, resolution"),
        ({"resolution": "x"}, "incident: Value error, resolution"),
        ({"assignments": ASSIGNED, "escalation_policy": POLICY}, "incident: Value error, assign"),
        ({"type": "banana", "status": "resolved"}, "incident.type"),
        ({"priority": {"id": "P1", "type": "banana"}}, "incident.priority"),
        ({"escalation_level": "2"}, "incident.escalation_level"),
        ({"escalation_level": 0}, "incident.escalation_level"),
        ({"escalation_level": True}, "incident.escalation_level"),
        ({"urgency": "urgent"}, "incident.urgency"),
        ({"title": ""}, "incident.title"),
        ({"assignments": [{"assignee": {"type": "user_reference"}}]}, "incident.assignments"),
        ({"assignments": ASSIGNED * 26}, "incident.assignments"),
        ({"type": "incident_reference"}, "incident: Value error, nothing to update"),
    ],
)
def test_an_update_pagerduty_would_refuse_is_refused_its_way(
    client: TestClient, queue: ListQueue, update: dict[str, Any], wrong: str
) -> None:
    answer = client.put("/incidents/PBAAAAAAAAAAAAAAAA", headers=AUTH, json={"incident": update})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["message"], error["code"]) == ("Invalid Input Provided", 2001)
    assert error["errors"][0].startswith(wrong), error["errors"]
    assert queue.events == []


def test_a_bulk_update_with_one_refused_item_is_refused_whole(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    bridge_id = created(client, queue, sqlite_sessions)
    bulk = {
        "incidents": [
            {"id": bridge_id, "type": "incident_reference", "status": "acknowledged"},
            {"id": bridge_id, "type": "incident_reference", "service": {"id": "POTHER1"}},
        ]
    }
    answer = client.put("/incidents", headers=AUTH, json=bulk)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == "incidents.1.service"
    assert "docs/security.md" in error["errors"][0]
    assert queue.events == []
