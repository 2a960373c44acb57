"""The shared delivery gate (breaker, credentials, rate limit) on fakeredis, with a fake clock."""

from __future__ import annotations

import fakeredis
import pytest

from worker.delivery.gate import Admission, DeliveryGate, token_id
from worker.delivery.pacing import IN_FLIGHT_RESERVE, RateLimitReading


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def gate(server: fakeredis.FakeServer, clock: Clock, **kwargs: float) -> DeliveryGate:
    """A gate as one worker process sees it; two calls give two workers sharing Redis."""
    return DeliveryGate(fakeredis.FakeRedis(server=server), "pd-token", clock=clock, **kwargs)  # type: ignore[arg-type]


def test_breaker_opens_after_consecutive_failures_and_lets_one_probe_per_second(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker_a, worker_b = gate(server, clock), gate(server, clock)
    for n in range(4):
        assert not worker_a.failed(), n
    assert worker_a.succeeded() is False  # a success resets the count
    for _ in range(4):
        worker_b.failed()
    assert worker_b.failed() is True  # the fifth in a row opens it
    # While open: one probe per second across all workers, the rest park
    assert worker_a.admit().admission is Admission.OUTAGE  # the first probe waits a second
    clock.now += 1.01
    decisions = [w.admit().admission for w in (worker_a, worker_b, worker_a, worker_b)]
    assert decisions == [Admission.PROBE, Admission.OUTAGE, Admission.OUTAGE, Admission.OUTAGE]
    clock.now += 1.01
    assert worker_b.admit().admission is Admission.PROBE
    # A successful probe closes it, and says so once
    assert worker_b.succeeded() is True
    assert worker_a.succeeded() is False
    assert worker_a.admit().admission is Admission.GO
    assert not worker_a.status().breaker_open


def test_calls_while_down_stay_at_one_per_second(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    workers = [gate(server, clock) for _ in range(4)]
    for _ in range(5):
        workers[0].failed()
    calls = 0
    for _tick in range(600):  # 60 s of admissions every 100 ms from four workers
        for worker in workers:
            if worker.admit().may_call:
                calls += 1
                worker.failed()
        clock.now += 0.1
    assert calls <= 61


def test_credentials_refusal_parks_and_probes_rarely(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker = gate(server, clock, credentials_probe_interval=300)
    worker.refused_credentials("PagerDuty HTTP 401: Unauthorized")
    assert worker.admit().admission is Admission.CREDENTIALS
    clock.now += 299
    assert worker.admit().admission is Admission.CREDENTIALS
    clock.now += 1.01
    assert worker.admit().admission is Admission.PROBE
    assert worker.admit().admission is Admission.CREDENTIALS
    assert worker.status().credentials_error == "PagerDuty HTTP 401: Unauthorized"
    worker.forget_credentials()  # a restart with a fixed token
    assert worker.admit().admission is Admission.GO


def test_token_bucket_limits_rate(server: fakeredis.FakeServer, clock: Clock) -> None:
    worker = gate(server, clock, rate_per_minute=60, burst=5)
    assert [worker.admit().admission for _ in range(6)] == [Admission.GO] * 5 + [Admission.WAIT]
    decision = worker.admit()
    assert decision.admission is Admission.WAIT and 0 < decision.wait <= 1.0
    clock.now += 1.0
    assert worker.admit().admission is Admission.GO
    assert worker.admit().admission is Admission.WAIT


def test_429_pauses_every_worker_until_reset(server: fakeredis.FakeServer, clock: Clock) -> None:
    worker_a, worker_b = gate(server, clock), gate(server, clock)
    assert worker_a.rate_limited(retry_after=7) == 7
    decision = worker_b.admit()
    assert decision.admission is Admission.WAIT and decision.wait == pytest.approx(7, abs=0.01)
    clock.now += 7.01
    assert worker_b.admit().admission in (Admission.GO, Admission.WAIT)


def test_429_without_headers_backs_off_doubling(server: fakeredis.FakeServer, clock: Clock) -> None:
    worker = gate(server, clock, rate_limit_backoff=5, rate_limit_backoff_max=30)
    assert [worker.rate_limited(None) for _ in range(5)] == [5, 10, 20, 30, 30]
    worker.succeeded()
    assert worker.rate_limited(None) == 5


def test_redis_down_lets_calls_through(clock: Clock) -> None:
    server = fakeredis.FakeServer()
    worker = gate(server, clock)
    server.connected = False
    assert worker.admit().admission is Admission.GO
    assert worker.failed() is False


def test_the_token_itself_is_never_a_key(server: fakeredis.FakeServer, clock: Clock) -> None:
    worker = gate(server, clock)
    worker.admit()
    worker.refused_credentials("401")
    keys = [key.decode() for key in fakeredis.FakeRedis(server=server).keys("*")]
    assert keys and all("pd-token" not in key for key in keys)
    assert all(token_id("pd-token") in key for key in keys)


def admitted_in(worker: DeliveryGate, clock: Clock, seconds: int) -> int:
    """Calls admitted over ``seconds`` of fake time, asking again when told to wait."""
    admitted, end = 0, clock.now + seconds
    while clock.now < end:
        decision = worker.admit()
        if decision.admission is Admission.GO:
            admitted += 1
        else:
            clock.now += max(decision.wait, 0.001)
    return admitted


def test_a_429_announcing_a_lower_limit_slows_every_worker_to_it(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker_a = gate(server, clock, rate_per_minute=900, burst=1)
    worker_b = gate(server, clock, rate_per_minute=900, burst=1)
    assert admitted_in(worker_b, clock, 10) == pytest.approx(150, rel=0.03)  # 900/min
    worker_a.rate_limited(retry_after=0.5, limit_per_minute=600)
    assert worker_b.status().learned_rate_per_minute == pytest.approx(594)
    clock.now += 0.5
    # 99% of 600/min: 9.9 a second, from the other worker too.
    assert admitted_in(worker_b, clock, 10) == pytest.approx(99, rel=0.03)


def test_answers_announcing_a_limit_above_the_configured_rate_raise_the_pace(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker_a = gate(server, clock, rate_per_minute=600, burst=1)
    worker_b = gate(server, clock, rate_per_minute=600, burst=1)
    assert admitted_in(worker_b, clock, 10) == pytest.approx(100, rel=0.03)
    worker_a.paced(RateLimitReading(960, remaining=8, reset_seconds=10))
    assert admitted_in(worker_b, clock, 10) == pytest.approx(158, rel=0.03)


def test_a_reading_sets_the_tokens_every_worker_has_to_pagerdutys_remaining(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker_a = gate(server, clock, rate_per_minute=900, burst=30)
    worker_b = gate(server, clock, rate_per_minute=900, burst=30)
    # PagerDuty holds a larger burst than the configured one: all of it is used
    worker_a.paced(RateLimitReading(960, remaining=160, reset_seconds=0))
    assert worker_b.status().tokens == pytest.approx(160 - IN_FLIGHT_RESERVE)
    # Another tool spent the budget: nothing goes until PagerDuty's refill
    worker_a.paced(RateLimitReading(960, remaining=0, reset_seconds=10))
    assert worker_b.admit().admission is Admission.WAIT


def test_a_lower_limit_a_429_taught_lasts_only_until_answers_say_otherwise(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker = gate(server, clock, rate_per_minute=900, burst=1)
    worker.rate_limited(retry_after=0, limit_per_minute=300)
    assert admitted_in(worker, clock, 10) == pytest.approx(50, rel=0.05)
    # The limit is back: the next answer says so, and the pace follows at once
    worker.paced(RateLimitReading(960, remaining=100, reset_seconds=5))
    assert worker.status().learned_rate_per_minute == pytest.approx(960 * 0.99)
    # With no answers for a window, the configured rate stands again
    clock.now += 120
    assert worker.status().learned_rate_per_minute is None
    assert admitted_in(worker, clock, 10) == pytest.approx(150, rel=0.03)


def test_one_admission_lets_several_calls_through(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    from worker.delivery.gate import MAX_ADMIT

    worker = gate(server, clock, rate_per_minute=60, burst=18)
    assert worker.admit(4).granted == 4
    assert worker.admit(100).granted == MAX_ADMIT  # capped: a breaker opened elsewhere shows soon
    assert worker.status().tokens == pytest.approx(18 - 4 - MAX_ADMIT, abs=0.01)
    assert worker.admit(100).granted == 18 - 4 - MAX_ADMIT  # no more than the bucket holds
    assert worker.admit(3).admission is Admission.WAIT


def test_a_probe_admits_one_call_however_many_are_asked(
    server: fakeredis.FakeServer, clock: Clock
) -> None:
    worker = gate(server, clock, failure_threshold=1)
    worker.failed()
    clock.now += 1.01
    decision = worker.admit(8)
    assert (decision.admission, decision.granted) == (Admission.PROBE, 1)
