"""Least privilege on the PagerDuty-shaped API: a token reaches its own route's incidents only,
updates to incidents the bridge did not create are off by default and bounded when on, guessing
tokens is slowed down, and small inputs cannot stall or crash the api."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.fakes import ListQueue
from worker.ingress.access import (
    Caller,
    SlidingWindow,
    is_bridge_id,
    mint_bridge_id,
    plan_updates,
)
from worker.ingress.app import create_app
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import apply_event
from worker.pipeline.message import DEFAULT_ROUTE
from worker.routes_file import parse_routes
from worker.settings import Settings

DEFAULT_TOKEN = "default-route-token-0123456789abcdef"
WEB_TOKEN = "web-team-route-token-0123456789abcde"
DB_TOKEN = "db-team-route-token-0123456789abcdef"
ROUTES = parse_routes(
    {
        "route": [
            {
                "name": "web-team",
                "tokens": [WEB_TOKEN],
                "backend": "rest",
                "rest": {
                    "api_token": "web-team-rest-api-token",
                    "from_email": "oncall@example.com",
                    "service_id": "PWEB001",
                },
            },
            {
                "name": "db-team",
                "tokens": [DB_TOKEN],
                "backend": "events",
                "events": {"routing_key": "R" * 32},
            },
        ]
    }
)
UPDATE = {"incident": {"type": "incident_reference", "status": "resolved"}}
AppFactory = Callable[..., TestClient]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def queue() -> ListQueue:
    return ListQueue()


@pytest.fixture
def make_client(queue: ListQueue, sqlite_sessions: sessionmaker[Session]) -> Iterator[AppFactory]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            ingress_tokens=DEFAULT_TOKEN,  # type: ignore[arg-type]
            pagerduty_service_id="PDEFAULT",
            **overrides,
        )
        app = create_app(
            settings,
            queue=DurableEventQueue(queue, sqlite_sessions),
            sessions=sqlite_sessions,
            redis_ping=lambda: None,
            routes=ROUTES,
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def create(client: TestClient, token: str, service_id: str) -> str:
    answer = client.post(
        "/incidents",
        headers=auth(token),
        json={"incident": {"type": "incident", "title": "t", "service": {"id": service_id}}},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["incident"]["id"])


# -- the policy, pure ----------------------------------------------------------------------------

WEB = Caller(frozenset({"web-team"}), frozenset({"web-team"}), key="w")
DB = Caller(frozenset({"db-team"}), frozenset(), key="d")


def test_bridge_ids_are_matched_by_their_whole_shape() -> None:
    assert is_bridge_id(mint_bridge_id())
    # A PagerDuty id may start with "PB": it is not the bridge's.
    assert not is_bridge_id("PBXYZ12")
    assert not is_bridge_id("PBFAKE000001")
    assert not is_bridge_id(mint_bridge_id() + "A")


def test_a_route_reaches_only_its_own_bridge_ids() -> None:
    mine, theirs, unknown = mint_bridge_id(), mint_bridge_id(), mint_bridge_id()
    known = {mine: "web-team", theirs: DEFAULT_ROUTE}
    plan = plan_updates(
        [mine, theirs, unknown], WEB, known, forward_foreign=False, foreign_allowance=10
    )
    assert plan.bridge == {mine: "web-team"}
    assert [(r.incident_id, r.status) for r in plan.refused] == [(theirs, 404), (unknown, 404)]


def test_foreign_ids_are_off_by_default_and_rest_only_when_on() -> None:
    off = plan_updates(["PT4KHLK"], WEB, {}, forward_foreign=False, foreign_allowance=10)
    assert off.refused[0].status == 404 and "FORWARD_FOREIGN" in off.refused[0].reason
    events_only = plan_updates(["PT4KHLK"], DB, {}, forward_foreign=True, foreign_allowance=10)
    assert events_only.refused[0].status == 403
    rest = plan_updates(["PT4KHLK"], WEB, {}, forward_foreign=True, foreign_allowance=10)
    assert rest.foreign == {"PT4KHLK": "web-team"} and not rest.refused


def test_foreign_ids_past_the_allowance_are_refused() -> None:
    ids = [f"PFOREIGN{i}" for i in range(5)]
    plan = plan_updates(ids, WEB, {}, forward_foreign=True, foreign_allowance=3)
    assert len(plan.foreign) == 3
    assert [r.status for r in plan.refused] == [429, 429]


def test_the_sliding_window_forgets_after_its_window() -> None:
    now = [100.0]
    window = SlidingWindow(60.0, clock=lambda: now[0])
    window.add("a", 3)
    assert window.count("a") == 3 and window.retry_after("a") == 60.0
    now[0] += 60.5
    assert window.count("a") == 0


# -- through the api -----------------------------------------------------------------------------


def test_a_route_token_cannot_touch_another_routes_incident(
    make_client: AppFactory, queue: ListQueue
) -> None:
    client = make_client()
    web_incident = create(client, WEB_TOKEN, "PWEB001")
    default_incident = create(client, DEFAULT_TOKEN, "PDEFAULT")
    published = len(queue.events)
    # The db-team token on web-team's incident, the web-team token on the default route's
    refused = [
        client.put(f"/incidents/{web_incident}", headers=auth(DB_TOKEN), json=UPDATE),
        client.put(f"/incidents/{default_incident}", headers=auth(WEB_TOKEN), json=UPDATE),
    ]
    assert [answer.status_code for answer in refused] == [404, 404]
    assert len(queue.events) == published  # nothing accepted
    # Each on its own
    assert (
        client.put(f"/incidents/{web_incident}", headers=auth(WEB_TOKEN), json=UPDATE).status_code
        == 200
    )
    assert queue.events[-1].route == "web-team" and queue.events[-1].incident_id is None


def test_an_update_found_only_in_the_inbox_or_only_in_the_alerts_table(
    make_client: AppFactory, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = make_client()
    incident = create(client, WEB_TOKEN, "PWEB001")
    # The worker applies it: it leaves the inbox for the alerts table
    apply_event(sqlite_sessions, queue.events[-1], queue.events[-1].received_at)
    answer = client.put(f"/incidents/{incident}", headers=auth(WEB_TOKEN), json=UPDATE)
    assert answer.status_code == 200


def test_unknown_bridge_ids_are_refused_at_once_and_cost_nothing(
    make_client: AppFactory, queue: ListQueue
) -> None:
    client = make_client()
    items = [
        {"id": mint_bridge_id(), "type": "incident_reference", "status": "resolved"}
        for _ in range(250)
    ]
    answer = client.put("/incidents", headers=auth(DEFAULT_TOKEN), json={"incidents": items})
    # Invalid input in a bulk update (PagerDuty's OpenAPI documents no 404 for updateIncidents);
    # 404 for the incident of PUT /incidents/{id}.
    assert answer.status_code == 400
    body = answer.json()["error"]
    assert body["code"] == 2001
    assert len(body["errors"]) == 250
    assert all(error.endswith(": no such incident") for error in body["errors"])
    single = client.put(f"/incidents/{items[0]['id']}", headers=auth(DEFAULT_TOKEN), json=UPDATE)
    assert single.status_code == 404
    assert "1 of 1 incident(s) refused, nothing updated" in single.json()["error"]["message"]
    assert queue.events == []


def test_foreign_updates_when_switched_on(make_client: AppFactory, queue: ListQueue) -> None:
    client = make_client(forward_foreign_updates=True, foreign_updates_per_request=2)
    # An Events-only route's token may not
    answer = client.put("/incidents/QKASI8A", headers=auth(DB_TOKEN), json=UPDATE)
    assert answer.status_code == 403
    # A REST route's may: the event carries the incident and the route, for the worker to check
    assert client.put("/incidents/QKASI8A", headers=auth(WEB_TOKEN), json=UPDATE).status_code == 200
    (event,) = queue.events
    assert event.incident_id == "QKASI8A" and event.route == "web-team"
    # Past the per-request bound: refused whole, saying why
    items = [{"id": f"QFOREIG{i}", "status": "resolved"} for i in range(3)]
    answer = client.put("/incidents", headers=auth(WEB_TOKEN), json={"incidents": items})
    assert answer.status_code == 429
    assert "PAGERBRIDGE_FOREIGN_UPDATES_PER_MINUTE" in answer.json()["error"]["errors"][0]
    assert len(queue.events) == 1


def test_foreign_updates_per_minute_per_token(make_client: AppFactory, queue: ListQueue) -> None:
    client = make_client(forward_foreign_updates=True, foreign_updates_per_minute=2)
    answers = [
        client.put(f"/incidents/QFOREIG{i}", headers=auth(WEB_TOKEN), json=UPDATE).status_code
        for i in range(3)
    ]
    assert answers == [200, 200, 429]
    # Another token has its own budget
    assert (
        client.put("/incidents/QOTHER1", headers=auth(DEFAULT_TOKEN), json=UPDATE).status_code
        == 200
    )


def test_repeated_failed_authentication_is_slowed_down(make_client: AppFactory) -> None:
    client = make_client(auth_failures_per_minute=3)
    wrong = [
        client.post("/webhooks/coscale", headers=auth("x" * 40), json={}).status_code
        for _ in range(4)
    ]
    assert wrong == [401, 401, 401, 429]
    # Even the right token waits until the window passes: guessing gains nothing meanwhile
    answer = client.post(
        "/webhooks/coscale",
        headers=auth(DEFAULT_TOKEN),
        json={"alert_id": "1", "action": "triggered"},
    )
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1


def test_the_default_routes_services_may_be_restricted(make_client: AppFactory) -> None:
    client = make_client(allowed_service_ids="PALLOWED,POTHER1")
    assert create(client, DEFAULT_TOKEN, "PALLOWED")
    assert create(client, DEFAULT_TOKEN, "PDEFAULT")  # the configured one is always allowed
    answer = client.post(
        "/incidents",
        headers=auth(DEFAULT_TOKEN),
        json={"incident": {"type": "incident", "title": "t", "service": {"id": "PSOMEONE"}}},
    )
    assert answer.status_code == 403
    assert "PAGERBRIDGE_ALLOWED_SERVICE_IDS" in answer.json()["error"]["message"]


def test_a_token_reads_its_own_routes_alerts_only(
    make_client: AppFactory, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    client = make_client()
    answer = client.post(
        "/webhooks/coscale/web-team",
        headers=auth(WEB_TOKEN),
        json={"alert_id": "7", "action": "triggered"},
    )
    assert answer.status_code == 202
    apply_event(sqlite_sessions, queue.events[-1], queue.events[-1].received_at)
    assert client.get("/alerts/7", headers=auth(WEB_TOKEN)).status_code == 200
    assert client.get("/alerts/7", headers=auth(DB_TOKEN)).status_code == 404


def test_a_4301_digit_integer_is_400(make_client: AppFactory, queue: ListQueue) -> None:
    client = make_client()
    body = b'{"alert_id": "1", "action": "triggered", "count": ' + b"9" * 4301 + b"}"
    answer = client.post(
        "/webhooks/coscale",
        headers={**auth(DEFAULT_TOKEN), "Content-Type": "application/json"},
        content=body,
    )
    assert answer.status_code == 400
    assert "cannot be read" in answer.json()["error"]["message"]
    assert queue.events == []


@pytest.mark.parametrize(
    ("link", "forwarded"),
    [
        ("https://app.coscale.com/alerts/1", True),
        ("javascript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("https:/no-host", False),
    ],
)
def test_only_web_links_are_forwarded(
    make_client: AppFactory, queue: ListQueue, link: str, forwarded: bool
) -> None:
    client = make_client()
    answer = client.post(
        "/webhooks/coscale",
        headers=auth(DEFAULT_TOKEN),
        json={"alert_id": "1", "action": "triggered", "link": link},
    )
    assert answer.status_code == 202
    (event,) = queue.events
    assert ("link" in event.fields) is forwarded
    assert (link in (event.details or "")) is forwarded


def test_events_route_links_are_web_links_only() -> None:
    db = ROUTES.by_name("db-team")
    assert db is not None and db.events is not None
    web = db.events.build("trigger", "k", {"alert_id": "1", "link": "https://x.example/1"})
    script = db.events.build("trigger", "k", {"alert_id": "1", "link": "javascript:alert(1)"})
    assert [link["href"] for link in web["links"]] == ["https://x.example/1"]
    assert script.get("links", []) == []


def test_readyz_answers_a_probe_without_details(make_client: AppFactory) -> None:
    client = make_client()
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 200 and anonymous.json() == {"ready": True}
    detailed = client.get("/readyz", headers=auth(DEFAULT_TOKEN))
    assert set(detailed.json()["checks"]) >= {"redis", "database"}


def test_the_api_contacts_link_opens_the_console_when_it_is_on(make_client: AppFactory) -> None:
    # Without the console, the link is the API's view (it needs an ingress token)
    plain = make_client(public_url="https://bridge.example")
    answer = plain.post(
        "/incidents",
        headers=auth(DEFAULT_TOKEN),
        json={"incident": {"type": "incident", "title": "t", "service": {"id": "PDEFAULT"}}},
    ).json()["incident"]
    assert answer["html_url"] == f"https://bridge.example/alerts/{answer['id']}"
    # With it, a page a person opens by signing in
    console = make_client(
        public_url="https://bridge.example",
        operator_tokens="operator-token-0123456789abcdef0123456789",
    )
    answer = console.post(
        "/incidents",
        headers=auth(DEFAULT_TOKEN),
        json={"incident": {"type": "incident", "title": "t", "service": {"id": "PDEFAULT"}}},
    ).json()["incident"]
    assert answer["html_url"] == f"https://bridge.example/ui/alerts/{answer['id']}?source=api"
