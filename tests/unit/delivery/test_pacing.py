"""The pacing policy: PagerDuty's ratelimit-* headers to the shared bucket, a pure function."""

from __future__ import annotations

import pytest

from worker.delivery.pacing import (
    IN_FLIGHT_RESERVE,
    PACE_SHARE,
    PACE_WINDOW_SECONDS,
    RateLimitReading,
    pace_from,
    rate_after_429,
)
from worker.pagerduty.classify import rate_limit_reading


@pytest.mark.parametrize("limit", [600, 960, 2000])
def test_the_pace_is_pagerdutys_limit_above_or_below_the_configured_rate(limit: int) -> None:
    pace = pace_from(RateLimitReading(limit, 50, 5), now=0, burst=30)
    assert pace.rate_per_minute == pytest.approx(limit * PACE_SHARE)


def test_the_tokens_are_what_remains_less_what_other_workers_may_have_out() -> None:
    pace = pace_from(RateLimitReading(960, 160, 0), now=0, burst=30)
    assert pace.tokens == 160 - IN_FLIGHT_RESERVE
    assert pace.capacity == 160 - IN_FLIGHT_RESERVE  # PagerDuty's burst, not the configured one


def test_an_empty_budget_gives_no_tokens_and_keeps_the_configured_capacity() -> None:
    pace = pace_from(RateLimitReading(960, 3, 9), now=0, burst=30)
    assert (pace.tokens, pace.capacity) == (0, 30)


def test_a_reading_lasts_a_window_or_until_the_reset_if_longer() -> None:
    short = pace_from(RateLimitReading(960, 1, 5), now=100, burst=1)
    assert short.until == 100 + PACE_WINDOW_SECONDS
    assert pace_from(RateLimitReading(960, 1, 90), now=100, burst=1).until == 190


def test_a_429_sets_the_rate_for_one_window_only() -> None:
    assert rate_after_429(300, now=10) == (300 * PACE_SHARE, 10 + PACE_WINDOW_SECONDS)
    assert rate_after_429(None, now=10) is None


@pytest.mark.parametrize(
    ("headers", "reading"),
    [
        (
            {"RateLimit-Limit": "960", "ratelimit-remaining": "12", "ratelimit-reset": "7"},
            RateLimitReading(960, 12, 7),
        ),
        (
            {
                "ratelimit-limit": "960, 960;w=60",
                "ratelimit-remaining": "3;w=60",
                "ratelimit-reset": "0",
            },
            RateLimitReading(960, 3, 0),
        ),
        ({"ratelimit-limit": "960", "ratelimit-remaining": "12"}, None),
        ({"ratelimit-limit": "960", "ratelimit-remaining": "-1", "ratelimit-reset": "1"}, None),
        ({"ratelimit-limit": "0", "ratelimit-remaining": "1", "ratelimit-reset": "1"}, None),
        ({}, None),
    ],
)
def test_headers_to_a_reading(headers: dict[str, str], reading: RateLimitReading | None) -> None:
    assert rate_limit_reading(headers) == reading


def test_acknowledges_and_resolves_drain_before_creates_high_urgency_first() -> None:
    from worker.delivery.policy import Create, FindByKey, SendEvent, Update, drain_rank
    from worker.vocabulary import AlertStatus

    def create(key: str, urgency: str | None) -> Create:
        return Create("t", "PSVC", key, urgency, None)

    waiting = [
        create("old-low", "low"),
        create("old-high", "high"),
        Update("P1", AlertStatus.RESOLVED),
        create("new-default", None),
        FindByKey("k", include_resolved=True),
        Update("P2", AlertStatus.ACKNOWLEDGED),
        SendEvent(AlertStatus.RESOLVED, {"event_action": "resolve", "dedup_key": "e"}),
    ]
    drained = sorted(waiting, key=drain_rank)
    assert drained == [
        waiting[2],
        waiting[4],
        waiting[5],
        waiting[6],  # end or quiet a page first
        waiting[1],
        waiting[3],  # high urgency creates, oldest first
        waiting[0],  # low urgency last
    ]


def test_routes_take_turns_keeping_each_routes_order() -> None:
    from worker.delivery.policy import share_fairly

    # A noisy route with 25 calls waiting and a quiet one with 3: the quiet one's go in the
    # first turn, not after all of the noisy route's
    noisy = [f"n{i}" for i in range(25)]
    turns = share_fairly([("noisy", noisy), ("quiet", ["q0", "q1", "q2"])], 10)
    assert [(route, len(calls)) for route, calls in turns] == [
        ("noisy", 10),
        ("quiet", 3),
        ("noisy", 10),
        ("noisy", 5),
    ]
    assert [c for route, calls in turns if route == "noisy" for c in calls] == noisy
    # One route: a single turn with every call (its creates keep going out together)
    assert share_fairly([("only", noisy)], 10) == [("only", noisy)]
    assert share_fairly([], 10) == []
