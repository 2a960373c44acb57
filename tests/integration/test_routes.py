"""Routes end to end: a routes file with a REST route and an Events API v2 route, each through
the same scenarios (trigger → acknowledge → resolve, outage, lost answers, out of order), and
one route failing while the other delivers. Real api, worker, beat, simulator, PostgreSQL and
Redis, as in test_pipeline.py."""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    Bridge,
    Service,
    as_default_key,
    free_port,
    fresh_database,
    running_bridge,
    start_service,
    wait_for,
)

pytestmark = pytest.mark.integration

WEB_TOKEN = "web-team-ingress-token-1-0123456789ab"
DB_TOKEN = "db-team-ingress-token-22-0123456789a"
WEB_API_TOKEN = "web-team-pagerduty-api-token"
DB_ROUTING_KEY = "DBTEAM0000000000000000000000KEY1"
WEB_SERVICE = "PWEBTEAM"

ROUTES_FILE = f"""
# PagerDuty is the simulator at {{pagerduty}} for both routes.
[[route]]
name = "web"
tokens = ["{WEB_TOKEN}"]
backend = "rest"
[route.rest]
api_token = "{WEB_API_TOKEN}"
api_url = "{{pagerduty}}"
from_email = "web@example.com"
service_id = "{WEB_SERVICE}"
title_template = "{{MSG}} on {{SUBJECT}}"
urgency = {{ default = "low", when = [
    {{ field = "message", contains = "down", urgency = "high" }},
] }}

[[route]]
name = "db"
tokens = ["{DB_TOKEN}"]
backend = "events"
[route.events]
routing_key = "{DB_ROUTING_KEY}"
events_url = "{{pagerduty}}/v2/enqueue"
summary_template = "{{MSG}} on {{SUBJECT}}"
severity = {{ default = "warning", when = [
    {{ field = "message", contains = "down", severity = "critical" }},
] }}
rate_per_minute = 6000
"""
TOKENS = {"web": WEB_TOKEN, "db": DB_TOKEN}


def routes_file(pagerduty_url: str) -> str:
    return ROUTES_FILE.replace("{pagerduty}", pagerduty_url)


@pytest.fixture(scope="module")
def routed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """A bridge with a routes file, on a database and a Celery queue of its own."""
    logs = tmp_path_factory.mktemp("routed-logs")

    def with_routes(simulator_url: str) -> dict[str, str]:
        routes = logs / "routes.toml"
        routes.write_text(routes_file(simulator_url))
        routes.chmod(0o600)
        return {"PAGERBRIDGE_ROUTES_FILE": str(routes), "PAGERBRIDGE_BREAKER_PROBE_INTERVAL": "0.5"}

    with (
        fresh_database() as database_url,
        running_bridge(
            database_url,
            redis_url,
            f"pagerbridge-routes-{uuid.uuid4().hex[:8]}",
            logs,
            settings=with_routes,
            simulator_args=("--routing-key", DB_ROUTING_KEY),
        ) as bridge,
    ):
        yield bridge


def start(bridge: Bridge, name: str, args: list[str], logs: Path) -> Service:
    bridge.services[name] = start_service(name, args, bridge.env, logs)
    return bridge.services[name]


@pytest.fixture(autouse=True)
def no_faults(routed: Bridge) -> Iterator[None]:
    yield
    routed.simulator.clear_faults()


def send(bridge: Bridge, route: str, alert_id: str, action: str, **fields: str) -> dict[str, Any]:
    body = {
        "alert_id": alert_id,
        "action": action,
        "message": f"disk full {alert_id}",
        "subject": "db-1",
        "metric": "disk",
        **fields,
    }
    answer = httpx.post(
        f"{bridge.api_url}/webhooks/coscale/{route}",
        json=body,
        headers={"Authorization": f"Bearer {TOKENS[route]}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def pagerduty_side(bridge: Bridge, route: str, alert_id: str) -> list[dict[str, Any]]:
    """What PagerDuty holds for this alert: incidents (REST) or Events API alerts."""
    key_prefix = f"pagerbridge/coscale:{route}/{alert_id}/"
    state = bridge.simulator.state()
    if route == "web":
        return [
            i
            for i in state["incidents"]
            if as_default_key(str(i.get("incident_key"))).startswith(key_prefix)
        ]
    return [
        a
        for a in state["events"]["alerts"]
        if as_default_key(str(a["dedup_key"])).startswith(key_prefix)
    ]


def wait_final(bridge: Bridge, route: str, alert_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = pagerduty_side(bridge, route, alert_id)
        assert len(found) <= 1, f"duplicates for {alert_id}: {found}"
        return found[0] if found and found[0]["status"] == status else None

    return wait_for(reached, timeout=30, what=f"{route}:{alert_id} {status}\n{bridge.logs()}")


def wait_delivered(bridge: Bridge, route: str, alert_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (lambda v: v if v.get("delivery_state") == "delivered" else None)(
            alert_view(bridge, route, alert_id)
        ),
        timeout=30,
        what=f"{route}:{alert_id} delivered\n{bridge.logs()}",
    )


def alert_view(bridge: Bridge, route: str, alert_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{bridge.api_url}/alerts/{alert_id}",
        params={"source": f"coscale:{route}"},
        # A token reads its own route's alerts only.
        headers={"Authorization": f"Bearer {TOKENS[route]}"},
        timeout=10,
    )
    return dict(answer.json()) if answer.status_code == 200 else {}


@pytest.mark.parametrize("route", ["web", "db"])
def test_trigger_acknowledge_resolve(routed: Bridge, route: str) -> None:
    alert_id = uuid.uuid4().hex[:10]
    send(routed, route, alert_id, "triggered", message="db-1 is down")
    created = wait_final(routed, route, alert_id, "triggered")
    if route == "web":
        assert created["service_id"] == WEB_SERVICE
        assert created["title"] == "db-1 is down on db-1"
        assert created["urgency"] == "high"
    else:
        assert created["routing_key"] == DB_ROUTING_KEY
        assert created["summary"] == "db-1 is down on db-1"
        assert created["severity"] == "critical"
        assert created["custom_details"]["metric"] == "disk"
    send(routed, route, alert_id, "acknowledged")
    wait_final(routed, route, alert_id, "acknowledged")
    send(routed, route, alert_id, "resolved")
    wait_final(routed, route, alert_id, "resolved")
    view = wait_delivered(routed, route, alert_id)
    assert view["route"] == route
    assert view["backend"] == ("rest" if route == "web" else "events")
    assert (
        view["credential_id"] and DB_ROUTING_KEY not in str(view) and WEB_API_TOKEN not in str(view)
    )


@pytest.mark.parametrize("route", ["web", "db"])
def test_an_outage_then_recovery_delivers_everything_once(routed: Bridge, route: str) -> None:
    ids = [uuid.uuid4().hex[:10] for _ in range(5)]
    routed.simulator.set_faults(down=True)
    for alert_id in ids:
        send(routed, route, alert_id, "triggered")
    for alert_id in ids[:3]:
        send(routed, route, alert_id, "resolved")
    wait_for(
        lambda: all(
            alert_view(routed, route, a).get("attempts", 0) >= 1
            or alert_view(routed, route, a).get("delivery_state") == "parked"
            for a in ids
        ),
        timeout=30,
        what="every alert tried while PagerDuty is down",
    )
    routed.simulator.clear_faults()
    for alert_id in ids[3:]:
        wait_final(routed, route, alert_id, "triggered")
    for alert_id in ids[:3]:
        # Resolved during the outage: its trigger never landed (refused, not lost), so nothing
        # is sent at all; had it landed, the incident would be resolved.
        wait_delivered(routed, route, alert_id)
        found = pagerduty_side(routed, route, alert_id)
        assert len(found) <= 1 and all(item["status"] == "resolved" for item in found)


@pytest.mark.parametrize("route", ["web", "db"])
def test_lost_answers_double_nothing(routed: Bridge, route: str) -> None:
    ids = [uuid.uuid4().hex[:10] for _ in range(6)]
    routed.simulator.set_faults(lost=0.5, seed=4)
    for alert_id in ids:
        send(routed, route, alert_id, "triggered")
        send(routed, route, alert_id, "resolved")
    routed.simulator.clear_faults()
    for alert_id in ids:
        # A resolve received right after the trigger may find nothing sent: then nothing is.
        wait_delivered(routed, route, alert_id)
        found = pagerduty_side(routed, route, alert_id)
        assert len(found) <= 1 and all(item["status"] == "resolved" for item in found)


@pytest.mark.parametrize("route", ["web", "db"])
def test_out_of_order_events_end_in_the_latest_state(routed: Bridge, route: str) -> None:
    shuffle = random.Random(7)
    ids = [uuid.uuid4().hex[:10] for _ in range(4)]
    for alert_id in ids:
        actions = ["acknowledged", "triggered"]
        shuffle.shuffle(actions)
        for action in actions:
            send(routed, route, alert_id, action)
    for alert_id in ids:
        wait_final(routed, route, alert_id, "acknowledged")


def test_one_route_failing_leaves_the_other_delivering(routed: Bridge) -> None:
    # PagerDuty refuses the web route's API token: its alerts park, the db route's go through
    routed.simulator.set_faults(unauthorized_tokens=[WEB_API_TOKEN])
    web_id, db_id = uuid.uuid4().hex[:10], uuid.uuid4().hex[:10]
    send(routed, "web", web_id, "triggered")
    send(routed, "db", db_id, "triggered")
    wait_final(routed, "db", db_id, "triggered")
    parked = wait_for(
        lambda: (lambda v: v if v.get("delivery_state") == "parked" else None)(
            alert_view(routed, "web", web_id)
        ),
        what=f"the web alert parked\n{routed.logs()}",
    )
    assert "401" in parked["last_error"] and WEB_API_TOKEN not in parked["last_error"]
    # /readyz names the route whose token is refused, and says the other is fine
    ready = httpx.get(f"{routed.api_url}/readyz", headers=routed.headers, timeout=10)
    checks = ready.json()["checks"]
    assert ready.status_code == 503
    assert checks["pagerduty_credentials (web)"]["status"] == "down"
    assert checks["pagerduty_credentials (db)"]["status"] == "ok"
    assert WEB_API_TOKEN not in ready.text and DB_ROUTING_KEY not in ready.text
    # and /metrics, by route
    scraped = httpx.get(f"{routed.api_url}/metrics", headers=routed.headers, timeout=10).text
    assert 'pagerbridge_pagerduty_credentials_refused{route="web"} 1.0' in scraped
    assert 'pagerbridge_pagerduty_credentials_refused{route="db"} 0.0' in scraped
    # And once the token is accepted again (and a worker restarted), the web alert goes too
    routed.simulator.clear_faults()
    routed.services["worker"].stop()
    start(
        routed, "worker", ["worker", "--concurrency", "2"], Path(routed.services["api"].log).parent
    )
    wait_final(routed, "web", web_id, "triggered")


def test_a_webhook_for_an_unknown_route_or_with_another_routes_token_is_refused(
    routed: Bridge,
) -> None:
    body = {"alert_id": "x1", "action": "triggered"}
    unknown = httpx.post(
        f"{routed.api_url}/webhooks/coscale/nope",
        json=body,
        headers={"Authorization": f"Bearer {WEB_TOKEN}"},
    )
    assert unknown.status_code == 404
    wrong = httpx.post(
        f"{routed.api_url}/webhooks/coscale/db",
        json=body,
        headers={"Authorization": f"Bearer {WEB_TOKEN}"},
    )
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
    assert DB_TOKEN not in wrong.text


def test_the_api_contact_picks_the_route_by_service_id(routed: Bridge) -> None:
    created = httpx.post(
        f"{routed.api_url}/incidents",
        json={
            "incident": {
                "type": "incident",
                "title": "API contact on web",
                "service": {"id": WEB_SERVICE, "type": "service_reference"},
            }
        },
        headers={"Authorization": f"Token token={WEB_TOKEN}", "From": "a@example.com"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    key = created.json()["incident"]["incident_key"]
    incident = wait_for(
        lambda: next(
            (i for i in routed.simulator.state()["incidents"] if i.get("incident_key") == key),
            None,
        ),
        what="the API contact's incident",
    )
    assert incident["service_id"] == WEB_SERVICE


def test_a_bad_routes_file_stops_the_api_and_the_worker_naming_route_and_field(
    routed: Bridge, tmp_path: Path
) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(routes_file("http://127.0.0.1:9").replace(DB_ROUTING_KEY, "short"))
    env = {**routed.env, "PAGERBRIDGE_ROUTES_FILE": str(bad)}
    for command in (["api", "--port", str(free_port())], ["worker"]):
        started = subprocess.run(
            [sys.executable, "-m", "worker.cli", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode != 0
        said = " ".join((started.stdout + started.stderr).split())  # the console wraps lines
        assert "route 'db'" in said and "routing_key" in said, said
        assert "short" not in said.replace("too short", "")
