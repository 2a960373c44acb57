"""worker/pipeline/batching.py with a real worker: an event that finds the worker idle is
applied and delivered at once, not at the end of the batch window (here 10 s, so that waiting
for it would show)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Bridge, fresh_database, running_bridge, wait_for

pytestmark = pytest.mark.integration

WINDOW_S = 10.0


@pytest.fixture(scope="module")
def slow_window(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    logs: Path = tmp_path_factory.mktemp("batching-logs")
    with (
        fresh_database() as database_url,
        running_bridge(
            database_url,
            redis_url,
            f"pagerbridge-batching-{uuid.uuid4().hex[:8]}",
            logs,
            settings=lambda _url: {"PAGERBRIDGE_APPLY_BATCH_WINDOW": str(WINDOW_S)},
        ) as bridge,
    ):
        yield bridge


def test_an_event_that_finds_the_worker_idle_does_not_wait_for_the_window(
    slow_window: Bridge,
) -> None:
    bridge = slow_window
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as api:
        for n in range(3):  # one after the other: each finds the worker idle
            alert_id = f"idle-{uuid.uuid4().hex[:8]}-{n}"
            answer = api.post(
                "/webhooks/coscale",
                json={"alert_id": alert_id, "action": "triggered", "message": "disk full"},
            )
            assert answer.status_code == 202, answer.text
            wait_for(
                lambda alert_id=alert_id: bridge.incidents(f"pagerbridge/coscale/{alert_id}/"),
                timeout=WINDOW_S / 2,
                what=f"the incident of {alert_id} well before the {WINDOW_S:.0f} s window\n"
                + bridge.logs(),
            )
