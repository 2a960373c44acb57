"""bench/run.py: a live phase ends when the simulator made its N-th incident, by the simulator's
own clock, not when the next poll (0.2 s or more apart) noticed it."""

from __future__ import annotations

import time
from types import ModuleType

import pytest
from starlette.testclient import TestClient

from bench.tests.scripts import load_bench_script
from worker.simulator.rest import PAGERDUTY_ACCEPT
from worker.simulator.server import create_app
from worker.simulator.state import SimulatedPagerDuty

HEADERS = {
    "Authorization": "Token token=sim-token",
    "Accept": PAGERDUTY_ACCEPT,
    "Content-Type": "application/json",
    "From": "bridge@example.com",
}


@pytest.fixture(scope="module")
def bench_run() -> ModuleType:
    return load_bench_script("run")


def test_the_nth_creation_since_the_start_is_the_end(bench_run: ModuleType) -> None:
    made = [9_000.0, 10_250.0, 10_100.0, 11_900.0, 10_600.0]  # out of order, one before
    assert bench_run.nth_creation_s(made, 10.0, 1) == pytest.approx(0.1)
    assert bench_run.nth_creation_s(made, 10.0, 3) == pytest.approx(0.6)
    assert bench_run.nth_creation_s(made, 10.0, 4) == pytest.approx(1.9)
    # Fewer than N since the start: no end (the caller keeps the poll's figure).
    assert bench_run.nth_creation_s(made, 10.0, 5) is None


def test_the_simulators_incidents_and_events_alerts_give_their_creation_times(
    bench_run: ModuleType,
) -> None:
    simulator = SimulatedPagerDuty()
    started = time.time()
    with TestClient(create_app(simulator, token="sim-token")) as client:
        for number in range(3):
            answer = client.post(
                "/incidents",
                headers=HEADERS,
                json={
                    "incident": {
                        "type": "incident",
                        "title": f"alert {number}",
                        "service": {"id": "PSVC001", "type": "service_reference"},
                        "incident_key": f"key-{number}",
                    }
                },
            )
            assert answer.status_code == 201, answer.text
        answer = client.post(
            "/v2/enqueue",
            json={
                "routing_key": "R0123456789abcdef0123456789abcde",
                "event_action": "trigger",
                "dedup_key": "one",
                "payload": {"summary": "s", "source": "host", "severity": "error"},
            },
        )
        assert answer.status_code == 202, answer.text
        state = client.get("/_simulator/state").json()
    finished = time.time()

    incidents = bench_run.creation_times_ms(state)
    alerts = bench_run.creation_times_ms(state, events_api=True)
    assert len(incidents) == 3 and len(alerts) == 1
    for made in (*incidents, *alerts):
        assert started * 1000 <= made <= finished * 1000
    third = bench_run.nth_creation_s(incidents, started, 3)
    assert third == pytest.approx(max(incidents) / 1000 - started, abs=1e-6)
    assert 0 <= third <= finished - started


def test_the_creation_curve_separates_the_start_and_the_tail_from_the_steady_rate(
    bench_run: ModuleType,
) -> None:
    # 10 creations from 10.0 s: the first after 0.5 s, then one every 0.1 s, the last late.
    made = [10_500.0 + 100.0 * index for index in range(9)] + [12_000.0]
    curve = bench_run.creation_curve(made, 10.0, 10)
    assert curve == {
        "first_s": 0.5,
        "p10_s": 0.5,
        "p50_s": 0.9,
        "p90_s": 1.3,
        "last_s": 2.0,
        # The 1st to the 9th creation: 8 more in 0.8 s, whatever the start and the tail.
        "middle_per_s": 10.0,
    }
    # Fewer than N made: no curve, as no end.
    assert bench_run.creation_curve(made[:9], 10.0, 10) is None
