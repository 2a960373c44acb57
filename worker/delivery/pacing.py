"""How fast the workers may call PagerDuty, from what PagerDuty's answers say: a pure policy.

docs/pagerduty.md: every REST answer carries ``ratelimit-limit`` (calls a minute), ``-remaining``
(calls left before a 429) and ``-reset`` (seconds until the window is whole again). The shared
gate (``worker/delivery/gate.py``) keeps one token bucket per token for all workers; each
reading sets that bucket to PagerDuty's own numbers:

- the refill is ``limit`` a minute, a hair under it (:data:`PACE_SHARE`), whether that is
  above or below the configured rate: the configured rate only stands until an answer says;
- the tokens are ``remaining``, less the calls other workers may have out that PagerDuty has
  not counted yet (:data:`IN_FLIGHT_RESERVE`), so the burst PagerDuty allows is used and no
  more;
- the reading holds for one window (:data:`PACE_WINDOW_SECONDS`, or ``reset`` if longer), and
  every answer replaces it: a lower limit after a 429 lasts only as long as answers say so.
"""

from __future__ import annotations

from dataclasses import dataclass

# Of the limit PagerDuty announces, the share used: the clocks of two buckets never quite meet.
PACE_SHARE = 0.99
# Calls the reading does not count yet. A process reads after its whole group was answered, so
# its own calls are counted; another process may have up to ``pagerduty_calls_in_flight`` (4 by
# default) out. Each token kept back is a call PagerDuty would have taken when a storm ends.
IN_FLIGHT_RESERVE = 4.0
# PagerDuty's limit is per minute: a reading stands at least this long, then the configured
# rate again (no answers for a minute means nothing to pace).
PACE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RateLimitReading:
    """What one REST answer's ``ratelimit-*`` headers say about the token's budget."""

    limit_per_minute: float  # ratelimit-limit
    remaining: float  # ratelimit-remaining: calls left before PagerDuty answers 429
    reset_seconds: float  # ratelimit-reset: seconds until the window is whole again


@dataclass(frozen=True, slots=True)
class Pace:
    """The shared bucket after a reading."""

    rate_per_minute: float  # refill
    tokens: float  # calls that may go now
    capacity: float  # most tokens the bucket holds until the next reading
    until: float  # unix seconds; then the configured rate and burst again


def pace_from(reading: RateLimitReading, *, now: float, burst: float) -> Pace:
    """The bucket every worker uses after PagerDuty answered with ``reading`` at ``now``.

    ``burst`` is the configured bucket size: the capacity never drops below it, so that a
    reading taken while PagerDuty's bucket is empty does not stop the refill from saving up.
    """
    tokens = max(0.0, reading.remaining - IN_FLIGHT_RESERVE)
    return Pace(
        rate_per_minute=reading.limit_per_minute * PACE_SHARE,
        tokens=tokens,
        capacity=max(burst, tokens),
        until=now + max(PACE_WINDOW_SECONDS, reading.reset_seconds),
    )


def rate_after_429(limit_per_minute: float | None, *, now: float) -> tuple[float, float] | None:
    """``(rate per minute, until)`` a 429 carrying ``ratelimit-limit`` sets, or ``None``.

    Held one window only: the next answers' readings replace it (a limit that comes back is
    used again within a minute).
    """
    if limit_per_minute is None or limit_per_minute <= 0:
        return None
    return limit_per_minute * PACE_SHARE, now + PACE_WINDOW_SECONDS


def deferral_waits(first_wait: float, calls: int, rate_per_minute: float) -> list[float]:
    """Seconds until each of ``calls`` waiting calls may go, in their order: the first when the
    gate has a token again (``first_wait``), each next one a refill later. Calls handed back to
    the database with these waits come due as fast as the budget spends them, not all at once
    (which would only meet the gate's wait again)."""
    step = 60.0 / rate_per_minute if rate_per_minute > 0 else 0.0
    return [first_wait + index * step for index in range(calls)]
