"""The PagerDuty simulator: PagerDuty's rules over HTTP, its header checks and its control API."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient
from starlette.types import Message
from typer.testing import CliRunner

import worker.simulator.server as simulator_module
from worker.cli import cli
from worker.simulator.control import SimulatorControl, SimulatorControlError
from worker.simulator.fault_plan import ConfigurableFaults, FaultPlan, PagerDutyCall
from worker.simulator.faults import FaultSettings, FaultSettingsError
from worker.simulator.rest import (
    DUPLICATE_INCIDENT_KEY_ERROR,
    MAX_BULK_UPDATE,
    PAGERDUTY_ACCEPT,
    IncidentStatus,
    SimulatedError,
    next_status,
)
from worker.simulator.server import create_app
from worker.simulator.state import CALL_RATE_WINDOW_S, SimulatedPagerDuty

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

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

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
    client: TestClient,
    key: str | None = "alert-1",
    *,
    service: str = SERVICE,
    title: str = "Disk",
    headers: dict[str, str] | None = None,
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
    response: JsonResponse = client.post("/incidents", json={"incident": incident}, headers=headers)
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
    assert incident["resolved_at_ms"] is None  # open


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


# ---- faults -----------------------------------------------------------------------------------

FROZEN_SECOND = int(datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC).timestamp())


class FakeMonotonic:
    """A clock for the rate-limit buckets that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeClient = Callable[..., TestClient]


@pytest.fixture
def faulty(simulator: SimulatedPagerDuty) -> Iterator[MakeClient]:
    """A factory: ``faulty(**settings)`` or ``faulty(plan=...)`` → a client of an app that
    accepts any token and starts with those faults."""
    with ExitStack() as stack:

        def make(plan: FaultPlan | None = None, **settings: Any) -> TestClient:
            app = create_app(
                simulator, fault_plan=plan or ConfigurableFaults(FaultSettings(**settings))
            )
            client: TestClient = stack.enter_context(TestClient(app, headers=HEADERS))
            return client

        yield make


def with_token(token: str) -> dict[str, str]:
    return {"Authorization": f"Token token={token}"}


def fault_counts(simulator: SimulatedPagerDuty) -> dict[str, int]:
    faults: dict[str, int] = simulator.state()["counts"]["faults"]
    return faults


def test_down_answers_503_and_creates_nothing(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given PagerDuty is down
    client = faulty(down=True)

    # When an incident is created and one is looked up
    created = create(client)
    looked_up = client.get("/incidents", params={"incident_key": "alert-1"})

    # Then both are 503 in PagerDuty's envelope, code 2000, and nothing exists
    assert (created.status_code, looked_up.status_code) == (503, 503)
    assert error_of(created)["code"] == 2000
    assert simulator.state()["counts"]["creates"] == 0
    assert fault_counts(simulator)["down"] == 2


def test_flaky_1_answers_5xx_and_creates_nothing(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(flaky=1.0, seed=1)

    statuses = [create(client, f"k{n}").status_code for n in range(12)]

    assert set(statuses) <= {500, 502, 503}
    assert len(set(statuses)) > 1  # the status is chosen at random among the three
    assert error_of(create(client))["code"] == 2000
    assert simulator.state()["counts"]["creates"] == 0
    assert fault_counts(simulator)["flaky"] == 13


def test_flaky_choices_repeat_with_the_same_seed() -> None:
    def statuses() -> list[int]:
        with TestClient(create_app(faults=FaultSettings(flaky=0.5, seed=42)), headers=HEADERS) as c:
            return [
                c.get("/incidents", params={"incident_key": "K"}).status_code for _ in range(30)
            ]

    first = statuses()
    assert first == statuses()
    assert 200 in first and set(first) - {200}  # some calls pass, some fail


def test_lost_1_answers_502_but_the_incident_exists(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given every successful response is lost
    client = faulty(lost=1.0)

    # When an incident is created
    response = create(client, "K")

    # Then the client sees 502, but PagerDuty created it
    assert response.status_code == 502
    assert error_of(response)["code"] == 2000
    [incident] = simulator.state()["incidents"]
    assert incident["incident_key"] == "K"
    assert fault_counts(simulator)["lost"] == 1
    # And a retry with the same key meets the duplicate-key 400, which is not lost (not a 2xx)
    retry = create(client, "K")
    assert retry.status_code == 400
    assert error_of(retry)["errors"] == [DUPLICATE_INCIDENT_KEY_ERROR]
    assert client.get("/incidents/QNOPE00").status_code == 404
    assert fault_counts(simulator)["lost"] == 1


def test_latency_delays_every_call(faulty: MakeClient) -> None:
    client = faulty(latency_ms=150)

    started = time.monotonic()
    response = create(client)
    elapsed = time.monotonic() - started

    assert response.status_code == 201
    assert 0.15 <= elapsed < 5


def test_hang_answers_504_after_hang_seconds_and_creates_nothing(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(hang=True, hang_seconds=0.2)

    started = time.monotonic()
    response = create(client)
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert error_of(response)["code"] == 2016
    assert 0.2 <= elapsed < 5
    assert simulator.state()["counts"]["creates"] == 0
    assert fault_counts(simulator)["hung"] == 1


def test_a_hung_call_blocks_neither_other_calls_nor_the_control_api(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given a call hanging (for 2 s at most) in another thread
    client = faulty(hang=True, hang_seconds=2.0)
    statuses: list[int] = []
    hung = threading.Thread(target=lambda: statuses.append(create(client, "hung").status_code))
    hung.start()
    deadline = time.monotonic() + 2
    while fault_counts(simulator)["hung"] == 0:
        assert time.monotonic() < deadline, "the call never started hanging"
        time.sleep(0.01)

    # When the hang is turned off through the control API
    assert client.post("/_simulator/faults", json={"hang": False}).status_code == 200

    # Then the next call is answered while the first still hangs
    assert create(client, "next").status_code == 201
    assert hung.is_alive()
    hung.join(timeout=5)
    assert statuses == [504]


def test_hang_ends_when_the_client_disconnects(simulator: SimulatedPagerDuty) -> None:
    # Given a request whose client hangs up 0.1 s after sending it
    messages: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.1)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/incidents", "headers": []}
    call = PagerDutyCall("POST", "/incidents", "t", Request(scope, receive), simulator)
    plan = ConfigurableFaults(FaultSettings(hang=True))  # hang_seconds: 300

    # When the plan hangs the call
    started = time.monotonic()
    response = asyncio.run(asyncio.wait_for(plan.before(call), timeout=5))

    # Then it stops as the client leaves, answering 499 (counted, never read)
    assert response is not None and response.status_code == 499
    assert time.monotonic() - started < 5


def test_rate_limit_429_with_ratelimit_headers(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given 60 calls a minute: a bucket of 10, one token back per second
    clock = FakeMonotonic()
    client = faulty(ConfigurableFaults(FaultSettings(rate_limit_per_minute=60), monotonic=clock))
    for n in range(10):
        assert create(client, f"k{n}").status_code == 201

    # When the 11th call comes at once
    limited = create(client, "k10")

    # Then 429 with PagerDuty's body and exactly the ratelimit-* headers
    assert limited.status_code == 429
    assert limited.json() == {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
    assert dict(limited.headers) == {
        "content-length": str(len(limited.content)),
        "content-type": "application/json",
        "ratelimit-limit": "60",
        "ratelimit-remaining": "0",
        "ratelimit-reset": "1",
    }
    assert simulator.state()["counts"]["creates"] == 10
    # And another token has a bucket of its own
    assert create(client, "other", headers=with_token("other")).status_code == 201
    # And after half a second the reset still says 1 (rounded up); after a second, a token
    clock.now += 0.5
    assert create(client, "k10").headers["ratelimit-reset"] == "1"
    clock.now += 0.5
    assert create(client, "k10").status_code == 201
    assert fault_counts(simulator)["rate_limited"] == 2


def test_every_rest_answer_carries_the_ratelimit_headers(faulty: MakeClient) -> None:
    # Given 60 calls a minute: a bucket of 10, one token back per second
    clock = FakeMonotonic()
    client = faulty(ConfigurableFaults(FaultSettings(rate_limit_per_minute=60), monotonic=clock))
    answers = [create(client, f"k{n}") for n in range(3)]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["9", "8", "7"]
    assert {a.headers["ratelimit-limit"] for a in answers} == {"60"}
    assert answers[-1].headers["ratelimit-reset"] == "3"  # three tokens to refill, one a second
    clock.now += 1.5  # 8.5 tokens, one taken by this call: 7 left, 2.5 s from full
    listed = client.get("/incidents")
    assert listed.status_code == 200
    assert (listed.headers["ratelimit-remaining"], listed.headers["ratelimit-reset"]) == ("7", "3")


def test_rate_limit_with_retry_after(faulty: MakeClient) -> None:
    clock = FakeMonotonic()
    settings = FaultSettings(
        rate_limit_per_minute=6, rate_limit_burst=1, rate_limit_retry_after=True
    )
    client = faulty(ConfigurableFaults(settings, monotonic=clock))
    assert create(client, "a").status_code == 201

    limited = create(client, "b")

    # One token per 10 s: both headers say 10
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"
    assert limited.headers["ratelimit-reset"] == "10"
    assert {"ratelimit-limit", "ratelimit-remaining"} <= set(limited.headers)

    # With Retry-After alone, the ratelimit-* headers go, the body stays
    client.post("/_simulator/faults", json={"rate_limit_headers": False})
    alone = create(client, "b")
    assert set(alone.headers) == {"content-length", "content-type", "retry-after"}
    assert alone.json()["error"]["code"] == 2020


def test_rate_limit_without_headers_has_no_headers_and_an_empty_body(faulty: MakeClient) -> None:
    client = faulty(rate_limit_per_minute=60, rate_limit_burst=1, rate_limit_headers=False)
    assert create(client, "a").status_code == 201

    limited = create(client, "b")

    # docs/pagerduty.md: a 429 may come with no headers and no body (only the framing remains)
    assert limited.status_code == 429
    assert limited.content == b""
    assert dict(limited.headers) == {"content-length": "0"}


@pytest.mark.parametrize(
    ("per_minute", "burst", "capacity"), [(60, None, 10), (61, None, 11), (1, None, 1), (60, 3, 3)]
)
def test_bucket_holds_ten_seconds_worth_unless_a_burst_is_given(
    per_minute: int, burst: int | None, capacity: int
) -> None:
    settings = FaultSettings(rate_limit_per_minute=per_minute, rate_limit_burst=burst)
    assert settings.rate_limit_capacity == capacity


def test_unauthorized_token_is_401_while_another_token_works(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(unauthorized_tokens=["revoked"])

    refused = create(client, headers=with_token("revoked"))

    assert refused.status_code == 401
    assert error_of(refused)["code"] == 2006
    assert create(client).status_code == 201  # the default token, sim-token
    assert simulator.state()["counts"]["creates"] == 1
    assert fault_counts(simulator)["unauthorized"] == 1


def test_fault_checks_run_unauthorized_then_down_then_rate_limit(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given everything at once, with a bucket of one call
    client = faulty(
        unauthorized_tokens=["revoked"], down=True, rate_limit_per_minute=60, rate_limit_burst=1
    )

    # Then a revoked token gets 401 before the 503, and the 503s take no token
    assert client.get("/incidents/Q1", headers=with_token("revoked")).status_code == 401
    assert client.get("/incidents/Q1").status_code == 503
    assert client.get("/incidents/Q1").status_code == 503
    client.post("/_simulator/faults", json={"down": False})
    assert client.get("/incidents/Q1").status_code == 404  # the one token was still there
    assert client.get("/incidents/Q1").status_code == 429
    assert fault_counts(simulator) == {
        "down": 2,
        "flaky": 0,
        "lost": 0,
        "rate_limited": 1,
        "unauthorized": 1,
        "hung": 0,
    }


# ---- faults: control API ----------------------------------------------------------------------


def test_faults_endpoint_shows_merges_and_clears(client: TestClient) -> None:
    # Given no faults
    defaults = client.get("/_simulator/faults").json()
    assert defaults == FaultSettings().to_json()
    assert defaults["down"] is False and defaults["rate_limit_headers"] is True
    assert defaults["hang_seconds"] == 300.0 and defaults["unauthorized_tokens"] == []

    # When two posts each set some fields
    client.post("/_simulator/faults", json={"flaky": 0.25, "unauthorized_tokens": ["x"]})
    merged = client.post("/_simulator/faults", json={"latency_ms": 5, "flaky": 0.5})

    # Then the second merges into the first
    assert merged.status_code == 200
    assert merged.json() == {
        **defaults,
        "flaky": 0.5,
        "latency_ms": 5,
        "unauthorized_tokens": ["x"],
    }
    assert client.get("/_simulator/faults").json() == merged.json()

    # And clear turns everything off
    cleared = client.post("/_simulator/faults/clear")
    assert cleared.status_code == 200
    assert cleared.json() == defaults
    assert client.get("/_simulator/faults").json() == defaults


@pytest.mark.parametrize(
    ("bad", "field_name"),
    [
        ({"explode": True}, "explode"),
        ({"flaky": 1.5}, "flaky"),
        ({"lost": -0.1}, "lost"),
        ({"down": "yes"}, "down"),
        ({"down": 1}, "down"),
        ({"latency_ms": True}, "latency_ms"),
        ({"latency_ms": 1.5}, "latency_ms"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"hang_seconds": 0}, "hang_seconds"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"rate_limit_burst": "10"}, "rate_limit_burst"),
        ({"unauthorized_tokens": "abc"}, "unauthorized_tokens"),
        ({"unauthorized_tokens": [""]}, "unauthorized_tokens"),
        ({"seed": 1.0}, "seed"),
    ],
)
def test_faults_endpoint_refuses_a_bad_field_and_changes_nothing(
    client: TestClient, bad: dict[str, Any], field_name: str
) -> None:
    response = client.post("/_simulator/faults", json={"down": True, **bad})

    assert response.status_code == 400
    assert response.json()["field"] == field_name
    assert field_name in response.json()["error"]
    assert client.get("/_simulator/faults").json()["down"] is False  # all or nothing


@pytest.mark.parametrize("body", [b"[1, 2]", b"{", b""])
def test_faults_endpoint_refuses_a_body_that_is_not_an_object(
    client: TestClient, body: bytes
) -> None:
    response = client.post("/_simulator/faults", content=body)
    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]


def test_fault_settings_are_checked_when_built_in_python() -> None:
    with pytest.raises(FaultSettingsError) as refused:
        FaultSettings(flaky=2.0)
    assert refused.value.field_name == "flaky"
    assert FaultSettings(flaky=1).flaky == 1.0
    assert FaultSettings(rate_limit_per_minute=60).changed() == {"rate_limit_per_minute": 60}


def test_fault_endpoints_answer_409_for_a_plan_they_cannot_configure(
    simulator: SimulatedPagerDuty,
) -> None:
    with TestClient(create_app(simulator, fault_plan=FaultPlan())) as plain:
        assert plain.get("/_simulator/faults").status_code == 409
        assert plain.post("/_simulator/faults", json={"down": True}).status_code == 409
        assert plain.post("/_simulator/faults/clear").status_code == 409
    with pytest.raises(ValueError, match="not both"):
        create_app(fault_plan=FaultPlan(), faults=FaultSettings())


def test_reset_clears_fault_counters_but_keeps_fault_settings(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(down=True)
    create(client)

    assert client.post("/_simulator/reset").status_code == 204

    counts = simulator.state()["counts"]
    assert counts["faults"]["down"] == 0
    assert counts["calls_per_second"] == []
    assert client.get("/_simulator/faults").json()["down"] is True
    assert create(client).status_code == 503


def test_control_client_sets_reads_and_clears_faults(client: TestClient) -> None:
    control = SimulatorControl("http://testserver", client=client)

    settings = control.set_faults(down=True, unauthorized_tokens=["x"])

    assert settings["down"] is True and settings["unauthorized_tokens"] == ["x"]
    assert control.faults() == settings
    assert create(client).status_code == 503
    with pytest.raises(SimulatorControlError, match="flaky"):
        control.set_faults(flaky=7)
    control.clear_faults()
    assert control.faults() == FaultSettings().to_json()
    assert create(client).status_code == 201


# ---- faults: call rate ------------------------------------------------------------------------


class SteppingClock:
    """A wall clock for the simulator that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_calls_per_second_counts_every_call_over_the_last_ten_minutes() -> None:
    # Given a simulator on a clock the test moves
    clock = SteppingClock()
    simulator = SimulatedPagerDuty(clock=clock)
    with TestClient(create_app(simulator), headers=HEADERS) as client:
        # When 3 calls succeed in one second, and 2 fail the next while PagerDuty is down
        for n in range(3):
            create(client, f"k{n}")
        clock.now += timedelta(seconds=1)
        client.post("/_simulator/faults", json={"down": True})
        create(client, "k3")
        client.get("/incidents", params={"incident_key": "k3"})

        # Then both seconds are counted, faulted calls included, control calls not
        state = client.get("/_simulator/state").json()
        assert state["counts"]["calls_per_second"] == [
            {"second": FROZEN_SECOND, "count": 3},
            {"second": FROZEN_SECOND + 1, "count": 2},
        ]

    # And a second leaves the window 10 minutes later
    clock.now += timedelta(seconds=CALL_RATE_WINDOW_S - 1)
    assert simulator.state()["counts"]["calls_per_second"] == [
        {"second": FROZEN_SECOND + 1, "count": 2}
    ]
    clock.now += timedelta(seconds=1)
    assert simulator.state()["counts"]["calls_per_second"] == []


def test_calls_per_second_keeps_one_entry_per_second_of_the_window_at_most() -> None:
    clock = SteppingClock()
    simulator = SimulatedPagerDuty(clock=clock)
    for _ in range(CALL_RATE_WINDOW_S + 100):
        simulator.record_call("GET", "/incidents", 200)
        simulator.record_call("GET", "/incidents", 200)
        clock.now += timedelta(seconds=1)
    clock.now -= timedelta(seconds=1)

    per_second = simulator.state()["counts"]["calls_per_second"]

    assert len(per_second) == CALL_RATE_WINDOW_S
    assert {entry["count"] for entry in per_second} == {2}
    assert per_second[-1]["second"] == int(clock.now.timestamp())


# ---- faults: command line ---------------------------------------------------------------------


def test_simulate_command_passes_fault_options_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(simulator_module, "serve", lambda **kwargs: served.update(kwargs))

    result = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--port",
            "9000",
            "--down",
            "--flaky",
            "0.1",
            "--lost",
            "0.2",
            "--latency-ms",
            "30",
            "--rate-limit",
            "60",
            "--no-rate-limit-headers",
            "--retry-after",
            "--unauthorized-token",
            "a",
            "--unauthorized-token",
            "b",
            "--seed",
            "5",
        ],
    )

    assert result.exit_code == 0, result.output
    assert served["port"] == 9000 and served["token"] is None
    assert served["faults"] == FaultSettings(
        down=True,
        flaky=0.1,
        lost=0.2,
        latency_ms=30,
        rate_limit_per_minute=60,
        rate_limit_headers=False,
        rate_limit_retry_after=True,
        unauthorized_tokens=("a", "b"),
        seed=5,
    )


def test_simulate_command_without_fault_options_serves_no_faults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(simulator_module, "serve", lambda **kwargs: served.update(kwargs))

    result = CliRunner().invoke(cli, ["simulate", "--token", "T"])

    assert result.exit_code == 0, result.output
    assert served == {"host": "127.0.0.1", "port": 8089, "token": "T", "faults": FaultSettings()}


def test_simulate_command_refuses_a_bad_fault_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulator_module, "serve", lambda **kwargs: None)
    result = CliRunner().invoke(cli, ["simulate", "--flaky", "1.5"])
    assert result.exit_code == 2


def test_the_most_calls_answered_at_once_is_counted(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    import threading

    client = faulty(latency_ms=300)
    create(client, "alone")
    assert simulator.state()["counts"]["most_in_flight"] == 1
    # Three at once, each waiting out the latency while the others come in
    threads = [threading.Thread(target=create, args=(client, f"k{n}")) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert simulator.state()["counts"]["creates"] == 4
    assert simulator.state()["counts"]["most_in_flight"] == 3
    simulator.reset()
    assert simulator.state()["counts"]["most_in_flight"] == 0


# ---- updates carrying fields ------------------------------------------------------------------

PRIORITY = {"id": "PPRIO01", "type": "priority_reference"}
ASSIGNED = [{"assignee": {"id": "PUSER01", "type": "user_reference"}}]


def test_an_update_sets_the_fields_it_carries_with_or_without_a_status(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    incident_id = create(client).json()["incident"]["id"]

    fields_only = {"type": "incident_reference", "priority": PRIORITY, "escalation_level": 2}
    answer = client.put(f"/incidents/{incident_id}", json={"incident": fields_only})
    assert answer.status_code == 200
    assert answer.json()["incident"]["status"] == "triggered"
    assert answer.json()["incident"]["priority"] == PRIORITY

    bulk = {
        "incidents": [
            {
                "id": incident_id,
                "type": "incident_reference",
                "status": "acknowledged",
                "assignments": ASSIGNED,
                "title": "Disk on web-1",
                "urgency": "low",
            }
        ]
    }
    shown = client.put("/incidents", json=bulk).json()["incidents"][0]
    assert (shown["status"], shown["assignments"], shown["title"], shown["urgency"]) == (
        "acknowledged",
        ASSIGNED,
        "Disk on web-1",
        "low",
    )
    (state,) = simulator.state()["incidents"]
    assert state["fields"] == {"priority": PRIORITY, "escalation_level": 2, "assignments": ASSIGNED}
    # Fields alone changed no status: the history has the trigger and the acknowledge only.
    assert [change["to"] for change in state["status_history"]] == ["triggered", "acknowledged"]


def test_an_update_refused_applies_none_of_its_fields(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    incident_id = create(client).json()["incident"]["id"]
    set_status(client, incident_id, "acknowledged")

    again = {"type": "incident_reference", "status": "acknowledged", "priority": PRIORITY}
    refused = client.put(f"/incidents/{incident_id}", json={"incident": again})
    assert refused.status_code == 400 and error_of(refused)["code"] == 1002
    assert simulator.state()["incidents"][0]["fields"] == {}

    empty = client.put(f"/incidents/{incident_id}", json={"incident": {"type": "incident"}})
    assert empty.status_code == 400 and "nothing to update" in error_of(empty)["errors"][0]
