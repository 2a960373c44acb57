"""The PagerDuty simulator's Events API v2: validation, de-duplication, faults, control API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

import worker.simulator.server as simulator_module
from worker.cli import cli
from worker.simulator.control import SimulatorControl
from worker.simulator.events_api import (
    EVENTS_ROUTE,
    INVALID_ROUTING_KEY_ERROR,
    MAX_EVENT_BYTES,
    EventAction,
    EventOutcome,
    event_outcome,
)
from worker.simulator.fault_plan import ConfigurableFaults
from worker.simulator.faults import FaultSettings
from worker.simulator.rest import PAGERDUTY_ACCEPT, IncidentStatus
from worker.simulator.server import create_app
from worker.simulator.state import SimulatedPagerDuty

ROUTING_KEY = "R0UTINGKEY0000000000000000000001"
OTHER_KEY = "R0UTINGKEY0000000000000000000002"
NOW = "2025-10-01T12:00:00Z"
REST_HEADERS = {
    "Authorization": "Token token=sim-token",
    "Accept": PAGERDUTY_ACCEPT,
    "Content-Type": "application/json",
    "From": "bridge@example.com",
}


class JsonResponse(Protocol):
    """What these tests read of a TestClient response (tests do not import httpx)."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


@pytest.fixture
def simulator() -> SimulatedPagerDuty:
    frozen = datetime(2025, 10, 1, 12, 0, 0, tzinfo=UTC)
    return SimulatedPagerDuty(clock=lambda: frozen, seed=7)


@pytest.fixture
def client(simulator: SimulatedPagerDuty) -> Iterator[TestClient]:
    with TestClient(create_app(simulator)) as test_client:
        yield test_client


def trigger_body(
    dedup_key: str | None = "alert-1", routing_key: str = ROUTING_KEY, **payload: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "payload": {
            "summary": "Disk 90% full",
            "source": "db-1.example.com",
            "severity": "critical",
            **payload,
        },
    }
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    return body


def send(client: TestClient, body: object) -> JsonResponse:
    response: JsonResponse = client.post(EVENTS_ROUTE, json=body)
    return response


def trigger(
    client: TestClient, dedup_key: str | None = "alert-1", routing_key: str = ROUTING_KEY
) -> JsonResponse:
    return send(client, trigger_body(dedup_key, routing_key))


def follow_up(
    client: TestClient, action: str, dedup_key: str = "alert-1", routing_key: str = ROUTING_KEY
) -> JsonResponse:
    return send(
        client, {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
    )


def alerts(simulator: SimulatedPagerDuty) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = simulator.state()["events"]["alerts"]
    return found


def event_counts(simulator: SimulatedPagerDuty) -> dict[str, Any]:
    counts: dict[str, Any] = simulator.counts()["events"]
    return counts


def accepted(dedup_key: str) -> dict[str, str]:
    return {"status": "success", "message": "Event processed", "dedup_key": dedup_key}


# ---- the alert lifecycle ----------------------------------------------------------------------


def test_trigger_answers_202_and_opens_an_alert(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # When a trigger comes with a dedup_key, links and custom details
    body = trigger_body(component="disk", custom_details={"used": "90%"})
    body["links"] = [{"href": "https://coscale.example.com/a/1", "text": "CoScale"}]
    response = send(client, body)

    # Then PagerDuty's 202 body, and an alert recording what the event said
    assert response.status_code == 202
    assert response.json() == accepted("alert-1")
    [alert] = alerts(simulator)
    assert alert == {
        "alert_number": 1,
        "routing_key": ROUTING_KEY,
        "dedup_key": "alert-1",
        "status": "triggered",
        "summary": "Disk 90% full",
        "source": "db-1.example.com",
        "severity": "critical",
        "timestamp": None,
        "component": "disk",
        "group": None,
        "class": None,
        "custom_details": {"used": "90%"},
        "links": [{"href": "https://coscale.example.com/a/1", "text": "CoScale"}],
        "images": [],
        "client": None,
        "client_url": None,
        "triggers_joined": 0,
        "created_at": NOW,
        "created_at_ms": 1759320000000.0,  # NOW to the millisecond, for benchmarks
        "acknowledged_at": None,
        "resolved_at": None,
        "resolved_at_ms": None,
        "status_history": [{"at": NOW, "from": None, "to": "triggered", "reopened": False}],
    }
    # And no incident: the Events API's alerts live apart
    assert simulator.state()["incidents"] == []


def test_trigger_acknowledge_resolve(client: TestClient, simulator: SimulatedPagerDuty) -> None:
    trigger(client)

    acked = follow_up(client, "acknowledge")
    assert acked.status_code == 202
    assert acked.json() == accepted("alert-1")
    assert alerts(simulator)[0]["status"] == "acknowledged"

    resolved = follow_up(client, "resolve")
    assert resolved.status_code == 202

    [alert] = alerts(simulator)
    assert alert["status"] == "resolved"
    assert (alert["acknowledged_at"], alert["resolved_at"]) == (NOW, NOW)
    assert alert["resolved_at_ms"] == 1759320000000.0  # to the millisecond, for benchmarks
    assert [(change["from"], change["to"]) for change in alert["status_history"]] == [
        (None, "triggered"),
        ("triggered", "acknowledged"),
        ("acknowledged", "resolved"),
    ]
    counts = event_counts(simulator)
    assert counts["received"] == {"trigger": 1, "acknowledge": 1, "resolve": 1}
    assert counts["dropped"] == {"acknowledge": 0, "resolve": 0}


def test_resolve_without_acknowledge(client: TestClient, simulator: SimulatedPagerDuty) -> None:
    trigger(client)
    assert follow_up(client, "resolve").status_code == 202
    [alert] = alerts(simulator)
    assert (alert["status"], alert["acknowledged_at"]) == ("resolved", None)


@pytest.mark.parametrize("acknowledge_first", [False, True])
def test_a_trigger_for_an_open_alert_joins_it(
    client: TestClient, simulator: SimulatedPagerDuty, acknowledge_first: bool
) -> None:
    # Given an open alert, triggered or acknowledged
    trigger(client)
    if acknowledge_first:
        follow_up(client, "acknowledge")

    # When two more triggers come with its key (the second with another summary)
    assert trigger(client).json() == accepted("alert-1")
    other = send(client, trigger_body(summary="Disk 95% full"))
    assert other.status_code == 202

    # Then no alert is opened: the open one counts the joins and keeps its status and summary
    [alert] = alerts(simulator)
    assert alert["triggers_joined"] == 2
    assert alert["status"] == ("acknowledged" if acknowledge_first else "triggered")
    assert alert["summary"] == "Disk 90% full"
    counts = event_counts(simulator)
    assert (counts["alerts_opened"], counts["triggers_joined"]) == (1, 2)


def test_acknowledging_an_acknowledged_alert_changes_nothing(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    trigger(client)
    follow_up(client, "acknowledge")

    assert follow_up(client, "acknowledge").status_code == 202

    [alert] = alerts(simulator)
    assert len(alert["status_history"]) == 2
    assert event_counts(simulator)["dropped"] == {"acknowledge": 0, "resolve": 0}


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_acknowledge_or_resolve_of_an_unknown_key_is_dropped(
    client: TestClient, simulator: SimulatedPagerDuty, action: str
) -> None:
    response = follow_up(client, action, "never-triggered")

    # Still 202, as PagerDuty answers, but nothing happened and the drop is counted
    assert response.status_code == 202
    assert response.json() == accepted("never-triggered")
    assert alerts(simulator) == []
    counts = event_counts(simulator)
    assert counts["dropped"] == {"acknowledge": 0, "resolve": 0} | {action: 1}
    assert counts["received"][action] == 1


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_acknowledge_or_resolve_of_a_resolved_alert_is_dropped(
    client: TestClient, simulator: SimulatedPagerDuty, action: str
) -> None:
    trigger(client)
    follow_up(client, "resolve")

    assert follow_up(client, action).status_code == 202

    [alert] = alerts(simulator)
    assert alert["status"] == "resolved"  # an acknowledge does not reopen it
    assert event_counts(simulator)["dropped"][action] == 1


def test_a_trigger_after_resolve_opens_a_new_alert(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    trigger(client)
    follow_up(client, "resolve")

    assert trigger(client).json() == accepted("alert-1")

    # The old alert stays as history; the new one is open and its own
    old, new = alerts(simulator)
    assert (old["alert_number"], old["status"]) == (1, "resolved")
    assert (new["alert_number"], new["status"], new["triggers_joined"]) == (2, "triggered", 0)
    # And a resolve now closes the new one
    follow_up(client, "resolve")
    assert [alert["status"] for alert in alerts(simulator)] == ["resolved", "resolved"]


def test_alerts_are_keyed_by_routing_key_and_dedup_key(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # Given the same dedup_key triggered through two routing keys
    trigger(client, "alert-1", ROUTING_KEY)
    trigger(client, "alert-1", OTHER_KEY)

    # When one of them is resolved
    follow_up(client, "resolve", "alert-1", OTHER_KEY)

    # Then two alerts, only the second resolved
    assert [(a["routing_key"], a["status"]) for a in alerts(simulator)] == [
        (ROUTING_KEY, "triggered"),
        (OTHER_KEY, "resolved"),
    ]


def test_a_trigger_without_dedup_key_gets_a_generated_one(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    first = trigger(client, dedup_key=None)
    second = send(client, trigger_body(dedup_key=""))  # empty counts as none

    # Each gets its own UUID hex, returned to the client, and its own alert
    keys = [first.json()["dedup_key"], second.json()["dedup_key"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)
    assert keys[0] != keys[1]
    assert [alert["dedup_key"] for alert in alerts(simulator)] == keys
    # And the returned key is what a resolve names
    follow_up(client, "resolve", keys[0])
    assert alerts(simulator)[0]["status"] == "resolved"


def test_generated_dedup_keys_repeat_with_the_same_seed() -> None:
    def keys() -> list[str]:
        with TestClient(create_app(SimulatedPagerDuty(seed=3))) as c:
            return [trigger(c, dedup_key=None).json()["dedup_key"] for _ in range(3)]

    assert keys() == keys()


@pytest.mark.parametrize(
    ("action", "open_status", "outcome"),
    [
        ("trigger", None, "open"),
        ("trigger", "triggered", "join"),
        ("trigger", "acknowledged", "join"),
        ("acknowledge", "triggered", "acknowledge"),
        ("acknowledge", "acknowledged", "unchanged"),
        ("acknowledge", None, "drop"),
        ("resolve", "triggered", "resolve"),
        ("resolve", "acknowledged", "resolve"),
        ("resolve", None, "drop"),
    ],
)
def test_event_outcome(
    action: EventAction, open_status: IncidentStatus | None, outcome: EventOutcome
) -> None:
    assert event_outcome(action, open_status) == outcome


# ---- validation -------------------------------------------------------------------------------


def without(mapping: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key != name}


def with_payload(**changes: Any) -> dict[str, Any]:
    body = trigger_body()
    body["payload"] = {
        key: value for key, value in {**body["payload"], **changes}.items() if value is not None
    }
    return body


ACK = {"routing_key": ROUTING_KEY, "event_action": "acknowledge", "dedup_key": "alert-1"}
RESOLVE = {**ACK, "event_action": "resolve"}

INVALID_EVENTS: list[tuple[str, object, str]] = [
    ("not an object", ["trigger"], "must be a JSON object"),
    ("routing_key missing", without(trigger_body(), "routing_key"), "'routing_key' is required"),
    ("routing_key not a string", {**trigger_body(), "routing_key": 7}, "'routing_key'"),
    ("routing_key empty", trigger_body(routing_key=""), "'routing_key' is required"),
    ("event_action missing", without(trigger_body(), "event_action"), "'event_action' must be"),
    ("event_action unknown", {**trigger_body(), "event_action": "snooze"}, "'event_action'"),
    ("dedup_key not a string", {**trigger_body(), "dedup_key": 12}, "'dedup_key' must be a str"),
    ("dedup_key too long", trigger_body("k" * 256), "'dedup_key' must be at most 255"),
    ("acknowledge without dedup_key", without(ACK, "dedup_key"), "'dedup_key' is required"),
    ("resolve without dedup_key", without(RESOLVE, "dedup_key"), "'dedup_key' is required"),
    ("resolve with empty dedup_key", {**RESOLVE, "dedup_key": ""}, "'dedup_key' is required"),
    ("trigger without payload", without(trigger_body(), "payload"), "'payload' is required"),
    ("payload not an object", {**trigger_body(), "payload": "disk"}, "'payload' is required"),
    ("summary missing", with_payload(summary=None), "'payload.summary' is required"),
    ("summary empty", with_payload(summary=""), "'payload.summary' is required"),
    ("summary blank", with_payload(summary="  "), "'payload.summary' is required"),
    ("summary too long", with_payload(summary="s" * 1025), "'payload.summary' must be at most"),
    ("source missing", with_payload(source=None), "'payload.source' is required"),
    ("source empty", with_payload(source=""), "'payload.source' is required"),
    ("severity missing", with_payload(severity=None), "'payload.severity' must be one of"),
    ("severity unknown", with_payload(severity="high"), "'payload.severity' must be one of"),
    ("timestamp not ISO", with_payload(timestamp="yesterday"), "'payload.timestamp'"),
    ("timestamp not a string", with_payload(timestamp=1700000000), "'payload.timestamp'"),
    ("component not a string", with_payload(component=1), "'payload.component' must be"),
    ("group not a string", with_payload(group=[]), "'payload.group' must be"),
    ("class not a string", with_payload(**{"class": {}}), "'payload.class' must be"),
    ("links not a list", {**trigger_body(), "links": "x"}, "'links' must be a list"),
    ("link not an object", {**trigger_body(), "links": ["x"]}, "'links[0]' must be an object"),
    ("link without href", {**trigger_body(), "links": [{"text": "t"}]}, "'links[0].href'"),
    ("link text not a str", {**trigger_body(), "links": [{"href": "h", "text": 1}]}, ".text'"),
    ("image without src", {**trigger_body(), "images": [{"alt": "a"}]}, "'images[0].src'"),
    ("client not a string", {**trigger_body(), "client": 5}, "'client' must be a string"),
    ("client_url not a str", {**trigger_body(), "client_url": 5}, "'client_url' must be"),
]


@pytest.mark.parametrize(
    ("body", "error"),
    [pytest.param(body, error, id=name) for name, body, error in INVALID_EVENTS],
)
def test_invalid_event_is_400_naming_the_problem(
    client: TestClient, simulator: SimulatedPagerDuty, body: object, error: str
) -> None:
    response = send(client, body)

    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] == "invalid event"
    assert answer["message"] == "Event object is invalid"
    assert any(error in problem for problem in answer["errors"]), answer["errors"]
    # And nothing was taken
    assert alerts(simulator) == []
    assert event_counts(simulator)["received"] == {"trigger": 0, "acknowledge": 0, "resolve": 0}


def test_every_problem_is_listed(client: TestClient) -> None:
    body = {"routing_key": "", "event_action": "trigger", "payload": {"severity": "bad"}}

    errors = send(client, body).json()["errors"]

    assert len(errors) == 4  # routing_key, summary, source, severity


def test_malformed_json_is_400(client: TestClient) -> None:
    response: JsonResponse = client.post(
        EVENTS_ROUTE, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["status"] == "invalid event"
    assert "Malformed JSON" in response.json()["errors"][0]


def test_a_body_over_512_kb_is_400(client: TestClient, simulator: SimulatedPagerDuty) -> None:
    # Just over the limit, with the padding in custom_details: valid but for its size
    body = trigger_body(custom_details={"pad": ""})
    overhead = len(json.dumps(body).encode())
    body["payload"]["custom_details"]["pad"] = "x" * (MAX_EVENT_BYTES - overhead + 1)
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_EVENT_BYTES + 1

    response: JsonResponse = client.post(
        EVENTS_ROUTE, content=raw, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert "512 KB" in response.json()["errors"][0]
    assert alerts(simulator) == []
    # And exactly 512 KB is accepted
    body["payload"]["custom_details"]["pad"] = "x" * (MAX_EVENT_BYTES - overhead)
    raw = json.dumps(body).encode()
    assert client.post(EVENTS_ROUTE, content=raw).status_code == 202


def test_limits_are_inclusive_and_optional_fields_pass(client: TestClient) -> None:
    body = trigger_body(
        "k" * 255,
        summary="s" * 1024,
        timestamp="2015-07-17T08:42:58.315+0000",
        component="postgres",
        group="prod-datapipe",
        custom_details="free text",
        **{"class": "deploy"},
    )
    body["images"] = [{"src": "https://example.com/i.png", "href": "https://e.com", "alt": "a"}]
    body["client"] = "CoScale"
    body["client_url"] = "https://coscale.example.com"

    assert send(client, body).status_code == 202


def test_acknowledge_and_resolve_ignore_the_payload(client: TestClient) -> None:
    trigger(client)
    assert send(client, {**ACK, "payload": "anything"}).status_code == 202
    assert send(client, {**RESOLVE, "links": "anything"}).status_code == 202


def test_no_authorization_is_needed_even_with_a_token_configured() -> None:
    with TestClient(create_app(token="sim-token")) as c:
        assert trigger(c).status_code == 202


# ---- routing keys -----------------------------------------------------------------------------


def test_only_the_accepted_routing_keys_pass_when_a_set_is_given(
    simulator: SimulatedPagerDuty,
) -> None:
    with TestClient(create_app(simulator, routing_keys=[ROUTING_KEY])) as c:
        refused = trigger(c, routing_key=OTHER_KEY)
        assert refused.status_code == 400
        assert refused.json()["errors"] == [INVALID_ROUTING_KEY_ERROR]
        assert follow_up(c, "resolve", routing_key=OTHER_KEY).status_code == 400

        assert trigger(c, routing_key=ROUTING_KEY).status_code == 202
    assert [alert["routing_key"] for alert in alerts(simulator)] == [ROUTING_KEY]


def test_any_routing_key_passes_by_default(client: TestClient) -> None:
    assert trigger(client, routing_key="whatever").status_code == 202


def test_simulate_command_passes_routing_keys_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}
    monkeypatch.setattr(simulator_module, "serve", lambda **kwargs: served.update(kwargs))

    result = CliRunner().invoke(
        cli, ["simulate", "--routing-key", ROUTING_KEY, "--routing-key", OTHER_KEY]
    )

    assert result.exit_code == 0, result.output
    assert served["routing_keys"] == (ROUTING_KEY, OTHER_KEY)


# ---- faults -----------------------------------------------------------------------------------


class FakeMonotonic:
    """A clock for the rate-limit buckets that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeClient = Callable[..., TestClient]


@pytest.fixture
def faulty(simulator: SimulatedPagerDuty) -> Iterator[MakeClient]:
    """``faulty(plan)`` or ``faulty(**settings)`` → a client of an app with those faults."""
    with ExitStack() as stack:

        def make(plan: ConfigurableFaults | None = None, **settings: Any) -> TestClient:
            app = create_app(
                simulator, fault_plan=plan or ConfigurableFaults(FaultSettings(**settings))
            )
            client: TestClient = stack.enter_context(TestClient(app))
            return client

        yield make


def fault_counts(simulator: SimulatedPagerDuty) -> dict[str, int]:
    faults: dict[str, int] = simulator.counts()["faults"]
    return faults


def test_rate_limit_is_per_routing_key_and_a_429_event_is_not_taken(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given 60 events a minute with a bucket of 2
    clock = FakeMonotonic()
    settings = FaultSettings(rate_limit_per_minute=60, rate_limit_burst=2)
    client = faulty(ConfigurableFaults(settings, monotonic=clock))
    assert trigger(client, "a").status_code == 202
    assert trigger(client, "b").status_code == 202

    # When a third event comes at once through the same routing key
    limited = trigger(client, "c")
    dropped_resolve = follow_up(client, "resolve", "a")

    # Then 429 with the ratelimit headers, and neither event was taken
    assert (limited.status_code, dropped_resolve.status_code) == (429, 429)
    assert limited.headers["ratelimit-remaining"] == "0"
    assert [(a["dedup_key"], a["status"]) for a in alerts(simulator)] == [
        ("a", "triggered"),
        ("b", "triggered"),
    ]
    assert event_counts(simulator)["received"] == {"trigger": 2, "acknowledge": 0, "resolve": 0}
    assert fault_counts(simulator)["rate_limited"] == 2
    # And another routing key has a bucket of its own
    assert trigger(client, "c", OTHER_KEY).status_code == 202
    # And a REST token spelled like the routing key too: the two APIs are limited apart
    rest = client.get(
        "/incidents/Q1", headers={**REST_HEADERS, "Authorization": f"Token token={ROUTING_KEY}"}
    )
    assert rest.status_code == 404
    # And after a second, a token is back
    clock.now += 1
    assert trigger(client, "c").status_code == 202
    assert len(alerts(simulator)) == 4


def test_events_limit_of_their_own_beside_the_rest_limit(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    # Given PagerDuty's figures: 960 REST calls a minute per API key, 120 events per routing key
    clock = FakeMonotonic()
    settings = FaultSettings(rate_limit_per_minute=960, events_rate_limit_per_minute=120)
    client = faulty(ConfigurableFaults(settings, monotonic=clock))

    # When 21 events come at once through one routing key
    answers = [trigger(client, f"a{n}").status_code for n in range(21)]

    # Then the events bucket holds a sixth of 120 (20), and its 429 names the events' limit
    assert answers == [202] * 20 + [429]
    assert trigger(client, "again").headers["ratelimit-limit"] == "120"
    # And a REST call is counted against the REST key's 960, untouched by the events
    rest = client.get("/incidents/Q1", headers=REST_HEADERS)
    assert rest.headers["ratelimit-limit"] == "960"
    assert rest.headers["ratelimit-remaining"] == "159"
    # And half a second later one event token is back (two a second)
    clock.now += 0.5
    assert trigger(client, "later").status_code == 202
    assert len(alerts(simulator)) == 21


def test_lost_answer_still_applies_the_event(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(lost=1.0)

    response = trigger(client)

    # The client sees 502, but the alert was opened
    assert response.status_code == 502
    [alert] = alerts(simulator)
    assert alert["dedup_key"] == "alert-1"
    assert fault_counts(simulator)["lost"] == 1
    # And a retried trigger joins it rather than opening another
    trigger(client)
    [alert] = alerts(simulator)
    assert alert["triggers_joined"] == 1
    # And a refused event (400) is not "lost": only successes are
    assert send(client, {"event_action": "trigger"}).status_code == 400
    assert fault_counts(simulator)["lost"] == 2


@pytest.mark.parametrize("settings", [{"down": True}, {"flaky": 1.0, "seed": 1}])
def test_outage_answers_5xx_and_takes_nothing(
    faulty: MakeClient, simulator: SimulatedPagerDuty, settings: dict[str, Any]
) -> None:
    client = faulty(**settings)

    response = trigger(client)

    assert response.status_code in (500, 502, 503)
    assert alerts(simulator) == []
    assert event_counts(simulator)["received"]["trigger"] == 0


def test_a_fault_answers_before_an_invalid_body_is_refused(faulty: MakeClient) -> None:
    client = faulty(down=True)
    response: JsonResponse = client.post(EVENTS_ROUTE, content=b"{not json")
    assert response.status_code == 503


def test_unauthorized_tokens_do_not_apply_to_events(
    faulty: MakeClient, simulator: SimulatedPagerDuty
) -> None:
    client = faulty(unauthorized_tokens=["revoked"])
    response: JsonResponse = client.post(
        EVENTS_ROUTE, json=trigger_body(), headers={"Authorization": "Token token=revoked"}
    )
    assert response.status_code == 202
    assert fault_counts(simulator)["unauthorized"] == 0


# ---- control API ------------------------------------------------------------------------------


def test_events_calls_are_counted_under_their_route(client: TestClient) -> None:
    trigger(client)
    send(client, {})

    calls = client.get("/_simulator/state").json()["counts"]["calls"]

    assert calls == [
        {"method": "POST", "route": EVENTS_ROUTE, "status": 202, "count": 1},
        {"method": "POST", "route": EVENTS_ROUTE, "status": 400, "count": 1},
    ]


def test_counts_endpoint_has_every_counter_and_no_listing(
    client: TestClient, simulator: SimulatedPagerDuty
) -> None:
    # Given a REST incident, and alerts: one resolved, one acknowledged and joined, one dropped
    incident = {
        "type": "incident",
        "title": "Disk",
        "service": {"id": "PSVC001", "type": "service_reference"},
    }
    assert (
        client.post("/incidents", json={"incident": incident}, headers=REST_HEADERS).status_code
        == 201
    )
    trigger(client, "a")
    follow_up(client, "resolve", "a")
    trigger(client, "b")
    trigger(client, "b")
    follow_up(client, "acknowledge", "b")
    follow_up(client, "resolve", "gone")

    counts = client.get("/_simulator/counts").json()

    # Then the state's counts plus the events' counts, and no incident or alert listed
    state = client.get("/_simulator/state").json()
    assert counts == {**state["counts"], "events": state["events"]["counts"]}
    assert counts["incidents_by_status"] == {"triggered": 1, "acknowledged": 0, "resolved": 0}
    assert counts["incidents_total"] == 1
    assert counts["events"] == {
        "received": {"trigger": 3, "acknowledge": 1, "resolve": 2},
        "alerts_opened": 2,
        "triggers_joined": 1,
        "dropped": {"acknowledge": 0, "resolve": 1},
        "alerts_by_status": {"triggered": 0, "acknowledged": 1, "resolved": 1},
    }
    assert set(counts["faults"]) == {
        "down",
        "flaky",
        "lost",
        "rate_limited",
        "unauthorized",
        "hung",
    }
    assert "incidents" not in counts and "alerts" not in counts["events"]
    # And the calls made before this read are there (the state read is one more)
    assert sum(call["count"] for call in counts["calls"]) == 7


def test_reset_forgets_the_events_side(client: TestClient, simulator: SimulatedPagerDuty) -> None:
    trigger(client)
    follow_up(client, "resolve", "gone")

    assert client.post("/_simulator/reset").status_code == 204

    assert simulator.state()["events"] == {
        "counts": {
            "received": {"trigger": 0, "acknowledge": 0, "resolve": 0},
            "alerts_opened": 0,
            "triggers_joined": 0,
            "dropped": {"acknowledge": 0, "resolve": 0},
            "alerts_by_status": {"triggered": 0, "acknowledged": 0, "resolved": 0},
        },
        "alerts": [],
    }
    # And numbering starts again; the key that was open is free
    trigger(client)
    assert [(a["alert_number"], a["triggers_joined"]) for a in alerts(simulator)] == [(1, 0)]


def test_control_client_reads_counts(client: TestClient) -> None:
    control = SimulatorControl("http://testserver", client=client)
    trigger(client)

    counts = control.counts()

    assert counts["events"]["alerts_opened"] == 1
    assert control.state()["events"]["alerts"][0]["dedup_key"] == "alert-1"
    control.reset()
    assert control.counts()["events"]["alerts_opened"] == 0
