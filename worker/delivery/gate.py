"""The gate every PagerDuty call passes, shared by all workers through Redis.

One gate per PagerDuty API token (keyed by a hash of it, never the token itself). It holds:

- the **outage breaker**: after ``failure_threshold`` consecutive retryable failures it opens;
  while open, deliveries park without calling PagerDuty and without spending attempts, and one
  call per ``probe_interval`` (a Redis ``SET NX PX`` slot, so one across all workers) probes
  recovery. The first success closes it and the caller drains the parked alerts at once.
  Prometheus Alertmanager, by contrast, kept calling a PagerDuty answering 503 ~650 times a
  second in our measurement.
- the **credentials flag**: a 401/403 marks the token bad; deliveries park (never fail) and one
  probe per ``credentials_probe_interval`` checks whether the token works again. A worker start
  clears it, so fixing the token and restarting resumes at once.
- the **rate limit**: a token bucket at the configured rate until PagerDuty's answers say
  theirs (``ratelimit-*`` headers, :mod:`worker.delivery.pacing`), then at PagerDuty's numbers;
  and a pause until ``ratelimit-reset`` / ``Retry-After`` (or a doubling backoff) after a 429.

Each decision is one Lua script: atomic across workers, one round trip. A worker with several
calls to make asks for up to :data:`MAX_ADMIT` rate-limit tokens at once, so the round trip is
shared by those calls, and a breaker another worker opened is seen within that many calls.
If Redis does not answer the gate lets the call through (and logs it): the gate protects
PagerDuty, it must never be the reason an alert is not delivered.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from worker.delivery.pacing import RateLimitReading, pace_from, rate_after_429

log = logging.getLogger(__name__)


class Admission(StrEnum):
    GO = "go"  # call PagerDuty
    PROBE = "probe"  # call PagerDuty: this call tests whether it is back
    OUTAGE = "outage"  # park: the breaker is open
    CREDENTIALS = "credentials"  # park: PagerDuty refused the token
    WAIT = "wait"  # the rate limit: try again after ``wait`` seconds


@dataclass(frozen=True, slots=True)
class Decision:
    admission: Admission
    wait: float = 0.0  # seconds, for WAIT
    granted: int = 1  # calls admitted (GO: up to the number asked for; PROBE: one)

    @property
    def may_call(self) -> bool:
        return self.admission in (Admission.GO, Admission.PROBE)


@dataclass(frozen=True, slots=True)
class GateStatus:
    breaker_open: bool
    opened_at: float | None  # unix seconds
    consecutive_failures: int
    credentials_error: str | None
    paused_for: float  # seconds left of a 429 pause
    tokens: float | None  # rate-limit tokens left, None before the first call
    learned_rate_per_minute: float | None = None  # PagerDuty's announced limit, while kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "breaker": "open" if self.breaker_open else "closed",
            "breaker_opened_at": self.opened_at,
            "consecutive_failures": self.consecutive_failures,
            "credentials": "refused" if self.credentials_error else "ok",
            "credentials_error": self.credentials_error,
            "rate_limit_paused_for": round(self.paused_for, 3),
            "rate_limit_tokens": None if self.tokens is None else round(self.tokens, 2),
            "rate_limit_learned_per_minute": None
            if self.learned_rate_per_minute is None
            else round(self.learned_rate_per_minute, 1),
        }


# KEYS: gate hash. ARGV: now_ms, probe_ms, credentials_probe_ms, rate_per_ms, burst, wanted.
# Returns {admission, wait_ms, calls granted}.
# The probe slot is a time in the hash (not a key with a TTL) so that every decision uses the
# workers' clock, the one the tests can drive.
_ADMIT = """
local now = tonumber(ARGV[1])
local g = redis.call('HMGET', KEYS[1], 'credentials', 'open', 'paused_until', 'tokens', 'ts',
                     'probe_until')
local probe_free = tonumber(g[6] or '0') <= now
if g[1] then
  if probe_free then
    redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[3]))
    return {'probe', 0, 1}
  end
  return {'credentials', 0, 0}
end
if g[2] == '1' then
  if probe_free then
    redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[2]))
    return {'probe', 0, 1}
  end
  return {'outage', 0, 0}
end
local paused = tonumber(g[3] or '0')
if paused > now then return {'wait', paused - now, 0} end
local rate = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local learned = redis.call('HMGET', KEYS[1], 'learned_rate', 'learned_until', 'learned_cap')
if learned[1] and tonumber(learned[2]) > now then
  rate = tonumber(learned[1])
  if learned[3] then burst = math.max(burst, tonumber(learned[3])) end
end
local tokens = tonumber(g[4] or ARGV[5])
local ts = tonumber(g[5] or ARGV[1])
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens >= 1 then
  local granted = math.min(tonumber(ARGV[6]), math.floor(tokens))
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'ts', now)
  return {'go', 0, granted}
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
return {'wait', math.ceil((1 - tokens) / rate), 0}
"""

# KEYS: gate hash. Returns 1 when this success closed an open breaker or cleared a credentials
# refusal (the caller then drains what was parked).
_SUCCESS = """
local was = redis.call('HMGET', KEYS[1], 'open', 'credentials', 'failures', 'pauses')
if was[1] or was[2] then
  redis.call('HDEL', KEYS[1], 'open', 'opened_at', 'credentials', 'failures', 'pauses',
             'probe_until')
  return 1
end
if was[3] or was[4] then redis.call('HDEL', KEYS[1], 'failures', 'pauses') end
return 0
"""

# KEYS: gate hash. ARGV: threshold, now_ms, probe_ms. Returns 1 when this failure opened the
# breaker; the first probe comes one probe interval later.
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[1]) and redis.call('HGET', KEYS[1], 'open') ~= '1' then
  redis.call('HSET', KEYS[1], 'open', '1', 'opened_at', ARGV[2],
             'probe_until', tonumber(ARGV[2]) + tonumber(ARGV[3]))
  return 1
end
return 0
"""

# KEYS: gate hash. ARGV: now_ms, pause_ms or -1 (absent: doubling backoff), base_ms, max_ms,
# learned rate per ms or -1 (PagerDuty did not say its limit), until_ms (how long to keep it).
_RATE_LIMITED = """
local pauses = redis.call('HINCRBY', KEYS[1], 'pauses', 1)
local pause = tonumber(ARGV[2])
if pause < 0 then
  pause = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (pauses - 1))
end
redis.call('HSET', KEYS[1], 'paused_until', tonumber(ARGV[1]) + pause, 'tokens', '0',
           'ts', ARGV[1])
if tonumber(ARGV[5]) > 0 then
  redis.call('HSET', KEYS[1], 'learned_rate', ARGV[5], 'learned_until', ARGV[6])
  redis.call('HDEL', KEYS[1], 'learned_cap')
end
return pause
"""

# KEYS: gate hash. ARGV: now_ms, rate per ms, tokens, capacity, until_ms
# (worker/delivery/pacing.py).
# A reading from an answer: the bucket takes PagerDuty's numbers. A 429's pause stands.
_PACE = """
redis.call('HSET', KEYS[1], 'learned_rate', ARGV[2], 'learned_cap', ARGV[4],
           'learned_until', ARGV[5], 'tokens', ARGV[3], 'ts', ARGV[1])
return 1
"""

# The most calls one admission lets through: the gate's round trip is shared by up to this many
# calls, and a worker goes on for at most this many calls after another worker opened the breaker.
MAX_ADMIT = 10


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def token_id(token: str) -> str:
    """A stable, non-reversible name for a PagerDuty token, for Redis keys and logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class DeliveryGate:
    """The shared gate of one PagerDuty token. Times in seconds."""

    redis: redis.Redis
    token: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback
    namespace: str = "pagerbridge"
    failure_threshold: int = 5
    probe_interval: float = 1.0
    credentials_probe_interval: float = 300.0
    rate_per_minute: float = 900.0
    burst: float = 30.0
    rate_limit_backoff: float = 5.0  # first pause after a 429 without a reset header
    rate_limit_backoff_max: float = 120.0
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        tid = token_id(self.token)
        self._keys = [f"{self.namespace}:gate:{tid}"]
        self._admit = self.redis.register_script(_ADMIT)
        self._success = self.redis.register_script(_SUCCESS)
        self._failure = self.redis.register_script(_FAILURE)
        self._rate_limited = self.redis.register_script(_RATE_LIMITED)
        self._pace = self.redis.register_script(_PACE)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def admit(self, calls: int = 1) -> Decision:
        """May calls to PagerDuty go now, and how many of ``calls`` (at most MAX_ADMIT)?"""
        try:
            kind, wait_ms, granted = self._admit(
                keys=self._keys,
                args=[
                    self._now_ms(),
                    int(self.probe_interval * 1000),
                    int(self.credentials_probe_interval * 1000),
                    self.rate_per_minute / 60_000,
                    self.burst,
                    max(1, min(calls, MAX_ADMIT)),
                ],
            )
        except redis.RedisError as exc:
            log.warning("delivery gate unavailable, letting the call through: %s", exc)
            return Decision(Admission.GO)
        return Decision(
            Admission(kind.decode() if isinstance(kind, bytes) else kind),
            int(wait_ms) / 1000,
            int(granted),
        )

    def succeeded(self) -> bool:
        """Record a call PagerDuty answered; ``True`` if that ended an outage or refusal."""
        return bool(self._run(self._success, keys=self._keys))

    def failed(self) -> bool:
        """Record a retryable failure (5xx, timeout, network); ``True`` if it opened the breaker."""
        opened = bool(
            self._run(
                self._failure,
                keys=self._keys,
                args=[self.failure_threshold, self._now_ms(), int(self.probe_interval * 1000)],
            )
        )
        if opened:
            log.error(
                "PagerDuty is failing: breaker open after %d consecutive failures; "
                "deliveries park until a probe succeeds",
                self.failure_threshold,
            )
        return opened

    def refused_credentials(self, message: str) -> None:
        """Record a 401/403: every delivery with this token parks until a probe succeeds."""
        probe_at = self._now_ms() + int(self.credentials_probe_interval * 1000)
        self._run(
            lambda **kw: self.redis.hset(
                self._keys[0], mapping={"credentials": message[:500], "probe_until": probe_at}
            )
        )
        log.error(
            "PagerDuty refused the API token (%s); deliveries are parked, none fails. "
            "Fix PAGERBRIDGE_PAGERDUTY_TOKEN and restart the workers.",
            message,
        )

    def rate_limited(
        self, retry_after: float | None, limit_per_minute: float | None = None
    ) -> float:
        """Record a 429; returns the pause in seconds every worker now observes.

        ``limit_per_minute``, PagerDuty's ``ratelimit-limit``, becomes every worker's rate for
        one window (:func:`worker.delivery.pacing.rate_after_429`); the next answers' readings
        replace it.
        """
        after = rate_after_429(limit_per_minute, now=self.clock())
        if after is not None and after[0] < self.rate_per_minute:
            log.warning(
                "PagerDuty limits this token to %g calls/min, below the configured %g",
                limit_per_minute,
                self.rate_per_minute,
            )
        pause_ms = self._run(
            self._rate_limited,
            keys=self._keys,
            args=[
                self._now_ms(),
                -1 if retry_after is None else math.ceil(retry_after * 1000),
                int(self.rate_limit_backoff * 1000),
                int(self.rate_limit_backoff_max * 1000),
                repr(after[0] / 60_000) if after is not None else "-1",
                int(after[1] * 1000) if after is not None else 0,
            ],
        )
        return (float(pause_ms) if pause_ms is not None else self.rate_limit_backoff * 1000) / 1000

    def paced(self, reading: RateLimitReading) -> None:
        """PagerDuty answered with ``ratelimit-*`` headers: every worker follows them now."""
        pace = pace_from(reading, now=self.clock(), burst=self.burst)
        self._run(
            self._pace,
            keys=self._keys,
            args=[
                self._now_ms(),
                repr(pace.rate_per_minute / 60_000),
                repr(pace.tokens),
                repr(pace.capacity),
                int(pace.until * 1000),
            ],
        )

    def pace_per_minute(self) -> float:
        """The rate every worker keeps now: PagerDuty's, while a reading or a 429 holds, else
        the configured one."""
        try:
            rate, until = self.redis.hmget(self._keys[0], "learned_rate", "learned_until")
        except redis.RedisError:
            return self.rate_per_minute
        if rate is None or until is None or float(until) <= self._now_ms():
            return self.rate_per_minute
        return float(rate) * 60_000

    def forget_credentials(self) -> None:
        """A worker starts, perhaps with a fixed token: try it again at once."""
        self._run(lambda **kw: self.redis.hdel(self._keys[0], "credentials", "probe_until"))

    def status(self) -> GateStatus:
        raw: dict[bytes | str, bytes | str] = self.redis.hgetall(self._keys[0])
        fields = {_text(key): _text(value) for key, value in raw.items()}
        now_ms = self._now_ms()
        return GateStatus(
            breaker_open=fields.get("open") == "1",
            opened_at=int(fields["opened_at"]) / 1000 if "opened_at" in fields else None,
            consecutive_failures=int(fields.get("failures", 0)),
            credentials_error=fields.get("credentials"),
            paused_for=max(0, int(float(fields.get("paused_until", 0))) - now_ms) / 1000,
            tokens=float(fields["tokens"]) if "tokens" in fields else None,
            learned_rate_per_minute=float(fields["learned_rate"]) * 60_000
            if "learned_rate" in fields and float(fields.get("learned_until", 0)) > now_ms
            else None,
        )

    def _run(self, script: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return script(**kwargs)
        except redis.RedisError as exc:
            log.warning("delivery gate unavailable: %s", exc)
            return None
