"""The faults the simulator can inject, and :class:`FaultSettings`, the validated description
of which ones are on. :mod:`worker.simulator.fault_plan` injects them into calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

# The faults :class:`ConfigurableFaults` injects, as counted in ``GET /_simulator/state``.
FaultKind = Literal["down", "flaky", "lost", "rate_limited", "unauthorized", "hung"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "down",
    "flaky",
    "lost",
    "rate_limited",
    "unauthorized",
    "hung",
)


class FaultSettingsError(ValueError):
    """A fault setting that does not exist or has a bad value; ``field_name`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field_name = field_name
        super().__init__(message)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise FaultSettingsError(name, f"{name} must be true or false; got {value!r}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_fraction(name: str, value: object) -> float:
    if not _is_number(value) or not 0 <= cast(float, value) <= 1:
        raise FaultSettingsError(name, f"{name} must be a number from 0 to 1; got {value!r}")
    return float(cast(float, value))


def _check_int(name: str, value: object, *, minimum: int | None, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
    ):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise FaultSettingsError(
            name, f"{name} must be {wanted}{' or null' if optional else ''}; got {value!r}"
        )
    return value


def _check_seconds(name: str, value: object) -> float:
    if not _is_number(value) or not 0 < cast(float, value) < math.inf:
        raise FaultSettingsError(name, f"{name} must be a number of seconds > 0; got {value!r}")
    return float(cast(float, value))


def _check_tokens(name: str, value: object) -> tuple[str, ...]:
    # A str is a sequence too: refuse it rather than treat "abc" as the tokens a, b and c.
    if isinstance(value, list | tuple) and all(isinstance(t, str) and t for t in value):
        return tuple(cast("list[str] | tuple[str, ...]", value))
    raise FaultSettingsError(name, f"{name} must be a list of non-empty strings; got {value!r}")


# One check per FaultSettings field: it validates a value (from Python or from JSON, where a
# bool is never an int and an int is never a bool) and returns it in the field's own type.
_FIELD_CHECKS: Final[dict[str, Callable[[str, object], object]]] = {
    "down": _check_bool,
    "flaky": _check_fraction,
    "lost": _check_fraction,
    "latency_ms": lambda name, value: _check_int(name, value, minimum=0, optional=False),
    "hang": _check_bool,
    "hang_seconds": _check_seconds,
    "rate_limit_per_minute": lambda name, value: _check_int(name, value, minimum=1, optional=True),
    "rate_limit_burst": lambda name, value: _check_int(name, value, minimum=1, optional=True),
    "events_rate_limit_per_minute": lambda name, value: _check_int(
        name, value, minimum=1, optional=True
    ),
    "rate_limit_headers": _check_bool,
    "rate_limit_retry_after": _check_bool,
    "unauthorized_tokens": _check_tokens,
    "seed": lambda name, value: _check_int(name, value, minimum=None, optional=True),
}


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """The faults :class:`ConfigurableFaults` injects; every field is optional and they combine.

    Each PagerDuty call is checked in this order, and the first fault that applies answers it
    without acting (only ``lost`` acts first):

    1. ``unauthorized_tokens`` — a REST call with one of these API keys → 401 / 2006.
    2. ``down`` — every call → 503 / 2000.
    3. ``rate_limit_per_minute`` — a token bucket per credential (:attr:`PagerDutyCall.credential`:
       the API key of a REST call, the routing key of an event; calls without one share a
       bucket per API): ``rate_limit_burst`` tokens at most (default: the per-minute figure / 6,
       rounded up, i.e. 10 s worth), refilled continuously at ``rate_limit_per_minute / 60`` per
       second; a call finding no token → 429 (see ``fault_plan._rate_limited_response`` for
       headers and body), and is not acted on: "the event was NOT taken". Refused calls take no
       token. Every other REST answer carries ``ratelimit-limit``, ``-remaining`` and ``-reset``
       (the bucket's state when it answers), as PagerDuty's do. ``events_rate_limit_per_minute``,
       if set, is the Events API's own figure per routing key (PagerDuty: about 120 a minute per
       integration key, against 960 per REST API key), with a bucket of a sixth of it.
    4. ``hang`` — the call is not answered until the client disconnects (then nothing is sent;
       the call is counted with status 499, nginx's "client closed request") or until
       ``hang_seconds`` (seconds) have passed, then 504 / 2016.
    5. ``latency_ms`` — milliseconds added to every call that got this far.
    6. ``flaky`` — that fraction of calls (0..1) → 500, 502 or 503 / 2000, at random.
    7. the simulator acts (creates, updates, lists, applies an event).
    8. ``lost`` — that fraction (0..1) of the calls that succeeded (2xx, an event's 202
       included) → 502 / 2000 instead: PagerDuty did the work, the client never hears of it.

    ``seed`` seeds the random choices of ``flaky`` and ``lost`` (None: unpredictable).
    Values are validated on construction; a bad one raises :class:`FaultSettingsError`.
    """

    down: bool = False
    flaky: float = 0.0
    lost: float = 0.0
    latency_ms: int = 0
    hang: bool = False
    hang_seconds: float = 300.0
    rate_limit_per_minute: int | None = None
    rate_limit_burst: int | None = None
    events_rate_limit_per_minute: int | None = None
    rate_limit_headers: bool = True
    rate_limit_retry_after: bool = False
    unauthorized_tokens: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, check in _FIELD_CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    @property
    def rate_limit_capacity(self) -> int | None:
        """Tokens per bucket: ``rate_limit_burst``, else ceil(per minute / 6); None if no limit."""
        if self.rate_limit_per_minute is None:
            return None
        return self.rate_limit_burst or math.ceil(self.rate_limit_per_minute / 6)

    def limit_for(self, api: Literal["rest", "events"]) -> tuple[int, int] | None:
        """(calls a minute, bucket capacity) for one API's credentials, or None: no limit.

        The Events API takes ``events_rate_limit_per_minute`` (a bucket of a sixth of it) when
        it is set, else the shared figure."""
        if api == "events" and self.events_rate_limit_per_minute is not None:
            per_minute = self.events_rate_limit_per_minute
            return per_minute, math.ceil(per_minute / 6)
        capacity = self.rate_limit_capacity
        if self.rate_limit_per_minute is None or capacity is None:
            return None
        return self.rate_limit_per_minute, capacity

    def merged(self, changes: Mapping[str, object]) -> FaultSettings:
        """These settings with ``changes`` applied (JSON values are fine: lists, ints for
        floats). An unknown name or a bad value raises :class:`FaultSettingsError`."""
        for name in changes:
            if name not in _FIELD_CHECKS:
                raise FaultSettingsError(
                    name,
                    f"unknown fault setting {name!r}; known: {', '.join(_FIELD_CHECKS)}",
                )
        return dataclasses.replace(self, **cast(dict[str, Any], changes))

    def to_json(self) -> dict[str, Any]:
        """Every field, as ``GET /_simulator/faults`` shows it."""
        settings = {name: getattr(self, name) for name in _FIELD_CHECKS}
        settings["unauthorized_tokens"] = list(self.unauthorized_tokens)
        return settings

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as JSON (e.g. for a start-up message)."""
        defaults = FaultSettings().to_json()
        return {name: value for name, value in self.to_json().items() if value != defaults[name]}
