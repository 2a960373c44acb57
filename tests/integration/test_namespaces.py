"""Two bridges on one PostgreSQL database and one Redis, each with its own namespace, its own
PagerDuty (a simulator) and its own token: one's PagerDuty goes down, and nothing crosses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from models import Alert
from tests.integration.conftest import (
    PAGERDUTY_TOKEN,
    Bridge,
    fresh_database,
    running_bridge,
    wait_for,
)

pytestmark = pytest.mark.integration

TOKEN_B = "integration-pagerduty-token-of-bridge-b"
SHARED = [f"shared-{n}" for n in range(5)]  # the same alert ids sent to both bridges
OWN = 10  # alerts each bridge alone gets


@pytest.fixture(scope="module")
def two_bridges(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Bridge, Bridge, str, str]]:
    suffix = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"bridge-a-{suffix}", f"bridge-b-{suffix}"
    logs_a: Path = tmp_path_factory.mktemp("bridge-a-logs")
    logs_b: Path = tmp_path_factory.mktemp("bridge-b-logs")
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database())
        a = stack.enter_context(running_bridge(database_url, redis_url, ns_a, logs_a))
        b = stack.enter_context(
            running_bridge(
                database_url,
                redis_url,
                ns_b,
                logs_b,
                settings=lambda _url: {
                    "PAGERBRIDGE_PAGERDUTY_TOKEN": TOKEN_B,
                    "PAGERBRIDGE_BREAKER_PROBE_INTERVAL": "0.5",
                },
                simulator_args=("--token", TOKEN_B),
            )
        )
        yield a, b, ns_a, ns_b


def _post(bridge: Bridge, alert_id: str, action: str) -> None:
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as api:
        answer = api.post(
            "/webhooks/coscale",
            json={"alert_id": alert_id, "action": action, "message": f"{alert_id} {action}"},
        )
    assert answer.status_code == 202, answer.text


def _keys(bridge: Bridge) -> set[str]:
    return {str(incident["incident_key"]) for incident in bridge.incidents()}


def _sweeps(bridge: Bridge) -> int:
    return bridge.services["beat"].output().count("Sending due task")


def test_two_bridges_share_a_database_and_a_redis(
    two_bridges: tuple[Bridge, Bridge, str, str],
) -> None:
    a, b, ns_a, ns_b = two_bridges
    assert PAGERDUTY_TOKEN != TOKEN_B
    b.simulator.set_faults(down=True)
    ids_a = [f"only-a-{n}" for n in range(OWN)] + SHARED
    ids_b = [f"only-b-{n}" for n in range(OWN)] + SHARED
    for alert_id in ids_a:
        _post(a, alert_id, "triggered")
    for alert_id in ids_b:
        _post(b, alert_id, "triggered")

    expected_a = {f"pagerbridge@{ns_a}/coscale/{alert_id}/1" for alert_id in ids_a}
    expected_b = {f"pagerbridge@{ns_b}/coscale/{alert_id}/1" for alert_id in ids_b}
    wait_for(lambda: _keys(a) == expected_a, timeout=60, what="A's incidents\n" + a.logs())

    # The same alert id in two bridges is two alerts, one per namespace.
    def shared_rows() -> list[tuple[str, str]]:
        with a.sessions() as session:
            rows = session.execute(
                select(Alert.namespace, Alert.source_alert_id).where(
                    Alert.source_alert_id.in_(SHARED)
                )
            ).all()
        return sorted((namespace, alert_id) for namespace, alert_id in rows)

    both = sorted((ns, i) for ns in (ns_a, ns_b) for i in SHARED)
    wait_for(lambda: len(shared_rows()) >= len(both), what="B's events applied\n" + b.logs())
    assert shared_rows() == both

    # B's alerts wait for B's PagerDuty while A's sweeper runs again and again: counted in
    # sweeps, not seconds, and in calls B's simulator refused.
    wait_for(
        lambda: b.simulator.counts().get("faults", {}).get("down", 0) > 0,
        timeout=60,
        what="B's calls to its PagerDuty, which is down\n" + b.logs(),
    )
    swept = _sweeps(a)
    wait_for(lambda: _sweeps(a) >= swept + 5, timeout=60, what="five more sweeps of A")
    assert _keys(a) == expected_a  # nothing of B's reached A's PagerDuty
    assert b.incidents() == []

    # A resolves its own, the shared ids included; B's stay open.
    for alert_id in SHARED:
        _post(a, alert_id, "resolved")
    wait_for(
        lambda: all(
            incident["status"] == "resolved"
            for incident in a.incidents()
            if any(f"/{alert_id}/" in incident["incident_key"] for alert_id in SHARED)
        ),
        timeout=60,
        what="A's shared incidents resolved\n" + a.logs(),
    )

    b.simulator.clear_faults()
    wait_for(
        lambda: _keys(b) == expected_b,
        timeout=90,
        what="B's incidents after its outage\n" + b.logs(),
    )
    assert all(incident["status"] == "triggered" for incident in b.incidents())
    assert _keys(a) == expected_a
    assert a.simulator.counts().get("faults", {}).get("down", 0) == 0
