"""Fault injection into PagerDuty calls: :class:`FaultPlan`, the hook every call passes through,
and :class:`ConfigurableFaults`, the plan that injects what a :class:`FaultSettings` describes
(per-credential rate-limit buckets included).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.simulator.faults import FaultKind, FaultSettings
from worker.simulator.rest import (
    CODE_INTERNAL_ERROR,
    CODE_RATE_LIMITED,
    CODE_TOOK_TOO_LONG,
    SimulatedError,
    invalid_credentials,
)
from worker.simulator.state import SimulatedPagerDuty


@dataclass(frozen=True, slots=True)
class PagerDutyCall:
    """One PagerDuty API call as a :class:`FaultPlan` sees it, before any header is checked
    (REST) or the event validated (Events; its body is read and decoded, though, to find the
    routing key)."""

    method: str
    route: str  # the route template, e.g. "/incidents/{id}" or EVENTS_ROUTE
    # From "Authorization: Token token=<t>"; None if absent or malformed, and always None for
    # the Events API, which takes no Authorization header (so unauthorized_tokens never apply).
    token: str | None
    request: Request
    simulator: SimulatedPagerDuty  # the plan counts the faults it injects here (record_fault)
    api: Literal["rest", "events"] = "rest"
    routing_key: str | None = None  # Events API: the body's routing_key, if it is a string

    @property
    def credential(self) -> tuple[str, str | None]:
        """Who a rate limit counts against: ``("rest", API token)`` or ``("events", routing
        key)``. PagerDuty limits each separately (960/min per API key, about 120/min per
        integration key), so one string used as both still gets two buckets."""
        if self.api == "events":
            return ("events", self.routing_key)
        return ("rest", self.token)


class FaultPlan:
    """Extension point for fault injection; this base class injects nothing.

    The app consults ``app.state.fault_plan`` on every PagerDuty call, REST or Events (never on
    ``/_simulator``):

    - :meth:`before` runs first, before the headers are checked. Returning a response answers
      the call with it and leaves the simulated state untouched: that is how "down", "rate
      limit" (429 with ``ratelimit-*`` headers) or "401 for this token" can be made. Awaiting
      in it gives "slow" and "hang".
    - :meth:`after` runs once the simulator answered the call (state change included; not when
      :meth:`before` answered) and may replace the response: a 5xx or a stall after the
      incident was created is the "lost response" case.

    The recorded call counts use the status of the response finally sent. Fault answers keep
    the REST error envelope on ``/v2/enqueue`` too: PagerDuty documents no body for the Events
    API's 429 and 5xx, so a client must go by the status alone. The plan may be
    swapped while the app runs by assigning ``app.state.fault_plan``; the ``/_simulator/faults``
    endpoints work only while it is a :class:`ConfigurableFaults`.
    """

    async def before(self, call: PagerDutyCall) -> Response | None:
        """Return a response to answer the call without running it, or None to run it."""
        return None

    async def after(self, call: PagerDutyCall, response: Response) -> Response:
        """Return the response to send; ``response`` is what the simulator answered."""
        return response


@dataclass(slots=True)
class _TokenBucket:
    """Up to ``capacity`` tokens, refilled continuously at ``per_second``; a call takes one."""

    capacity: float
    per_second: float
    tokens: float
    updated_at: float  # monotonic seconds

    def take(self, now: float) -> float | None:
        """Take a token and return None, or return the seconds until one will be there."""
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.per_second

    def left(self, now: float) -> tuple[float, float]:
        """Tokens there now, and seconds until the bucket is full."""
        self._refill(now)
        return self.tokens, (self.capacity - self.tokens) / self.per_second

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.per_second)
        self.updated_at = now


# Changing any of these starts every bucket full again.
_LIMIT_FIELDS: Final = frozenset(
    {"rate_limit_per_minute", "rate_limit_burst", "events_rate_limit_per_minute"}
)

# Past this many buckets, full ones are dropped: a full bucket is what a new one would be, so
# this bounds memory against many distinct keys without changing any answer.
_MAX_IDLE_BUCKETS: Final = 1024

_SERVER_ERRORS: Final[dict[int, str]] = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _error_response(error: SimulatedError) -> Response:
    return JSONResponse(error.envelope(), error.status)


def _server_error(status: int, fault: FaultKind) -> Response:
    """A 5xx in PagerDuty's envelope, code 2000; ``errors`` names the simulated fault."""
    return _error_response(
        SimulatedError(
            status, _SERVER_ERRORS[status], CODE_INTERNAL_ERROR, [f"Simulated fault: {fault}"]
        )
    )


def _rate_limited_response(settings: FaultSettings, per_minute: int, wait_s: float) -> Response:
    """429 for a call that found its bucket empty; ``wait_s``: seconds until a token is back.

    - ``rate_limit_headers``: ``ratelimit-limit`` (the per-minute figure),
      ``ratelimit-remaining: 0`` and ``ratelimit-reset`` (whole seconds until a token is back,
      at least 1).
    - ``rate_limit_retry_after``: ``Retry-After`` with the same seconds. PagerDuty does not
      document it (docs/pagerduty.md), so it is off by default.
    - With either, the body is ``{"error": {"message": "Rate Limit Exceeded", "code": 2020}}``.
      With neither, no header and an empty body: docs/pagerduty.md says a 429 can come that way.
    """
    if not settings.rate_limit_headers and not settings.rate_limit_retry_after:
        return Response(status_code=429)
    # Rounded to the millisecond first, so that float noise never turns 1.0 s into 2.
    reset_s = str(max(1, math.ceil(round(wait_s, 3))))
    headers: dict[str, str] = {}
    if settings.rate_limit_headers:
        headers["ratelimit-limit"] = str(per_minute)
        headers["ratelimit-remaining"] = "0"
        headers["ratelimit-reset"] = reset_s
    if settings.rate_limit_retry_after:
        headers["retry-after"] = reset_s
    body = {"error": {"message": "Rate Limit Exceeded", "code": CODE_RATE_LIMITED}}
    return JSONResponse(body, 429, headers=headers)


async def _until_client_gone(request: Request) -> None:
    """Return once the client has disconnected. The body is read first, so that the next ASGI
    message can only be ``http.disconnect`` (servers send it when the connection closes)."""
    await request.body()
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _hang(request: Request, seconds: float) -> Response:
    """Answer nothing until the client gives up (499, which it never reads) or ``seconds`` pass
    (504 / 2016). Only this call waits: other requests and the control API are served."""
    try:
        await asyncio.wait_for(_until_client_gone(request), timeout=seconds)
    except TimeoutError:
        return _error_response(
            SimulatedError(
                504,
                "Request Took Too Long",
                CODE_TOOK_TOO_LONG,
                [f"Simulated fault: hung for {seconds:g} s"],
            )
        )
    return Response(status_code=499)


class ConfigurableFaults(FaultPlan):
    """The fault plan driven by :class:`FaultSettings`, changeable while the app runs.

    The app's control API calls :meth:`update` and :meth:`clear`; tests holding the plan may call
    them directly, from any thread. Each injected fault is counted in the simulator's state
    (``counts.faults``). API keys and routing keys are only used to pick a rate-limit bucket:
    none is shown.
    """

    def __init__(
        self,
        settings: FaultSettings | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``monotonic``: the clock of the rate-limit buckets, in seconds (tests pass a fake)."""
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._settings = FaultSettings()
        self._random = random.Random()
        self._buckets: dict[tuple[str, str | None], _TokenBucket] = {}
        self.replace(settings if settings is not None else FaultSettings())

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def replace(self, settings: FaultSettings) -> FaultSettings:
        """Use exactly ``settings``: random choices re-seeded, every rate-limit bucket full."""
        with self._lock:
            self._settings = settings
            self._random = random.Random(settings.seed)
            self._buckets.clear()
        return settings

    def update(self, changes: Mapping[str, object]) -> FaultSettings:
        """Merge ``changes`` into the settings (all or nothing) and return the result.

        Giving ``seed`` re-seeds the random choices; giving ``rate_limit_per_minute``,
        ``rate_limit_burst`` or ``events_rate_limit_per_minute`` (even unchanged) starts every
        bucket full again.
        """
        with self._lock:
            settings = self._settings.merged(changes)
            self._settings = settings
            if "seed" in changes:
                self._random = random.Random(settings.seed)
            if changes.keys() & _LIMIT_FIELDS:
                self._buckets.clear()
        return settings

    def clear(self) -> FaultSettings:
        """All faults off (the default settings)."""
        return self.replace(FaultSettings())

    async def before(self, call: PagerDutyCall) -> Response | None:
        # One snapshot per call: a change made while this call waits applies to the next call.
        settings = self._settings
        simulator = call.simulator
        if call.token is not None and call.token in settings.unauthorized_tokens:
            simulator.record_fault("unauthorized")
            return _error_response(invalid_credentials())
        if settings.down:
            simulator.record_fault("down")
            return _server_error(503, "down")
        limit = settings.limit_for(call.api)
        if limit is not None:
            wait_s = self._take_token(call.credential, limit)
            if wait_s is not None:
                simulator.record_fault("rate_limited")
                return _rate_limited_response(settings, limit[0], wait_s)
        if settings.hang:
            simulator.record_fault("hung")
            return await _hang(call.request, settings.hang_seconds)
        if settings.latency_ms:
            await asyncio.sleep(settings.latency_ms / 1000)
        if settings.flaky and self._happens(settings.flaky):
            simulator.record_fault("flaky")
            return _server_error(self._choose_server_error(), "flaky")
        return None

    async def after(self, call: PagerDutyCall, response: Response) -> Response:
        settings = self._settings
        if settings.lost and 200 <= response.status_code < 300 and self._happens(settings.lost):
            call.simulator.record_fault("lost")
            return _server_error(502, "lost")
        limited = settings.rate_limit_per_minute is not None and settings.rate_limit_headers
        if call.api == "rest" and limited:
            response.headers.update(self._budget_headers(call.credential, settings))
        return response

    def _budget_headers(
        self, credential: tuple[str, str | None], settings: FaultSettings
    ) -> dict[str, str]:
        """docs/pagerduty.md: every REST answer carries ``ratelimit-limit`` (per minute),
        ``ratelimit-remaining`` (whole tokens left) and ``ratelimit-reset`` (whole seconds until
        the bucket is full again, the token bucket's "window")."""
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get(credential)
            remaining, full_in = (
                bucket.left(now)
                if bucket is not None
                else (float(cast(int, settings.rate_limit_capacity)), 0.0)
            )
        return {
            "ratelimit-limit": str(settings.rate_limit_per_minute),
            "ratelimit-remaining": str(math.floor(remaining)),
            "ratelimit-reset": str(math.ceil(round(full_in, 3))),
        }

    def _happens(self, fraction: float) -> bool:
        with self._lock:
            return self._random.random() < fraction

    def _choose_server_error(self) -> int:
        with self._lock:
            return self._random.choice(tuple(_SERVER_ERRORS))

    def _take_token(
        self, credential: tuple[str, str | None], limit: tuple[int, int]
    ) -> float | None:
        """None if ``credential``'s bucket had a token (now taken), else seconds until it will.
        ``limit``: (calls a minute, capacity), :meth:`FaultSettings.limit_for`."""
        per_minute, capacity = limit
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get(credential)
            if bucket is None:
                if len(self._buckets) >= _MAX_IDLE_BUCKETS:
                    self._buckets = {
                        key: old for key, old in self._buckets.items() if not old.is_full(now)
                    }
                bucket = _TokenBucket(capacity, per_minute / 60, capacity, now)
                self._buckets[credential] = bucket
            return bucket.take(now)
