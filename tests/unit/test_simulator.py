"""The PagerDuty simulator: PagerDuty's rules over HTTP, its header checks and its control API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from starlette.testclient import TestClient

from worker.pagerduty.simulator import (
    DUPLICATE_INCIDENT_KEY_ERROR,
    MAX_BULK_UPDATE,
    PAGERDUTY_ACCEPT,
    IncidentStatus,
    SimulatedError,
    SimulatedPagerDuty,
    SimulatorControl,
    create_app,
    next_status,
)

TOKEN = "sim-token"
SERVICE = "PSVC001"
HEADERS = {
    "Authorization": f"Token token={TOKEN}",
    "Accept": PAGERDUTY_ACCEPT,
    "Content-Type": "application/json",
    "From": "bridge@example.com",
}


class JsonResponse(Protocol):
    """What these tests read of a TestClient response (tests do not import httpx)."""

    status_code: int

    def json(self) -> Any: ...


@pytest.fixture
def simulator() -> SimulatedPagerDuty:
    frozen = datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC)
    return SimulatedPagerDuty(clock=lambda: frozen, seed=7)


@pytest.fixture
def client(simulator: SimulatedPagerDuty) -> Iterator[TestClient]:
    with TestClient(create_app(simulator, token=TOKEN), headers=HEADERS) as test_client:
        yield test_client


def create(
    client: TestClient, key: str | None = "alert-1", *, service: str = SERVICE, title: str = "Disk"
) -> JsonResponse:
    incident: dict[str, Any] = {
        "type": "incident",
        "title": title,
        "service": {"id": service, "type": "service_reference"},
        "urgency": "high",
        "body": {"type": "incident_body", "details": "90% full"},
    }
    if key is not None:
        incident["incident_key"] = key
    response: JsonResponse = client.post("/incidents", json={"incident": incident})
    return response


def set_status(client: TestClient, incident_id: str, status: str) -> JsonResponse:
    body = {"incident": {"type": "incident_reference", "status": status}}
    response: JsonResponse = client.put(f"/incidents/{incident_id}", json=body)
    return response


def error_of(response: JsonResponse) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def ids_of(response: JsonResponse) -> list[str]:
    return [incident["id"] for incident in response.json()["incidents"]]


# ---- create -----------------------------------------------------------------------------------


def test_create_answers_201_with_a_pagerduty_shaped_incident(client: TestClient) -> None:
    # When an incident is created
    response = create(client, "alert-1")

    # Then PagerDuty's fields are there, with a Q-id and the simulated html_url
    assert response.status_code == 201
    incident = response.json()["incident"]
    assert incident["id"].startswith("Q") and len(incident["id"]) == 7
    assert incident["id"][1:].isalnum() and incident["id"][1:] == incident["id"][1:].upper()
    assert incident["incident_number"] == 1
    assert incident["status"] == "triggered"
    assert incident["incident_key"] == "alert-1"
    assert incident["service"] == {
        "id": SERVICE,
        "type": "service_reference",
        "summary": SERVICE,
        "self": f"https://api.simulated.pagerduty.local/services/{SERVICE}",
        "html_url": f"https://simulated.pagerduty.local/service-directory/{SERVICE}",
    }
    assert incident["html_url"] == f"https://simulated.pagerduty.local/incidents/{incident['id']}"
    assert incident["created_at"] == "2025-10-01T12:00:00Z"
    # And incident numbers are sequential
    assert create(client, "alert-2").json()["incident"]["incident_number"] == 2


def test_duplicate_key_is_refused_while_open_and_allowed_after_resolve(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # Given an open incident with key K
    first = create(client, "K").json()["incident"]

    # When the same key is created again on the same service
    refused = create(client, "K")

    # Then PagerDuty's duplicate-key 400 comes back and the refusal is counted
    assert refused.status_code == 400
    assert error_of(refused)["errors"] == [DUPLICATE_INCIDENT_KEY_ERROR]
    assert error_of(refused)["code"] == 2001
    assert simulator.state()["counts"]["duplicate_creates_refused"] == 1

    # And still refused once acknowledged (acknowledged is open)
    assert set_status(client, first["id"], "acknowledged").status_code == 200
    assert create(client, "K").status_code == 400

    # When the incident is resolved, a create with the key opens a new incident
    assert set_status(client, first["id"], "resolved").status_code == 200
    second = create(client, "K")
    assert second.status_code == 201
    assert second.json()["incident"]["id"] != first["id"]
    assert simulator.state()["counts"]["creates"] == 2


def test_same_key_on_another_service_or_no_key_is_not_a_duplicate(client: TestClient) -> None:
    assert create(client, "K", service="PSVC001").status_code == 201
    assert create(client, "K", service="PSVC002").status_code == 201
    assert create(client, None).status_code == 201
    assert create(client, None).status_code == 201


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"title": ""}, "incident.title is required"),
        ({"title": "x" * 1025}, "incident.title must be at most 1024 characters"),
        ({"service": None}, "incident.service.id is required"),
        ({"service": {"type": "service_reference"}}, "incident.service.id is required"),
        ({"type": "alert"}, "incident.type must be 'incident'"),
        ({"urgency": "medium"}, "incident.urgency must be 'high' or 'low'"),
    ],
)
def test_invalid_create_is_400_2001(
    client: TestClient, change: dict[str, Any], problem: str
) -> None:
    incident: dict[str, Any] = {
        "type": "incident",
        "title": "Disk",
        "service": {"id": SERVICE, "type": "service_reference"},
    }
    incident.update(change)
    response = client.post("/incidents", json={"incident": incident})
    assert response.status_code == 400
    assert error_of(response)["code"] == 2001
    assert problem in error_of(response)["errors"]


def test_title_of_exactly_1024_characters_is_accepted(client: TestClient) -> None:
    assert create(client, title="x" * 1024).status_code == 201


# ---- status updates ---------------------------------------------------------------------------


def test_bulk_update_changes_every_listed_incident(client: TestClient) -> None:
    # Given three triggered incidents
    ids = [create(client, f"k{n}").json()["incident"]["id"] for n in range(3)]

    # When two are acknowledged and one resolved in one request
    response = client.put(
        "/incidents",
        json={
            "incidents": [
                {"id": ids[0], "type": "incident_reference", "status": "acknowledged"},
                {"id": ids[1], "type": "incident_reference", "status": "acknowledged"},
                {"id": ids[2], "type": "incident_reference", "status": "resolved"},
            ]
        },
    )

    # Then all three are updated, in request order
    assert response.status_code == 200
    assert [(i["id"], i["status"]) for i in response.json()["incidents"]] == [
        (ids[0], "acknowledged"),
        (ids[1], "acknowledged"),
        (ids[2], "resolved"),
    ]


def test_bulk_update_of_more_than_250_is_413(client: TestClient) -> None:
    incident_id = create(client).json()["incident"]["id"]
    item = {"id": incident_id, "type": "incident_reference", "status": "resolved"}
    response = client.put("/incidents", json={"incidents": [item] * (MAX_BULK_UPDATE + 1)})
    assert response.status_code == 413
    assert "error" in response.json()


def test_bulk_update_with_an_unknown_id_is_404_and_changes_nothing(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # Given one triggered incident
    incident_id = create(client).json()["incident"]["id"]

    # When a bulk update lists it together with an unknown id
    response = client.put(
        "/incidents",
        json={
            "incidents": [
                {"id": incident_id, "type": "incident_reference", "status": "resolved"},
                {"id": "QNOPE00", "type": "incident_reference", "status": "resolved"},
            ]
        },
    )

    # Then 404 / 2100, and the known incident was not resolved either
    assert response.status_code == 404
    assert error_of(response)["code"] == 2100
    assert simulator.get_incident(incident_id)["status"] == "triggered"


def test_bulk_update_requires_from(client: TestClient) -> None:
    incident_id = create(client).json()["incident"]["id"]
    headers = {**HEADERS, "From": ""}
    body = {"incidents": [{"id": incident_id, "type": "incident_reference", "status": "resolved"}]}
    response = client.put("/incidents", json=body, headers=headers)
    assert response.status_code == 400


def test_acknowledging_a_resolved_incident_reopens_it(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # Given a resolved incident
    incident_id = create(client, "K").json()["incident"]["id"]
    set_status(client, incident_id, "resolved")

    # When it is acknowledged (PagerDuty changelog 2025-09-18)
    response = set_status(client, incident_id, "acknowledged")

    # Then it is open again, the reopening is counted and recorded in its history
    assert response.status_code == 200
    assert response.json()["incident"]["status"] == "acknowledged"
    state = simulator.state()
    assert state["counts"]["reopened"] == 1
    history = state["incidents"][0]["status_history"]
    assert [(c["from"], c["to"], c["reopened"]) for c in history] == [
        (None, "triggered", False),
        ("triggered", "resolved", False),
        ("resolved", "acknowledged", True),
    ]
    # And, being open, it blocks a create with its key again
    assert create(client, "K").status_code == 400


def test_resolving_a_resolved_incident_is_1001_and_acking_an_acked_one_is_1002(
    client: TestClient,
) -> None:
    incident_id = create(client).json()["incident"]["id"]
    set_status(client, incident_id, "acknowledged")

    again = set_status(client, incident_id, "acknowledged")
    assert again.status_code == 400
    assert error_of(again)["code"] == 1002
    assert error_of(again)["message"] == "Incident Already Acknowledged"

    set_status(client, incident_id, "resolved")
    again = set_status(client, incident_id, "resolved")
    assert again.status_code == 400
    assert error_of(again)["code"] == 1001
    assert error_of(again)["message"] == "Incident Already Resolved"


def test_invalid_status_value_is_400(client: TestClient) -> None:
    incident_id = create(client).json()["incident"]["id"]
    for status in ("triggered", "closed"):
        response = set_status(client, incident_id, status)
        assert response.status_code == 400
        assert error_of(response)["code"] == 2001


def test_single_update_and_get_of_an_unknown_incident_are_404(client: TestClient) -> None:
    assert set_status(client, "QNOPE00", "resolved").status_code == 404
    response = client.get("/incidents/QNOPE00")
    assert response.status_code == 404
    assert error_of(response)["code"] == 2100


def test_get_incident_by_id(client: TestClient) -> None:
    created = create(client).json()["incident"]
    response = client.get(f"/incidents/{created['id']}")
    assert response.status_code == 200
    assert response.json()["incident"] == created


@pytest.mark.parametrize(
    ("current", "wanted", "expected"),
    [
        ("triggered", "acknowledged", ("acknowledged", False)),
        ("triggered", "resolved", ("resolved", False)),
        ("acknowledged", "resolved", ("resolved", False)),
        ("resolved", "acknowledged", ("acknowledged", True)),
    ],
)
def test_next_status_allowed_transitions(
    current: IncidentStatus, wanted: str, expected: tuple[str, bool]
) -> None:
    assert next_status(current, wanted) == expected


@pytest.mark.parametrize(
    ("current", "wanted", "code"),
    [
        ("acknowledged", "acknowledged", 1002),
        ("resolved", "resolved", 1001),
        ("triggered", "triggered", 2001),
        ("resolved", "snoozed", 2001),
    ],
)
def test_next_status_refusals(current: IncidentStatus, wanted: str, code: int) -> None:
    with pytest.raises(SimulatedError) as refused:
        next_status(current, wanted)
    assert (refused.value.status, refused.value.code) == (400, code)


# ---- look-up ----------------------------------------------------------------------------------


def test_lookup_by_key_lists_open_only_unless_date_range_all(client: TestClient) -> None:
    # Given a resolved and an open incident with key K, and one with another key
    old = create(client, "K").json()["incident"]["id"]
    set_status(client, old, "resolved")
    new = create(client, "K").json()["incident"]["id"]
    create(client, "other")

    # When looked up by key alone, only the open one is listed
    default = client.get("/incidents", params={"incident_key": "K"})
    assert default.status_code == 200
    assert ids_of(default) == [new]
    assert default.json()["more"] is False
    assert default.json()["limit"] == 25 and default.json()["offset"] == 0

    # With date_range=all, both
    everything = client.get("/incidents", params={"incident_key": "K", "date_range": "all"})
    assert ids_of(everything) == [old, new]

    # With statuses[], exactly those statuses
    resolved = client.get(
        "/incidents",
        params=[("incident_key", "K"), ("date_range", "all"), ("statuses[]", "resolved")],
    )
    assert ids_of(resolved) == [old]
    open_only = client.get(
        "/incidents",
        params=[
            ("incident_key", "K"),
            ("statuses[]", "triggered"),
            ("statuses[]", "acknowledged"),
        ],
    )
    assert ids_of(open_only) == [new]


def test_listing_without_a_key_lists_everything_and_is_counted(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    create(client, "a")
    create(client, "b")
    response = client.get("/incidents", params={"incident_key": ""})
    assert len(ids_of(response)) == 2
    assert simulator.state()["counts"]["listings_without_incident_key"] == 1


def test_listing_pages_with_limit_and_offset(client: TestClient) -> None:
    ids = [create(client, None).json()["incident"]["id"] for _ in range(5)]
    first = client.get("/incidents", params={"limit": 2, "total": "true"})
    assert ids_of(first) == ids[:2]
    assert first.json()["more"] is True and first.json()["total"] == 5
    last = client.get("/incidents", params={"limit": 2, "offset": 4})
    assert ids_of(last) == ids[4:]
    assert last.json()["more"] is False and last.json()["total"] is None
    assert client.get("/incidents", params={"limit": "many"}).status_code == 400
    assert client.get("/incidents", params={"limit": 1000}).json()["limit"] == 100


# ---- headers ----------------------------------------------------------------------------------


def test_missing_from_header_is_400(simulator: SimulatedPagerDuty) -> None:
    # Given a client with no default From header
    headers = {key: value for key, value in HEADERS.items() if key != "From"}
    with TestClient(create_app(simulator, token=TOKEN), headers=headers) as no_from:
        # When an incident is created
        response = create(no_from)

    # Then 400 in PagerDuty's envelope, and nothing was created
    assert response.status_code == 400
    assert error_of(response)["code"] == 2001
    assert "From" in error_of(response)["errors"][0]
    assert simulator.state()["counts"]["creates"] == 0


@pytest.mark.parametrize(
    "authorization", ["Token token=wrong", "Token token=", "Bearer sim-token", None]
)
def test_bad_or_missing_token_is_401_2006(
    simulator: SimulatedPagerDuty, authorization: str | None
) -> None:
    headers = {key: value for key, value in HEADERS.items() if key != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with TestClient(create_app(simulator, token=TOKEN), headers=headers) as bad_auth:
        response = bad_auth.get("/incidents", params={"incident_key": "K"})
    assert response.status_code == 401
    assert error_of(response)["code"] == 2006


def test_any_non_empty_token_is_accepted_when_none_is_configured() -> None:
    headers = {**HEADERS, "Authorization": "Token token=anything"}
    with TestClient(create_app(), headers=headers) as any_token:
        assert create(any_token).status_code == 201


@pytest.mark.parametrize("accept", ["application/json", "application/vnd.pagerduty+json"])
def test_wrong_accept_is_400(client: TestClient, accept: str) -> None:
    response = client.get("/incidents", params={"incident_key": "K"}, headers={"Accept": accept})
    assert response.status_code == 400
    assert PAGERDUTY_ACCEPT in error_of(response)["errors"][0]


def test_accept_tolerates_whitespace(client: TestClient) -> None:
    accept = "application/vnd.pagerduty+json; version=2"
    response = client.get("/incidents", params={"incident_key": "K"}, headers={"Accept": accept})
    assert response.status_code == 200


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/incidents", content=b'{"incident": ')
    assert response.status_code == 400
    assert error_of(response)["code"] == 2001


def test_unknown_route_answers_in_pagerduty_envelope_and_is_counted(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    assert client.get("/services").status_code == 404
    assert client.delete("/incidents").status_code == 405
    assert simulator.call_count(route="<unmatched>") == 2


# ---- control API ------------------------------------------------------------------------------


def test_state_endpoint_reports_counts_and_incidents(client: TestClient) -> None:
    # Given one create, one refused duplicate and one acknowledgement
    incident_id = create(client, "K").json()["incident"]["id"]
    create(client, "K")
    set_status(client, incident_id, "acknowledged")

    # When the state is read
    state = client.get("/_simulator/state").json()

    # Then the counters and the incident are there
    counts = state["counts"]
    assert counts["creates"] == 1
    assert counts["duplicate_creates_refused"] == 1
    assert counts["reopened"] == 0
    assert counts["incidents_by_status"] == {"triggered": 0, "acknowledged": 1, "resolved": 0}
    assert counts["calls"] == [
        {"method": "POST", "route": "/incidents", "status": 201, "count": 1},
        {"method": "POST", "route": "/incidents", "status": 400, "count": 1},
        {"method": "PUT", "route": "/incidents/{id}", "status": 200, "count": 1},
    ]
    [incident] = state["incidents"]
    assert incident["id"] == incident_id
    assert incident["incident_key"] == "K"
    assert incident["status"] == "acknowledged"
    assert incident["service_id"] == SERVICE
    assert incident["title"] == "Disk"
    assert incident["details"] == "90% full"
    assert len(incident["status_history"]) == 2


def test_reset_endpoint_clears_everything(client: TestClient) -> None:
    create(client, "K")
    assert client.post("/_simulator/reset").status_code == 204
    state = client.get("/_simulator/state").json()
    assert state["incidents"] == []
    assert state["counts"]["creates"] == 0
    assert state["counts"]["calls"] == []
    # And numbering starts again
    assert create(client, "K").json()["incident"]["incident_number"] == 1


def test_control_client_reads_state_and_resets(client: TestClient) -> None:
    control = SimulatorControl("http://testserver", client=client)
    control.wait_until_ready(timeout_s=1)
    create(client, "K")
    assert control.state()["counts"]["creates"] == 1
    control.reset()
    assert control.state()["incidents"] == []
