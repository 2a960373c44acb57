"""Metrics against a running bridge: the worker's port sums its prefork pool processes' counts,
and the api's /metrics reads the shared state."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Bridge, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api(bridge: Bridge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as client:
        yield client


def samples(text: str) -> dict[str, float]:
    """Prometheus text as ``name{label="value",...}`` → value."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_worker_port_counts_what_its_pool_processes_delivered(
    bridge: Bridge, api: httpx.Client
) -> None:
    # Given an alert triggered through the api and delivered by the worker's pool
    alert_id = str(uuid.uuid4().int % 10**9)
    answer = api.post(
        "/webhooks/coscale", json={"alert_id": alert_id, "action": "triggered", "message": "m"}
    )
    assert answer.status_code == 202
    wait_for(
        lambda: api.get(f"/alerts/{alert_id}").json().get("delivery_state") == "delivered",
        what=f"alert {alert_id} delivered\n{bridge.logs()}",
    )
    worker_metrics = f"http://127.0.0.1:{bridge.env['PAGERBRIDGE_WORKER_METRICS_PORT']}/metrics"

    # When the worker's metrics port is scraped (no token: it shows counts only)
    counted = wait_for(
        lambda: (
            lambda found: (
                found
                if found.get('pagerbridge_deliveries_total{outcome="delivered"}', 0) >= 1
                else None
            )
        )(samples(httpx.get(worker_metrics, timeout=5).text)),
        what="the worker's port to count the delivery",
    )

    # Then the create it made and the delivery are there, summed over the pool processes
    assert counted['pagerbridge_pagerduty_calls_total{endpoint="create",status_class="2xx"}'] >= 1
    assert counted['pagerbridge_pagerduty_call_duration_seconds_count{endpoint="create"}'] >= 1


def test_api_metrics_read_the_shared_state(bridge: Bridge, api: httpx.Client) -> None:
    # When the api's /metrics is scraped with the ingress token
    answer = api.get("/metrics")

    # Then the shared state is there, read without errors
    assert answer.status_code == 200
    found = samples(answer.text)
    assert "pagerbridge_queue_depth" in found
    assert found['pagerbridge_breaker_open{route="default"}'] == 0
    assert found['pagerbridge_pagerduty_credentials_refused{route="default"}'] == 0
    assert 'pagerbridge_alerts{state="pending"}' in found
    assert "pagerbridge_oldest_pending_seconds" in found
    for part in ("queue", "pagerduty_gate", "database"):
        assert found[f'pagerbridge_scrape_errors_total{{part="{part}"}}'] == 0
    # And without the token it is refused (PAGERBRIDGE_METRICS_PUBLIC is off by default)
    assert httpx.get(f"{bridge.api_url}/metrics", timeout=10).status_code == 401
