"""A real worker against the simulator limited to a rate the bridge is not told: the workers
pace themselves from PagerDuty's ratelimit-* headers, and almost no call is answered 429."""

from __future__ import annotations

import httpx

from tests.integration.conftest import Bridge
from tests.integration.test_reliability import (
    api,  # noqa: F401  (fixture)
    assert_one_incident_each,
    counts,
    describe_alerts,
    new_alert_ids,
    send,
    total_calls,
    wait_delivered,
)


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
