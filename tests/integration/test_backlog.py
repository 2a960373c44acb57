"""The events waiting to be applied are visible: an api with no worker takes triggers, and
``/readyz``, ``/metrics`` and ``status`` count them in the queue and in the inbox."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import (
    INGRESS_TOKEN,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_until_up,
)
from tests.integration.test_pipeline_metrics import samples
from worker.pipeline.celery_app import intake_queue

pytestmark = pytest.mark.integration

EVENTS = 5


@pytest.fixture
def api_alone(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """An api on a fresh database and namespace, and no worker: what it accepts waits."""
    namespace = f"backlog-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url:
        env = bridge_env(database_url, redis_url, "http://127.0.0.1:9", namespace)
        port = free_port()
        api = start_service("api", ["api", "--port", str(port)], env, tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(api, lambda: httpx.get(f"{url}/healthz", timeout=2).is_success)
            yield url, env
        finally:
            api.stop()
            client = redis.Redis.from_url(redis_url)
            client.delete(namespace, intake_queue(namespace))
            client.close()


def test_queued_and_inbox_events_are_counted(api_alone: tuple[str, dict[str, str]]) -> None:
    url, env = api_alone
    headers = {"Authorization": f"Token token={INGRESS_TOKEN}"}
    # Given EVENTS triggers accepted while no worker runs
    for index in range(EVENTS):
        answer = httpx.post(
            f"{url}/webhooks/coscale",
            json={"alert_id": f"b{index}", "action": "triggered", "message": "m"},
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 202, answer.text

    # Then /readyz's details count them in the queue and in the inbox, and it stays ready
    ready = httpx.get(f"{url}/readyz", headers=headers, timeout=10)
    assert ready.status_code == 200
    backlog = ready.json()["checks"]["backlog"]
    assert backlog["status"] == "ok"
    assert backlog["reason"].startswith(f"{EVENTS} event(s) queued (oldest ")
    assert f", {EVENTS} in the inbox (oldest " in backlog["reason"]
    # And /metrics has them as gauges
    found = samples(httpx.get(f"{url}/metrics", headers=headers, timeout=10).text)
    assert found["pagerbridge_queue_events"] == EVENTS
    assert found["pagerbridge_inbox_events"] == EVENTS
    assert found["pagerbridge_queue_oldest_event_seconds"] >= 0
    # And so does `pagerbridge status`
    status = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(status.stdout)["backlog"]
    assert (report["queue_events"], report["inbox_events"]) == (EVENTS, EVENTS)
    assert report["queue_counted_all"] is True
    assert report["queue_oldest_seconds"] is not None
