"""A real worker against the simulator limited to a rate the bridge is not told: the workers
pace themselves from PagerDuty's ratelimit-* headers, and almost no call is answered 429."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.integration.conftest import Bridge
from tests.integration.test_reliability import (
    api,  # noqa: F401  (fixture)
    assert_one_incident_each,
    counts,
    describe_alerts,
    incidents_of,
    new_alert_ids,
    send,
    total_calls,
    wait_delivered,
)


@pytest.fixture(autouse=True)
def forget_the_pace(bridge: Bridge) -> Iterator[None]:
    """The shared bridge's gate keeps PagerDuty's pace for one window after the last answer
    that carried it (worker/delivery/pacing.py): forget it after each test, so the next test
    file's bridge starts at the configured rate, as a bridge PagerDuty never limited."""
    yield
    client = redis.Redis.from_url(bridge.env["PAGERBRIDGE_REDIS_URL"])
    try:
        keys = list(client.scan_iter(match=f"{bridge.env['PAGERBRIDGE_NAMESPACE']}:gate:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_a_storm_against_an_untold_limit_is_paced_by_the_headers(
    bridge: Bridge,
    api: httpx.Client,  # noqa: F811
) -> None:
    alert_ids = new_alert_ids(120)
    before, calls_before = counts(bridge), total_calls(bridge)
    # 240 a minute with a burst of 10: the bridge's own budget (900/min) is far above it.
    bridge.simulator.set_faults(rate_limit_per_minute=240, rate_limit_burst=10)
    try:
        send(api, alert_ids, "triggered")
        wait_delivered(bridge, alert_ids, "triggered", timeout=90)
    finally:
        bridge.simulator.clear_faults()
    after = counts(bridge)
    calls = total_calls(bridge) - calls_before
    rate_limited = after["faults"]["rate_limited"] - before["faults"]["rate_limited"]
    assert calls >= len(alert_ids), describe_alerts(bridge, alert_ids)
    # At most 1% of the calls answered 429 (rounded up: one is allowed).
    assert rate_limited <= max(1, calls // 100), (rate_limited, calls)
    assert_one_incident_each(bridge, api, alert_ids, "triggered")


def test_resolves_overtake_creates_waiting_for_the_budget(
    bridge: Bridge,
    api: httpx.Client,  # noqa: F811
) -> None:
    # Given a PagerDuty allowing one call a second (a burst of five), not told to the bridge,
    # and a storm of 30 triggers: most creates wait for the budget
    alert_ids = new_alert_ids(30)
    firing, resolving = alert_ids[:10], alert_ids[10:]
    calls_before = total_calls(bridge)
    bridge.simulator.set_faults(rate_limit_per_minute=60, rate_limit_burst=5)
    try:
        send(api, alert_ids, "triggered")
        # When the last 20 resolve while their creates still wait (20 s of budget and more)
        send(api, resolving, "resolved")
        wait_delivered(bridge, firing, "triggered", timeout=90)
        wait_delivered(bridge, resolving, "resolved", timeout=90)
    finally:
        bridge.simulator.clear_faults()
    # Then the resolves were applied as they came (the intake worker does not wait for the
    # budget): a resolved alert was paged only if its create went out before its resolve came,
    # in PagerDuty's burst or the second or two after. Counted, not timed: at one call a
    # second, the 20 creates alone would have taken 20 s.
    incidents = incidents_of(bridge, alert_ids)
    paged_for_nothing = [a for a in resolving if incidents[a]]
    assert len(paged_for_nothing) <= 7, describe_alerts(bridge, alert_ids)
    assert all(len(incidents[a]) == 1 for a in firing)
    assert all(i["status"] == "resolved" for a in resolving for i in incidents[a])
    assert total_calls(bridge) - calls_before < 2 * len(alert_ids)
