"""PAGERBRIDGE_PAGERDUTY_CALLS_IN_FLIGHT with a real worker and the simulator: an alert storm's
creates reach PagerDuty several at once per process, and each alert still gets one incident."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Bridge, fresh_database, running_bridge, wait_for

pytestmark = pytest.mark.integration

IN_FLIGHT = 4
WORKER_PROCESSES = 2  # running_bridge's worker --concurrency


@pytest.fixture(scope="module")
def grouped(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    logs: Path = tmp_path_factory.mktemp("in-flight-logs")
    with (
        fresh_database() as database_url,
        running_bridge(
            database_url,
            redis_url,
            f"pagerbridge-in-flight-{uuid.uuid4().hex[:8]}",
            logs,
            settings=lambda _url: {"PAGERBRIDGE_PAGERDUTY_CALLS_IN_FLIGHT": str(IN_FLIGHT)},
        ) as bridge,
    ):
        yield bridge


def test_a_storms_creates_go_out_together_one_incident_each(grouped: Bridge) -> None:
    bridge = grouped
    # Each call takes 50 ms at the simulator: calls sent together are seen there together.
    bridge.simulator.set_faults(latency_ms=50)
    storm = f"storm-{uuid.uuid4().hex[:8]}"
    alert_ids = [f"{storm}-{n}" for n in range(80)]
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as api:
        for alert_id in alert_ids:
            answer = api.post(
                "/webhooks/coscale",
                json={"alert_id": alert_id, "action": "triggered", "message": "disk full"},
            )
            assert answer.status_code == 202, answer.text
    prefix = f"pagerbridge/coscale/{storm}-"
    wait_for(
        lambda: len(bridge.incidents(prefix)) >= len(alert_ids),
        timeout=60,
        what=f"an incident for each of {len(alert_ids)} alerts\n" + bridge.logs(),
    )
    keys = Counter(incident["incident_key"] for incident in bridge.incidents(prefix))
    assert len(keys) == len(alert_ids) and set(keys.values()) == {1}, keys.most_common(3)
    counts = bridge.simulator.counts()
    # One call at a time per process would never have more than WORKER_PROCESSES at once.
    assert counts["most_in_flight"] > WORKER_PROCESSES, counts["most_in_flight"]
    assert counts["most_in_flight"] <= WORKER_PROCESSES * IN_FLIGHT
    assert counts["duplicate_creates_refused"] == 0
