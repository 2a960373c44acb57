"""The apply batches with a real worker: a lone event, which never fills a batch, is applied from
the queue and delivered when the batch window's timer hands it over (celery-batches'
``flush_interval``), not left for the inbox sweeper."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Bridge, fresh_database, running_bridge, wait_for

pytestmark = pytest.mark.integration

WINDOW_S = 1.0


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


def test_lone_events_are_handed_over_by_the_window(slow_window: Bridge) -> None:
    bridge = slow_window
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as api:
        for n in range(3):  # one after the other, nothing after the last
            alert_id = f"idle-{uuid.uuid4().hex[:8]}-{n}"
            answer = api.post(
                "/webhooks/coscale",
                json={"alert_id": alert_id, "action": "triggered", "message": "disk full"},
            )
            assert answer.status_code == 202, answer.text
            wait_for(
                lambda alert_id=alert_id: bridge.incidents(f"pagerbridge/coscale/{alert_id}/"),
                timeout=30,
                what=f"the incident of {alert_id} ({WINDOW_S:.0f} s window)\n" + bridge.logs(),
            )
    # Each came through the queue: the sweeper, which would have applied an event the queue held
    # back past the inbox's grace, found none.
    assert "the queue had not delivered" not in bridge.services["worker"].output()
