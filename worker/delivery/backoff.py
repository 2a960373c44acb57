"""Retry policy, as pure functions (times in seconds)."""

from __future__ import annotations

import random


def retry_delay(
    attempt: int,
    *,
    minimum: float,
    maximum: float,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``delay = min(maximum, minimum · 2^(attempt-1) · U(1, 2))``

    Exponential with multiplicative jitter, as dramatiq does: the jitter only ever lengthens the
    wait (Celery's "full jitter" can draw 0 s and hammer a PagerDuty that is down), and spreads
    workers that failed together so they do not retry together. Bounds:
    ``minimum ≤ delay ≤ maximum`` for every attempt ≥ 1.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    draw = (rand or random).uniform(1.0, 2.0)
    # Cap the exponent: 2**64 seconds is already past any sane maximum, and floats overflow.
    exponent = min(attempt - 1, 64)
    return min(maximum, minimum * (2.0**exponent) * draw)


def should_give_up(age: float, *, give_up_after: float) -> bool:
    """Whether an alert first wanting delivery ``age`` seconds ago has been retried long enough.

    The age counts from the first time the alert needed delivery, not from the last event, so a
    resolve arriving late does not give up before its trigger would have (docs/design.md,
    "Failure policy").
    """
    return age >= give_up_after
