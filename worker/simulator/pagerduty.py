"""A PagerDuty simulator: the subset of the REST API v2 that the bridge uses, and the Events API
v2 (``POST /v2/enqueue``), over real HTTP.

Used by integration tests, benchmarks and ``pagerbridge run --simulate``; started on its own with
``pagerbridge simulate --port N`` (which calls :func:`serve`).

Layers, top to bottom:

- :class:`SimulatedPagerDuty` — in-memory incidents and PagerDuty's rules, no HTTP. Its methods
  take decoded JSON and return plain data, or raise :class:`SimulatedError`, which carries the
  HTTP status and PagerDuty's error envelope. A ``threading.Lock`` guards the state, so tests may
  inspect it from their own thread while uvicorn serves requests. It also keeps the Events API's
  alerts, which live apart from the incidents (the simulator does not turn alerts into
  incidents): :meth:`SimulatedPagerDuty.enqueue_event` applies one event or raises
  :class:`InvalidEventError`, the Events API's 400.
- :func:`create_app` — a plain Starlette app (no FastAPI: fewer layers per request, and the
  benchmarks push thousands of requests per second through it). It checks the headers PagerDuty
  checks, decodes JSON and translates :class:`SimulatedError` into PagerDuty's envelope
  ``{"error": {"message", "code", "errors"}}``. Every PagerDuty call passes through a
  :class:`FaultPlan`, the extension point for fault injection. :class:`ConfigurableFaults`, the
  plan every app gets unless another is passed, injects the faults a :class:`FaultSettings`
  describes: down, flaky, lost responses, latency, hangs, per-credential rate limits (the API
  token for REST, the routing key for Events), 401 per token. ``POST /v2/enqueue`` goes through
  the same plan as the REST routes.
- A control API under ``/_simulator`` (not PagerDuty's): ``GET /_simulator/state``,
  ``GET /_simulator/counts`` (the counters alone, cheap to poll), ``POST /_simulator/reset``,
  ``GET /_simulator/health``, and ``GET``/``POST /_simulator/faults`` and
  ``POST /_simulator/faults/clear`` to read and change the faults at run time.
  :class:`SimulatorControl` is its typed client.

PagerDuty's behaviour comes from ``docs/pagerduty.md``. Where PagerDuty documents
nothing, the docstring at that point says which choice the simulator made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import string
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Protocol, cast

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.simulator.webhooks import API_AGENT, SubscriptionError, WebhookHub, event_type_of

__all__ = [
    "DUPLICATE_INCIDENT_KEY_ERROR",
    "EVENTS_ROUTE",
    "EVENT_ACTIONS",
    "EVENT_SEVERITIES",
    "FAULT_KINDS",
    "INVALID_ROUTING_KEY_ERROR",
    "MAX_EVENT_BYTES",
    "PAGERDUTY_ACCEPT",
    "ConfigurableFaults",
    "EventAction",
    "EventOutcome",
    "FaultKind",
    "FaultPlan",
    "FaultSettings",
    "FaultSettingsError",
    "IncidentStatus",
    "InvalidEventError",
    "PagerDutyCall",
    "SimulatedError",
    "SimulatedPagerDuty",
    "SimulatorControl",
    "SimulatorControlError",
    "StatusChange",
    "create_app",
    "event_outcome",
    "next_status",
    "serve",
]

IncidentStatus = Literal["triggered", "acknowledged", "resolved"]
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

# The media type PagerDuty's REST API v2 expects in Accept.
PAGERDUTY_ACCEPT: Final = "application/vnd.pagerduty+json;version=2"
# The errors[] text PagerDuty sends when a create repeats the incident_key of an open incident on
# the same service (seen in the wild; docs/pagerduty.md). The bridge matches on this text plus 400.
DUPLICATE_INCIDENT_KEY_ERROR: Final = (
    "Open incident with matching dedup key already exists on this service"
)

HTML_URL_BASE: Final = "https://simulated.pagerduty.local"
# `self` links point at a made-up host on purpose: nothing should ever follow them to the real API.
API_URL_BASE: Final = "https://api.simulated.pagerduty.local"

STATUSES: Final[tuple[IncidentStatus, ...]] = ("triggered", "acknowledged", "resolved")
OPEN_STATUSES: Final[frozenset[str]] = frozenset({"triggered", "acknowledged"})
# Statuses a client may ask for in an update; PagerDuty never lets a client set "triggered".
SETTABLE_STATUSES: Final[frozenset[str]] = frozenset({"acknowledged", "resolved"})

MAX_BULK_UPDATE: Final = 250  # PUT /incidents: more items → 413 (docs/pagerduty.md)
MAX_TITLE_CHARS: Final = 1024
DEFAULT_PAGE_LIMIT: Final = 25  # PagerDuty's default page size for classic pagination
MAX_PAGE_LIMIT: Final = 100

# PagerDuty error codes (docs/pagerduty.md, "Errors").
CODE_ALREADY_RESOLVED: Final = 1001
CODE_ALREADY_ACKNOWLEDGED: Final = 1002
CODE_INTERNAL_ERROR: Final = 2000
CODE_INVALID_INPUT: Final = 2001
CODE_INVALID_CREDENTIALS: Final = 2006
CODE_TOOK_TOO_LONG: Final = 2016
CODE_RATE_LIMITED: Final = 2020
CODE_NOT_FOUND: Final = 2100

# ``counts.calls_per_second`` in the state covers this many seconds, at most one entry each.
CALL_RATE_WINDOW_S: Final = 600

# ---- Events API v2 (docs/pagerduty.md; PagerDuty's "Send an Alert Event" page) ----
EventAction = Literal["trigger", "acknowledge", "resolve"]
EVENT_ACTIONS: Final[tuple[EventAction, ...]] = ("trigger", "acknowledge", "resolve")
EVENT_SEVERITIES: Final[tuple[str, ...]] = ("critical", "error", "warning", "info")
# The route of the Events API, as counted in ``counts.calls`` (no Authorization header: the
# credential is the body's routing_key).
EVENTS_ROUTE: Final = "/v2/enqueue"
MAX_EVENT_BYTES: Final = 512 * 1024  # "Events API payloads are limited to 512 KB"
MAX_DEDUP_KEY_CHARS: Final = 255
MAX_SUMMARY_CHARS: Final = 1024
# The errors[] text for a routing key outside the accepted set (when one is configured).
# Unconfirmed: PagerDuty documents no answer for an unknown routing key; the simulator answers
# it like any other invalid event (400), the only refusal the Events API documents.
INVALID_ROUTING_KEY_ERROR: Final = "Invalid routing key"

_ID_ALPHABET: Final = string.ascii_uppercase + string.digits
_UNMATCHED_ROUTE: Final = "<unmatched>"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class SimulatedError(Exception):
    """A refusal, in PagerDuty's terms: HTTP status plus the body of PagerDuty's error envelope."""

    def __init__(self, status: int, message: str, code: int, errors: Iterable[str] = ()) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__(f"HTTP {status}, PagerDuty code {code}: {message} {list(self.errors)}")

    def envelope(self) -> dict[str, Any]:
        """Return PagerDuty's error body: ``{"error": {"message", "code", "errors"}}``."""
        return {"error": {"message": self.message, "code": self.code, "errors": list(self.errors)}}


def _invalid_input(*errors: str) -> SimulatedError:
    """400 / 2001, the error PagerDuty gives for any malformed or incomplete request."""
    return SimulatedError(400, "Invalid Input Provided", CODE_INVALID_INPUT, errors)


def _not_found(incident_id: str) -> SimulatedError:
    return SimulatedError(404, "Not Found", CODE_NOT_FOUND, [f"Incident {incident_id} not found"])


def _invalid_credentials() -> SimulatedError:
    """401 / 2006: a missing or refused API key."""
    return SimulatedError(
        401,
        "Invalid Credentials",
        CODE_INVALID_CREDENTIALS,
        ["Send 'Authorization: Token token=<api key>' with a valid API key"],
    )


class InvalidEventError(Exception):
    """The Events API's refusal of an event: always 400, with its own body (not the REST
    envelope): ``{"status": "invalid event", "message": "Event object is invalid", "errors"}``.
    ``errors`` says what is wrong, one entry per problem found."""

    status: Final = 400

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__(f"invalid event: {list(self.errors)}")

    def body(self) -> dict[str, Any]:
        return {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": list(self.errors),
        }


# --------------------------------------------------------------------------------------------
# Pure rules
# --------------------------------------------------------------------------------------------


def next_status(current: IncidentStatus, wanted: str) -> tuple[IncidentStatus, bool]:
    """Apply one status update; return ``(new status, reopened?)`` or raise :class:`SimulatedError`.

    ======================  =============  ===============================================
    current → wanted        result         source
    ======================  =============  ===============================================
    triggered → ack         acknowledged
    any open → resolved     resolved
    resolved → ack          acknowledged,  PagerDuty changelog 2025-09-18: acknowledging a
                            reopened       resolved incident reopens it
    acknowledged → ack      400 / 1002     "Incident Already Acknowledged"
    resolved → resolved     400 / 1001     "Incident Already Resolved"
    anything else           400 / 2001     only acknowledged and resolved can be set
    ======================  =============  ===============================================

    PagerDuty does not document what resolving a resolved incident returns. The simulator refuses
    it with 1001, the documented code whose name matches, so that the bridge's "already in the
    wanted state counts as success" path is exercised; the real API may well answer 200.
    """
    if wanted not in SETTABLE_STATUSES:
        raise _invalid_input(f"Status must be one of acknowledged, resolved; got {wanted!r}")
    if wanted == "resolved":
        if current == "resolved":
            raise SimulatedError(400, "Incident Already Resolved", CODE_ALREADY_RESOLVED)
        return "resolved", False
    if current == "acknowledged":
        raise SimulatedError(400, "Incident Already Acknowledged", CODE_ALREADY_ACKNOWLEDGED)
    return "acknowledged", current == "resolved"


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second, as PagerDuty writes its timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One entry of an incident's status history; the first has ``from_status`` None."""

    at: str
    from_status: IncidentStatus | None
    to_status: IncidentStatus
    reopened: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.from_status,
            "to": self.to_status,
            "reopened": self.reopened,
        }


@dataclass(slots=True)
class _Incident:
    """The simulator's record of one incident. Mutated only under the simulator's lock."""

    id: str
    incident_number: int
    title: str
    service_id: str
    urgency: str
    incident_key: str | None
    details: str | None
    created_at: str
    # Milliseconds since the epoch: PagerDuty's timestamps are to the second, too coarse for a
    # benchmark's latency from webhook to incident.
    created_at_ms: float = 0.0
    status: IncidentStatus = "triggered"
    history: list[StatusChange] = field(default_factory=list)
    resolved_at_ms: float | None = None  # as created_at_ms; None while open

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def html_url(self) -> str:
        return f"{HTML_URL_BASE}/incidents/{self.id}"

    def to_pagerduty(self) -> dict[str, Any]:
        """The incident as PagerDuty's REST API shows it (the fields the bridge may read).

        PagerDuty generates an ``incident_key`` when a create carries none; the simulator leaves
        it null, since no caller should depend on a generated key.
        """
        last_change = self.history[-1].at
        return {
            "id": self.id,
            "type": "incident",
            "summary": f"[#{self.incident_number}] {self.title}",
            "self": f"{API_URL_BASE}/incidents/{self.id}",
            "html_url": self.html_url,
            "incident_number": self.incident_number,
            "title": self.title,
            "description": self.title,
            "status": self.status,
            "urgency": self.urgency,
            "incident_key": self.incident_key,
            "created_at": self.created_at,
            "updated_at": last_change,
            "last_status_change_at": last_change,
            "resolved_at": last_change if self.status == "resolved" else None,
            "service": {
                "id": self.service_id,
                "type": "service_reference",
                "summary": self.service_id,
                "self": f"{API_URL_BASE}/services/{self.service_id}",
                "html_url": f"{HTML_URL_BASE}/service-directory/{self.service_id}",
            },
            "assignments": [],
            "acknowledgements": [],
        }

    def to_state(self) -> dict[str, Any]:
        """The incident as the control API shows it: flat, with its status history."""
        return {
            "id": self.id,
            "incident_number": self.incident_number,
            "incident_key": self.incident_key,
            "status": self.status,
            "service_id": self.service_id,
            "title": self.title,
            "urgency": self.urgency,
            "details": self.details,
            "html_url": self.html_url,
            "created_at": self.created_at,
            "created_at_ms": self.created_at_ms,
            "resolved_at_ms": self.resolved_at_ms,
            "status_history": [change.to_json() for change in self.history],
        }


@dataclass(frozen=True, slots=True)
class _NewIncident:
    """A validated create request."""

    title: str
    service_id: str
    urgency: str
    incident_key: str | None
    details: str | None


@dataclass(slots=True)
class _Alert:
    """The simulator's record of one Events API alert. Mutated only under the simulator's lock.

    ``details`` are those of the trigger that opened it: PagerDuty logs a joining trigger on the
    alert without documenting any change to it, so the simulator only counts the joins.
    """

    alert_number: int
    routing_key: str
    dedup_key: str
    details: _AlertDetails
    created_at: str
    created_at_ms: float = 0.0  # as for incidents
    status: IncidentStatus = "triggered"
    triggers_joined: int = 0
    acknowledged_at: str | None = None
    resolved_at: str | None = None
    history: list[StatusChange] = field(default_factory=list)
    resolved_at_ms: float | None = None  # as created_at_ms

    def move_to(self, status: IncidentStatus, at: str, at_ms: float = 0.0) -> None:
        self.history.append(StatusChange(at, self.status, status))
        self.status = status
        if status == "acknowledged":
            self.acknowledged_at = at
        elif status == "resolved":
            self.resolved_at = at
            self.resolved_at_ms = at_ms

    def to_state(self) -> dict[str, Any]:
        """The alert as the control API shows it: flat, with its status history."""
        return {
            "alert_number": self.alert_number,
            "routing_key": self.routing_key,
            "dedup_key": self.dedup_key,
            "status": self.status,
            **self.details.to_json(),
            "triggers_joined": self.triggers_joined,
            "created_at": self.created_at,
            "created_at_ms": self.created_at_ms,
            "acknowledged_at": self.acknowledged_at,
            "resolved_at": self.resolved_at,
            "resolved_at_ms": self.resolved_at_ms,
            "status_history": [change.to_json() for change in self.history],
        }


class SimulatedPagerDuty:
    """PagerDuty's incidents and rules, in memory, without HTTP. Thread-safe.

    Any service id is taken to exist: the simulator keeps no service registry. The Events API's
    alerts are kept apart: an event never creates, changes or shows an incident.
    """

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow, seed: int | None = None) -> None:
        """``clock`` gives the current time (an aware datetime); ``seed`` makes ids repeatable."""
        self._clock = clock
        # Ids are random (like PagerDuty's) rather than derived from the incident number, so a
        # bridge cannot come to rely on a pattern. The generator is not re-seeded by reset(), so
        # an id held from before a reset is unlikely to name a different incident afterwards.
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._incidents: dict[str, _Incident] = {}
        self._by_key: dict[str, list[_Incident]] = {}
        # (service id, incident_key) → ids of OPEN incidents. A set, not a single id: reopening
        # an old incident can leave two open incidents with one key on one service.
        self._open_by_service_key: dict[tuple[str, str], set[str]] = {}
        self._next_number = 1
        self._calls: Counter[tuple[str, str, int]] = Counter()
        self._creates = 0
        self._duplicate_creates_refused = 0
        self._reopened = 0
        self._listings_without_incident_key = 0
        self._faults: Counter[FaultKind] = Counter()
        # REST calls being answered now, and the most at once: how many a client has in flight
        self._in_flight = 0
        self._most_in_flight = 0
        # [unix second, calls in it], oldest first; seconds without calls have no entry, so the
        # window never needs more than one entry per second of it.
        self._calls_per_second: deque[list[int]] = deque(maxlen=CALL_RATE_WINDOW_S)
        # Events API: every alert in creation order (resolved ones stay, as history), and the
        # open one per (routing_key, dedup_key). Events never reopen an alert, so one is enough.
        self._alerts: list[_Alert] = []
        self._open_alerts: dict[tuple[str, str], _Alert] = {}
        self._events_received: Counter[EventAction] = Counter()
        self._triggers_joined = 0
        self._events_dropped: Counter[EventAction] = Counter()
        # v3 webhook subscriptions, and a signed delivery for every incident status change.
        self.webhooks = WebhookHub()

    def reset(self) -> None:
        """Forget every incident, alert and counter (fault counters and call rate included);
        incident and alert numbers start again at 1. Fault settings live in the app's fault
        plan, not here."""
        with self._lock:
            self._incidents.clear()
            self._by_key.clear()
            self._open_by_service_key.clear()
            self._next_number = 1
            self._calls.clear()
            self._creates = 0
            self._duplicate_creates_refused = 0
            self._reopened = 0
            self._listings_without_incident_key = 0
            self._faults.clear()
            self._most_in_flight = self._in_flight
            self._calls_per_second.clear()
            self._alerts.clear()
            self._open_alerts.clear()
            self._events_received.clear()
            self._triggers_joined = 0
            self._events_dropped.clear()
            self.webhooks.clear()

    # ---- PagerDuty operations --------------------------------------------------------------

    def create_incident(self, body: object) -> dict[str, Any]:
        """``POST /incidents``: validate ``{"incident": {...}}``, create, return the incident.

        Refuses (400, code 2001, :data:`DUPLICATE_INCIDENT_KEY_ERROR`) a create whose
        ``incident_key`` matches an open incident on the same service, and counts the refusal.
        An empty ``incident_key`` is treated as none (no de-duplication).
        """
        new = _parse_new_incident(body)
        now = self._clock()
        with self._lock:
            if new.incident_key is not None and self._open_by_service_key.get(
                (new.service_id, new.incident_key)
            ):
                self._duplicate_creates_refused += 1
                raise _invalid_input(DUPLICATE_INCIDENT_KEY_ERROR)
            incident = _Incident(
                id=self._new_id(),
                incident_number=self._next_number,
                title=new.title,
                service_id=new.service_id,
                urgency=new.urgency,
                incident_key=new.incident_key,
                details=new.details,
                created_at=_timestamp(now),
                created_at_ms=now.timestamp() * 1000,
            )
            incident.history.append(StatusChange(incident.created_at, None, "triggered"))
            self._next_number += 1
            self._creates += 1
            self._incidents[incident.id] = incident
            if incident.incident_key is not None:
                self._by_key.setdefault(incident.incident_key, []).append(incident)
                self._open_by_service_key.setdefault(
                    (incident.service_id, incident.incident_key), set()
                ).add(incident.id)
            shown = incident.to_pagerduty()
            self.webhooks.publish("incident.triggered", shown, API_AGENT)
            return shown

    def update_incident(self, incident_id: str, body: object) -> dict[str, Any]:
        """``PUT /incidents/{id}``: ``{"incident": {"type", "status"}}`` → the updated incident."""
        if not isinstance(body, dict) or not isinstance(body.get("incident"), dict):
            raise _invalid_input("Body must be an object with an 'incident' object")
        status = _parse_status_update(body["incident"], "incident")
        return self._apply_status_updates([(incident_id, status)])[0]

    def update_incidents(self, body: object) -> list[dict[str, Any]]:
        """``PUT /incidents`` (bulk): ``{"incidents": [{"id", "type", "status"}, ...]}``.

        More than :data:`MAX_BULK_UPDATE` items → 413. PagerDuty does not document what happens
        when one item of a bulk update fails; the simulator is all-or-nothing: it checks every
        item (in order, so an id listed twice sees its first update) and changes nothing if any
        fails.
        """
        if not isinstance(body, dict) or not isinstance(body.get("incidents"), list):
            raise _invalid_input("Body must be an object with an 'incidents' list")
        items: list[object] = body["incidents"]
        if len(items) > MAX_BULK_UPDATE:
            raise SimulatedError(
                413,
                "Request Entity Too Large",
                CODE_INVALID_INPUT,
                [f"At most {MAX_BULK_UPDATE} incidents per request; got {len(items)}"],
            )
        if not items:
            raise _invalid_input("'incidents' must not be empty")
        updates: list[tuple[str, str]] = []
        for index, item in enumerate(items):
            where = f"incidents[{index}]"
            if not isinstance(item, dict):
                raise _invalid_input(f"{where} must be an object")
            incident_id = item.get("id")
            if not isinstance(incident_id, str) or not incident_id:
                raise _invalid_input(f"{where}.id is required")
            updates.append((incident_id, _parse_status_update(item, where)))
        return self._apply_status_updates(updates)

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """``GET /incidents/{id}``: the incident, or 404 / 2100."""
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None:
                raise _not_found(incident_id)
            return incident.to_pagerduty()

    def list_incidents(
        self,
        *,
        incident_key: str | None = None,
        statuses: Sequence[str] = (),
        date_range: str | None = None,
        service_ids: Sequence[str] = (),
        limit: int = DEFAULT_PAGE_LIMIT,
        offset: int = 0,
        total: bool = False,
    ) -> dict[str, Any]:
        """``GET /incidents``: one page ``{"incidents", "limit", "offset", "more", "total"}``.

        - A missing or empty ``incident_key`` lists every incident, as PagerDuty does; such
          calls are counted (``listings_without_incident_key``) because the bridge must never
          make them.
        - Without ``statuses`` and without ``date_range="all"``, only open incidents are listed.
          This approximates PagerDuty's default window of the last 30 days: the bridge's
          look-ups are of recent incidents, and old resolved ones are what that window hides.
          With ``statuses``, exactly those are listed, whatever the date range.
        - ``limit`` above 100 is lowered to 100; PagerDuty caps classic pagination there.
        - Incidents come in creation order; ``total`` is null unless asked for, as in PagerDuty.
        """
        for status in statuses:
            if status not in STATUSES:
                raise _invalid_input(f"statuses[] must be among {', '.join(STATUSES)}")
        if date_range is not None and date_range != "all":
            raise _invalid_input("date_range may only be 'all'")
        if limit < 1 or offset < 0:
            raise _invalid_input("limit must be >= 1 and offset >= 0")
        limit = min(limit, MAX_PAGE_LIMIT)
        wanted: frozenset[str]
        if statuses:
            wanted = frozenset(statuses)
        elif date_range == "all":
            wanted = frozenset(STATUSES)
        else:
            wanted = OPEN_STATUSES
        services = frozenset(service_ids)
        with self._lock:
            candidates: Iterable[_Incident]
            if incident_key:
                candidates = self._by_key.get(incident_key, ())
            else:
                self._listings_without_incident_key += 1
                candidates = self._incidents.values()
            matching = [
                incident
                for incident in candidates
                if incident.status in wanted and (not services or incident.service_id in services)
            ]
            page = [incident.to_pagerduty() for incident in matching[offset : offset + limit]]
        return {
            "incidents": page,
            "limit": limit,
            "offset": offset,
            "more": offset + len(page) < len(matching),
            "total": len(matching) if total else None,
        }

    def enqueue_event(
        self, body: object, *, routing_keys: Collection[str] | None = None
    ) -> dict[str, Any]:
        """``POST /v2/enqueue``: validate and apply one event; return the 202 body
        ``{"status": "success", "message": "Event processed", "dedup_key"}``, or raise
        :class:`InvalidEventError`.

        ``routing_keys``: the accepted routing keys; None accepts any. Alerts are keyed by
        (routing_key, dedup_key); :func:`event_outcome` says what an event does. A dropped event
        is answered 202 like any other, as PagerDuty does, and counted in ``dropped``. A trigger
        without a ``dedup_key`` gets a generated one (a UUID's hex; repeatable with ``seed``).
        """
        event = _parse_event(body, routing_keys)
        now = self._clock()
        at = _timestamp(now)
        with self._lock:
            self._events_received[event.action] += 1
            dedup_key = event.dedup_key if event.dedup_key is not None else self._new_dedup_key()
            key = (event.routing_key, dedup_key)
            alert = self._open_alerts.get(key)
            outcome = event_outcome(event.action, None if alert is None else alert.status)
            if outcome == "open":
                alert = _Alert(
                    alert_number=len(self._alerts) + 1,
                    routing_key=event.routing_key,
                    dedup_key=dedup_key,
                    details=cast(_AlertDetails, event.details),
                    created_at=at,
                    created_at_ms=now.timestamp() * 1000,
                )
                alert.history.append(StatusChange(at, None, "triggered"))
                self._alerts.append(alert)
                self._open_alerts[key] = alert
            elif outcome == "drop":
                self._events_dropped[event.action] += 1
            elif alert is not None:  # every other outcome is about the open alert
                if outcome == "join":
                    alert.triggers_joined += 1
                    self._triggers_joined += 1
                elif outcome == "acknowledge":
                    alert.move_to("acknowledged", at)
                elif outcome == "resolve":
                    alert.move_to("resolved", at, now.timestamp() * 1000)
                    del self._open_alerts[key]
        return {"status": "success", "message": "Event processed", "dedup_key": dedup_key}

    # ---- Bookkeeping and inspection --------------------------------------------------------

    def record_call(self, method: str, route: str, status: int) -> None:
        """Count one HTTP call by method, route template (``/incidents/{id}``) and status code,
        and in the per-second call rate (by the simulator's clock)."""
        second = int(self._clock().timestamp())
        with self._lock:
            self._calls[(method, route, status)] += 1
            if self._calls_per_second and self._calls_per_second[-1][0] == second:
                self._calls_per_second[-1][1] += 1
            else:
                self._calls_per_second.append([second, 1])

    def call_started(self) -> None:
        """A REST call came in: counted until :meth:`call_ended`, for ``most_in_flight``."""
        with self._lock:
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)

    def call_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def record_fault(self, kind: FaultKind) -> None:
        """Count one injected fault (the call itself is counted by :meth:`record_call`)."""
        with self._lock:
            self._faults[kind] += 1

    def state(self) -> dict[str, Any]:
        """A snapshot of every counter, incident and alert; the body of ``GET /_simulator/state``:
        ``{"counts": {...}, "incidents": [...], "events": {"counts": {...}, "alerts": [...]}}``.

        ``counts.faults`` counts injected faults by kind (:data:`FAULT_KINDS`).
        ``counts.most_in_flight`` is the most REST calls the simulator was answering at once
        (a call waiting out ``latency_ms`` is being answered).
        ``counts.calls_per_second`` is ``[{"second": unix seconds, "count": n}, ...]``, oldest
        first, for every call counted in ``counts.calls`` (faulted or not, unknown routes
        included) during the last :data:`CALL_RATE_WINDOW_S` seconds; seconds without calls are
        left out. ``events.counts`` is described at :meth:`counts`. No API key appears anywhere
        in the state; routing keys do, on the alerts they key.
        """
        with self._lock:
            return {
                "counts": self._counts(),
                "incidents": [incident.to_state() for incident in self._incidents.values()],
                "events": {
                    "counts": self._event_counts(),
                    "alerts": [alert.to_state() for alert in self._alerts],
                },
            }

    def counts(self) -> dict[str, Any]:
        """The counters alone, the body of ``GET /_simulator/counts``: the state's ``counts``
        plus ``"events"``, the state's ``events.counts``. No incident or alert is listed, so
        polling it costs little however many there are.

        The events counts: ``received`` (events taken, by action; invalid and fault-refused ones
        are not taken, see ``counts.calls`` and ``counts.faults``), ``alerts_opened``,
        ``triggers_joined``, ``dropped`` (by action) and ``alerts_by_status`` (resolved alerts
        stay, so ``alerts_opened`` is also the number of alerts held).
        """
        with self._lock:
            return {**self._counts(), "events": self._event_counts()}

    def call_count(
        self, method: str | None = None, route: str | None = None, status: int | None = None
    ) -> int:
        """Sum of recorded calls matching every given criterion (None matches anything)."""
        with self._lock:
            return sum(
                count
                for (m, r, s), count in self._calls.items()
                if (method is None or m == method)
                and (route is None or r == route)
                and (status is None or s == status)
            )

    # ---- Internals (call with the lock held where noted) -----------------------------------

    def _counts(self) -> dict[str, Any]:
        """The REST side's counters (see :meth:`state`). Lock held."""
        oldest_second = int(self._clock().timestamp()) - CALL_RATE_WINDOW_S
        by_status = dict.fromkeys(STATUSES, 0)
        for incident in self._incidents.values():
            by_status[incident.status] += 1
        return {
            "calls": [
                {"method": method, "route": route, "status": status, "count": count}
                for (method, route, status), count in sorted(self._calls.items())
            ],
            "creates": self._creates,
            "duplicate_creates_refused": self._duplicate_creates_refused,
            "reopened": self._reopened,
            "listings_without_incident_key": self._listings_without_incident_key,
            "incidents_by_status": by_status,
            "incidents_total": len(self._incidents),
            "faults": {kind: self._faults[kind] for kind in FAULT_KINDS},
            "most_in_flight": self._most_in_flight,
            "calls_per_second": [
                {"second": second, "count": count}
                for second, count in self._calls_per_second
                if second > oldest_second
            ],
        }

    def _event_counts(self) -> dict[str, Any]:
        """The Events API's counters (see :meth:`counts`). Lock held."""
        by_status = dict.fromkeys(STATUSES, 0)
        for alert in self._alerts:
            by_status[alert.status] += 1
        return {
            "received": {action: self._events_received[action] for action in EVENT_ACTIONS},
            "alerts_opened": len(self._alerts),
            "triggers_joined": self._triggers_joined,
            "dropped": {
                action: self._events_dropped[action] for action in ("acknowledge", "resolve")
            },
            "alerts_by_status": by_status,
        }

    def _new_dedup_key(self) -> str:
        """A generated dedup_key, as PagerDuty makes one: a UUID, here as 32 hex digits. Lock
        held (it shares the seeded generator of the ids)."""
        return uuid.UUID(int=self._random.getrandbits(128), version=4).hex

    def _new_id(self) -> str:
        """A fresh id, ``Q`` + 6 uppercase alphanumerics. Lock held."""
        while True:
            incident_id = "Q" + "".join(self._random.choices(_ID_ALPHABET, k=6))
            if incident_id not in self._incidents:
                return incident_id

    def respond(self, incident_id: str, action: str, responder: str) -> dict[str, Any]:
        """A person in PagerDuty's web UI: ``acknowledge``, ``unacknowledge``, ``resolve`` or
        ``reopen`` an incident. Webhooks name ``responder`` as the agent."""
        agent = {"id": "PSIMUSR", "type": "user_reference", "summary": responder}
        if action in ("acknowledge", "resolve"):
            wanted = "acknowledged" if action == "acknowledge" else "resolved"
            return self._apply_status_updates([(incident_id, wanted)], agent=agent)[0]
        if action not in ("unacknowledge", "reopen"):
            raise _invalid_input(
                f"action must be acknowledge, unacknowledge, resolve or reopen; got {action!r}"
            )
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None:
                raise _not_found(incident_id)
            allowed = "acknowledged" if action == "unacknowledge" else "resolved"
            if incident.status != allowed:
                raise _invalid_input(f"only a {allowed} incident can be {action}d")
            at = _timestamp(self._clock())
            reopened = action == "reopen"
            incident.history.append(StatusChange(at, incident.status, "triggered", reopened))
            incident.status = "triggered"
            if reopened:
                self._reopened += 1
                if incident.incident_key is not None:
                    self._open_by_service_key.setdefault(
                        (incident.service_id, incident.incident_key), set()
                    ).add(incident.id)
            shown = incident.to_pagerduty()
            event_type = "incident.reopened" if reopened else "incident.unacknowledged"
            self.webhooks.publish(event_type, shown, agent)
            return shown

    def _apply_status_updates(
        self, updates: Sequence[tuple[str, str]], agent: dict[str, Any] = API_AGENT
    ) -> list[dict[str, Any]]:
        """Check every ``(id, wanted status)`` in order, then apply them all, or none; a
        webhook names ``agent`` as who made each change."""
        with self._lock:
            # Pass 1: plan against tentative statuses, so a failure leaves no partial update.
            tentative: dict[str, IncidentStatus] = {}
            plan: list[tuple[_Incident, IncidentStatus, bool]] = []
            for incident_id, wanted in updates:
                incident = self._incidents.get(incident_id)
                if incident is None:
                    raise _not_found(incident_id)
                current = tentative.get(incident_id, incident.status)
                new_status, reopened = next_status(current, wanted)
                tentative[incident_id] = new_status
                plan.append((incident, new_status, reopened))
            # Pass 2: apply.
            moment = self._clock()
            at = _timestamp(moment)
            for incident, new_status, reopened in plan:
                was_open = incident.is_open
                event_type = event_type_of(incident.status, new_status, reopened=reopened)
                incident.history.append(StatusChange(at, incident.status, new_status, reopened))
                incident.status = new_status
                incident.resolved_at_ms = (
                    moment.timestamp() * 1000 if new_status == "resolved" else None
                )
                if reopened:
                    self._reopened += 1
                if incident.incident_key is not None and was_open != incident.is_open:
                    open_ids = self._open_by_service_key.setdefault(
                        (incident.service_id, incident.incident_key), set()
                    )
                    if incident.is_open:
                        open_ids.add(incident.id)
                    else:
                        open_ids.discard(incident.id)
                if event_type is not None:
                    self.webhooks.publish(event_type, incident.to_pagerduty(), agent)
            return [incident.to_pagerduty() for incident, _, _ in plan]


def _parse_new_incident(body: object) -> _NewIncident:
    """Validate a ``POST /incidents`` body; raise 400 / 2001 naming every problem found."""
    if not isinstance(body, dict) or not isinstance(body.get("incident"), dict):
        raise _invalid_input("Body must be an object with an 'incident' object")
    incident: dict[str, Any] = body["incident"]
    problems: list[str] = []
    if incident.get("type") != "incident":
        problems.append("incident.type must be 'incident'")
    title = incident.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append("incident.title is required")
    elif len(title) > MAX_TITLE_CHARS:
        problems.append(f"incident.title must be at most {MAX_TITLE_CHARS} characters")
    service = incident.get("service")
    service_id: object = service.get("id") if isinstance(service, dict) else None
    if not isinstance(service, dict) or not isinstance(service_id, str) or not service_id:
        problems.append("incident.service.id is required")
    elif service.get("type") != "service_reference":
        problems.append("incident.service.type must be 'service_reference'")
    incident_key = incident.get("incident_key")
    if incident_key is not None and not isinstance(incident_key, str):
        problems.append("incident.incident_key must be a string")
    urgency = incident.get("urgency", "high")
    if urgency not in ("high", "low"):
        problems.append("incident.urgency must be 'high' or 'low'")
    details: object = None
    incident_body = incident.get("body")
    if incident_body is not None:
        details = incident_body.get("details") if isinstance(incident_body, dict) else None
        if not isinstance(incident_body, dict) or incident_body.get("type") != "incident_body":
            problems.append("incident.body.type must be 'incident_body'")
        elif details is not None and not isinstance(details, str):
            problems.append("incident.body.details must be a string")
    if problems:
        raise _invalid_input(*problems)
    return _NewIncident(
        title=cast(str, title),
        service_id=cast(str, service_id),
        urgency=cast(str, urgency),
        incident_key=cast("str | None", incident_key) or None,
        details=cast("str | None", details),
    )


def _parse_status_update(item: Mapping[str, Any], where: str) -> str:
    """The wanted status of one update item. ``next_status`` judges whether it is allowed.

    PagerDuty also updates titles, urgencies, assignments and more this way; the simulator models
    status only, so an item without ``status`` is refused rather than silently ignored.
    """
    if item.get("type") not in ("incident_reference", "incident"):
        raise _invalid_input(f"{where}.type must be 'incident_reference'")
    status = item.get("status")
    if not isinstance(status, str):
        raise _invalid_input(f"{where}.status is required (the simulator only updates status)")
    return status


# --------------------------------------------------------------------------------------------
# Events API v2: pure rules
# --------------------------------------------------------------------------------------------

# What one event does to the alerts; see :func:`event_outcome`.
EventOutcome = Literal["open", "join", "acknowledge", "resolve", "unchanged", "drop"]


def event_outcome(action: EventAction, open_status: IncidentStatus | None) -> EventOutcome:
    """What an event does, given the status of the OPEN alert with its (routing_key, dedup_key),
    None if there is none (never opened, or resolved).

    ============================  ===========  ============================================
    action, open alert            outcome      source
    ============================  ===========  ============================================
    trigger, none                 open         a new alert (after a resolve too: alerts are
                                               never reopened by events)
    trigger, any                  join         "a trigger log entry is created on an
                                               existing alert"; its status does not change
    acknowledge, triggered        acknowledge
    acknowledge, acknowledged     unchanged    not documented: the alert is open, so the
                                               event is taken, but there is nothing to do
    resolve, any                  resolve
    acknowledge/resolve, none     drop         still answered 202 (docs/pagerduty.md)
    ============================  ===========  ============================================
    """
    if action == "trigger":
        return "open" if open_status is None else "join"
    if open_status is None:
        return "drop"
    if action == "resolve":
        return "resolve"
    return "acknowledge" if open_status == "triggered" else "unchanged"


@dataclass(frozen=True, slots=True)
class _AlertDetails:
    """What a validated trigger event says about its alert: the payload and the context."""

    summary: str
    source: str
    severity: str
    timestamp: str | None
    component: str | None
    group: str | None
    event_class: str | None  # payload.class
    custom_details: Any
    links: list[dict[str, Any]]
    images: list[dict[str, Any]]
    client: str | None
    client_url: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "source": self.source,
            "severity": self.severity,
            "timestamp": self.timestamp,
            "component": self.component,
            "group": self.group,
            "class": self.event_class,
            "custom_details": self.custom_details,
            "links": self.links,
            "images": self.images,
            "client": self.client,
            "client_url": self.client_url,
        }


@dataclass(frozen=True, slots=True)
class _Event:
    """A validated event. ``dedup_key`` is None only for a trigger that carried none (the
    simulator generates one); ``details`` is set for triggers only."""

    routing_key: str
    action: EventAction
    dedup_key: str | None
    details: _AlertDetails | None


def _decode_event(raw: bytes) -> object:
    """The JSON of a ``POST /v2/enqueue`` body; :class:`InvalidEventError` if it is too large or
    not JSON.

    Too large is a 400, not a 413: PagerDuty documents only 202, 400, 429 and 5xx for the
    Events API (docs/pagerduty.md), and a 400 is what tells a client not to retry, which is right
    for an event that will never fit. The Content-Type is not checked: PagerDuty documents nothing
    about it for the Events API.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEventError(
            [f"The event is {len(raw)} bytes; at most {MAX_EVENT_BYTES} (512 KB) are accepted"]
        )
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError([f"Malformed JSON body: {exc}"]) from exc


def _parse_event(body: object, routing_keys: Collection[str] | None = None) -> _Event:
    """Validate a decoded event; raise :class:`InvalidEventError` naming every problem found.

    ``routing_keys``: the accepted routing keys; None accepts any non-empty string. PagerDuty's
    keys are 32 characters, but the length is not checked, so tests may use readable keys.
    For acknowledge and resolve, ``payload`` and the context fields are ignored, not checked.
    An empty ``dedup_key`` counts as none. Unknown fields are ignored.
    """
    if not isinstance(body, dict):
        raise InvalidEventError(["The event must be a JSON object"])
    problems: list[str] = []
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key.strip():
        problems.append("'routing_key' is required: a non-empty string")
    elif routing_keys is not None and routing_key not in routing_keys:
        problems.append(INVALID_ROUTING_KEY_ERROR)  # PagerDuty's own answer is unconfirmed
    action = body.get("event_action")
    if action not in EVENT_ACTIONS:
        problems.append(f"'event_action' must be one of {', '.join(EVENT_ACTIONS)}")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        problems.append("'dedup_key' must be a string")
    elif dedup_key is not None and len(dedup_key) > MAX_DEDUP_KEY_CHARS:
        problems.append(f"'dedup_key' must be at most {MAX_DEDUP_KEY_CHARS} characters")
    elif not dedup_key and action in ("acknowledge", "resolve"):
        problems.append(f"'dedup_key' is required for {action} events")
    details = _parse_alert_details(body, problems) if action == "trigger" else None
    if problems:
        raise InvalidEventError(problems)
    return _Event(
        routing_key=cast(str, routing_key),
        action=cast(EventAction, action),
        dedup_key=cast("str | None", dedup_key) or None,
        details=details,
    )


def _parse_alert_details(body: Mapping[str, Any], problems: list[str]) -> _AlertDetails:
    """The payload and context of a trigger; adds what is wrong to ``problems`` (the details
    returned are then meaningless: :func:`_parse_event` raises)."""
    payload = body.get("payload")
    if not isinstance(payload, dict):
        problems.append("'payload' is required for trigger events: an object")
        payload = {}
    summary = _required_string(payload, "payload.summary", problems)
    if len(summary) > MAX_SUMMARY_CHARS:
        problems.append(f"'payload.summary' must be at most {MAX_SUMMARY_CHARS} characters")
    source = _required_string(payload, "payload.source", problems)
    severity = payload.get("severity")
    if severity not in EVENT_SEVERITIES:
        problems.append(f"'payload.severity' must be one of {', '.join(EVENT_SEVERITIES)}")
    timestamp = _optional_string(payload, "payload.timestamp", problems)
    if timestamp is not None:
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            problems.append("'payload.timestamp' must be an ISO 8601 timestamp")
    return _AlertDetails(
        summary=summary,
        source=source,
        severity=str(severity),
        timestamp=timestamp,
        component=_optional_string(payload, "payload.component", problems),
        group=_optional_string(payload, "payload.group", problems),
        event_class=_optional_string(payload, "payload.class", problems),
        # Documented as an object; PagerDuty shows whatever JSON it gets, so nothing is checked.
        custom_details=payload.get("custom_details"),
        links=_context_list(body, "links", "href", ("text",), problems),
        images=_context_list(body, "images", "src", ("href", "alt"), problems),
        client=_optional_string(body, "client", problems),
        client_url=_optional_string(body, "client_url", problems),
    )


def _required_string(container: Mapping[str, Any], path: str, problems: list[str]) -> str:
    """``container[last part of path]``, a non-blank string; "" (and a problem) otherwise."""
    value = container.get(path.rpartition(".")[2])
    if isinstance(value, str) and value.strip():
        return value
    problems.append(f"'{path}' is required: a non-empty string")
    return ""


def _optional_string(container: Mapping[str, Any], path: str, problems: list[str]) -> str | None:
    """``container[last part of path]`` if it is a string, None if absent or null."""
    value = container.get(path.rpartition(".")[2])
    if value is None or isinstance(value, str):
        return value
    problems.append(f"'{path}' must be a string")
    return None


def _context_list(
    body: Mapping[str, Any],
    name: str,
    required: str,
    optional: tuple[str, ...],
    problems: list[str],
) -> list[dict[str, Any]]:
    """``links`` or ``images``: absent, or a list of objects, each with a non-empty string
    ``required`` field and optionally string ``optional`` fields."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"'{name}' must be a list of objects")
        return []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"'{where}' must be an object")
            continue
        _required_string(item, f"{where}.{required}", problems)
        for field_name in optional:
            _optional_string(item, f"{where}.{field_name}", problems)
    return cast(list[dict[str, Any]], value)


# --------------------------------------------------------------------------------------------
# HTTP: fault plan hook
# --------------------------------------------------------------------------------------------


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
       second; a call finding no token → 429 (see :func:`_rate_limited_response` for headers and
       body), and is not acted on: "the event was NOT taken". Refused calls take no token.
       Every other REST answer carries ``ratelimit-limit``, ``-remaining`` and ``-reset`` (the
       bucket's state when it answers), as PagerDuty's do. ``events_rate_limit_per_minute``, if
       set, is the Events API's own figure per routing key (PagerDuty: about 120 a minute per
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
            return _error_response(_invalid_credentials())
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


# --------------------------------------------------------------------------------------------
# HTTP: request checks
# --------------------------------------------------------------------------------------------


def _token_of(request: Request) -> str | None:
    """The API key in ``Authorization: Token token=<key>``, or None if absent or malformed."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "token" or not credentials.startswith("token="):
        return None
    return credentials.removeprefix("token=").strip() or None


def _accepts_pagerduty_v2(accept: str) -> bool:
    """Whether an Accept header names PagerDuty's v2 media type (whitespace and case ignored)."""
    wanted = PAGERDUTY_ACCEPT.lower()
    return any("".join(part.split()).lower() == wanted for part in accept.split(","))


def _check_credentials_and_accept(
    request: Request, token: str | None, expected: str | None
) -> None:
    """401 / 2006 for a missing or wrong token (any token passes if none is expected), then 400
    for an Accept header that does not ask for API v2."""
    if token is None or (expected is not None and token != expected):
        raise _invalid_credentials()
    if not _accepts_pagerduty_v2(request.headers.get("accept", "")):
        raise _invalid_input(f"The Accept header must be '{PAGERDUTY_ACCEPT}'")


def _require_from(request: Request) -> None:
    """400 without a ``From`` header. PagerDuty requires it on writes made with an account key."""
    if not request.headers.get("from", "").strip():
        raise _invalid_input("The From header is required: the email address of a user")


async def _json_body(request: Request) -> object:
    """The decoded JSON body; 400 if it is not declared as JSON or does not parse."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise _invalid_input("The Content-Type header must be 'application/json'")
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid_input(f"Malformed JSON body: {exc}") from exc


def _int_param(params: QueryParams, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise _invalid_input(f"{name} must be an integer") from exc


# --------------------------------------------------------------------------------------------
# HTTP: the app
# --------------------------------------------------------------------------------------------


class _PagerDutyRoutes:
    """The PagerDuty endpoints, bound to one simulator, one expected token and the accepted
    routing keys (None: any)."""

    def __init__(
        self,
        simulator: SimulatedPagerDuty,
        token: str | None,
        routing_keys: frozenset[str] | None = None,
    ) -> None:
        self.simulator = simulator
        self.token = token
        self.routing_keys = routing_keys

    async def _answer(self, request: Request, route: str) -> Response:
        """Run one PagerDuty call: fault plan, header checks, operation, envelope, counting."""
        call = PagerDutyCall(request.method, route, _token_of(request), request, self.simulator)
        plan: FaultPlan = request.app.state.fault_plan
        self.simulator.call_started()
        try:
            response = await plan.before(call)
            if response is None:
                try:
                    _check_credentials_and_accept(request, call.token, self.token)
                    status, payload = await self._operate(request, route)
                    response = JSONResponse(payload, status)
                except SimulatedError as error:
                    response = JSONResponse(error.envelope(), error.status)
                response = await plan.after(call, response)
        finally:
            self.simulator.call_ended()
        self.simulator.record_call(call.method, route, response.status_code)
        return response

    async def _operate(self, request: Request, route: str) -> tuple[int, Any]:
        """Dispatch on (method, route template) to the simulator."""
        simulator = self.simulator
        method = request.method
        if route == "/webhook_subscriptions":
            if method == "GET":
                listed = simulator.webhooks.subscriptions()
                return 200, {
                    "webhook_subscriptions": listed,
                    "limit": len(listed),
                    "offset": 0,
                    "more": False,
                    "total": len(listed),
                }
            body = await _json_body(request)
            try:
                return 201, {"webhook_subscription": simulator.webhooks.subscribe(body)}
            except SubscriptionError as exc:
                raise _invalid_input(str(exc)) from None
        if route == "/incidents/{id}":
            incident_id: str = request.path_params["id"]
            if method == "GET":
                return 200, {"incident": simulator.get_incident(incident_id)}
            _require_from(request)
            body = await _json_body(request)
            return 200, {"incident": simulator.update_incident(incident_id, body)}
        if method == "GET":
            params = request.query_params
            return 200, simulator.list_incidents(
                incident_key=params.get("incident_key"),
                statuses=params.getlist("statuses[]"),
                date_range=params.get("date_range"),
                service_ids=params.getlist("service_ids[]"),
                limit=_int_param(params, "limit", DEFAULT_PAGE_LIMIT),
                offset=_int_param(params, "offset", 0),
                total=params.get("total", "").lower() == "true",
            )
        _require_from(request)
        body = await _json_body(request)
        if method == "POST":
            return 201, {"incident": simulator.create_incident(body)}
        return 200, {"incidents": simulator.update_incidents(body)}

    async def incidents(self, request: Request) -> Response:
        return await self._answer(request, "/incidents")

    async def webhook_subscriptions(self, request: Request) -> Response:
        return await self._answer(request, "/webhook_subscriptions")

    async def incident(self, request: Request) -> Response:
        return await self._answer(request, "/incidents/{id}")

    async def enqueue(self, request: Request) -> Response:
        """``POST /v2/enqueue``: fault plan, then the event, answered in the Events API's shape.

        The body is read and decoded before the plan runs, because the rate-limit bucket is the
        body's routing_key. A body that is too large or not JSON is refused only once the plan
        has let the call through, as a REST call's headers are checked after the plan: a fault
        answers first either way.
        """
        raw = await request.body()
        body: object = None
        undecodable: InvalidEventError | None = None
        try:
            body = _decode_event(raw)
        except InvalidEventError as error:
            undecodable = error
        routing_key = body.get("routing_key") if isinstance(body, dict) else None
        call = PagerDutyCall(
            request.method,
            EVENTS_ROUTE,
            None,
            request,
            self.simulator,
            api="events",
            routing_key=routing_key if isinstance(routing_key, str) else None,
        )
        plan: FaultPlan = request.app.state.fault_plan
        response = await plan.before(call)
        if response is None:
            try:
                if undecodable is not None:
                    raise undecodable
                accepted = self.simulator.enqueue_event(body, routing_keys=self.routing_keys)
                response = JSONResponse(accepted, 202)
            except InvalidEventError as error:
                response = JSONResponse(error.body(), error.status)
            response = await plan.after(call, response)
        self.simulator.record_call(call.method, EVENTS_ROUTE, response.status_code)
        return response


def _configurable_plan(request: Request) -> ConfigurableFaults:
    """The app's plan, or 409 if it was replaced by one the control API cannot configure."""
    plan = request.app.state.fault_plan
    if not isinstance(plan, ConfigurableFaults):
        raise _ControlError(409, f"the fault plan is a {type(plan).__name__}, not configurable")
    return plan


class _ControlError(Exception):
    """A refused control API request: answered ``{"error": message[, "field": name]}``."""

    def __init__(self, status: int, message: str, field_name: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field_name = field_name
        super().__init__(message)

    def response(self) -> Response:
        body: dict[str, str] = {"error": self.message}
        if self.field_name is not None:
            body["field"] = self.field_name
        return JSONResponse(body, self.status)


async def _get_faults(request: Request) -> Response:
    """``GET /_simulator/faults``: the current :class:`FaultSettings`, every field."""
    try:
        return JSONResponse(_configurable_plan(request).settings.to_json())
    except _ControlError as error:
        return error.response()


async def _post_faults(request: Request) -> Response:
    """``POST /_simulator/faults``: merge a JSON object of fault settings into the current ones
    (all or nothing) and answer the result; 400 naming the field for an unknown name or a bad
    value."""
    try:
        plan = _configurable_plan(request)
        try:
            changes = await request.json()
        except ValueError as exc:
            raise _ControlError(400, f"the body must be a JSON object: {exc}") from exc
        if not isinstance(changes, dict):
            raise _ControlError(400, "the body must be a JSON object of fault settings")
        try:
            settings = plan.update(changes)
        except FaultSettingsError as exc:
            raise _ControlError(400, str(exc), exc.field_name) from exc
        return JSONResponse(settings.to_json())
    except _ControlError as error:
        return error.response()


async def _clear_faults(request: Request) -> Response:
    """``POST /_simulator/faults/clear``: every fault off; answers the (default) settings."""
    try:
        return JSONResponse(_configurable_plan(request).clear().to_json())
    except _ControlError as error:
        return error.response()


def create_app(
    simulator: SimulatedPagerDuty | None = None,
    *,
    token: str | None = None,
    fault_plan: FaultPlan | None = None,
    faults: FaultSettings | None = None,
    routing_keys: Iterable[str] | None = None,
) -> Starlette:
    """The simulator as an ASGI app.

    ``token``: the only API key accepted; None accepts any non-empty key. ``routing_keys``: the
    Events API routing keys accepted (any other → 400 "Invalid routing key"); None accepts any
    non-empty key, an empty collection none. ``fault_plan``: see
    :class:`FaultPlan`; by default a :class:`ConfigurableFaults` starting with ``faults`` (no
    faults if None), which the ``/_simulator/faults`` endpoints change at run time. Pass one of
    ``fault_plan`` and ``faults``, not both. The simulator and the plan are reachable as
    ``app.state.simulator`` and ``app.state.fault_plan``.
    """
    if fault_plan is not None and faults is not None:
        raise ValueError("pass fault_plan or faults, not both")
    simulator = simulator if simulator is not None else SimulatedPagerDuty()
    pagerduty = _PagerDutyRoutes(
        simulator, token, None if routing_keys is None else frozenset(routing_keys)
    )

    async def state(request: Request) -> Response:
        return JSONResponse(simulator.state())

    async def counts(request: Request) -> Response:
        return JSONResponse(simulator.counts())

    async def reset(request: Request) -> Response:
        """Forget incidents, alerts and counters. The fault settings (and rate-limit buckets)
        are left as they are: ``POST /_simulator/faults/clear`` turns faults off."""
        simulator.reset()
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def responder(request: Request) -> Response:
        """``POST /_simulator/responder`` ``{"incident_id", "action", "responder"?}``: a person
        in PagerDuty's UI acts on an incident (see :meth:`SimulatedPagerDuty.respond`)."""
        try:
            body = await request.json()
        except ValueError:
            return _ControlError(400, "the body must be a JSON object").response()
        if not isinstance(body, dict) or not all(
            isinstance(body.get(name), str) for name in ("incident_id", "action")
        ):
            return _ControlError(400, "incident_id and action are required strings").response()
        name = body.get("responder")
        try:
            incident = simulator.respond(
                body["incident_id"],
                body["action"],
                name if isinstance(name, str) and name else "Simulated Responder",
            )
        except SimulatedError as error:
            return JSONResponse(error.envelope(), error.status)
        return JSONResponse({"incident": incident})

    async def webhooks(request: Request) -> Response:
        """``GET /_simulator/webhooks``: every webhook delivery made, with its body and headers,
        and the status its last attempt was answered with."""
        return JSONResponse({"deliveries": simulator.webhooks.sent()})

    async def unmatched(request: Request, exc: Exception) -> Response:
        # Answer unknown paths and methods in PagerDuty's envelope rather than Starlette's plain
        # text, and count them: a bridge calling a wrong URL should show up in the state.
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        simulator.record_call(request.method, _UNMATCHED_ROUTE, status)
        message = "Not Found" if status == 404 else "Method Not Allowed"
        error = SimulatedError(
            status, message, CODE_NOT_FOUND, [f"{request.method} {request.url.path}"]
        )
        return JSONResponse(error.envelope(), status)

    app = Starlette(
        routes=[
            Route("/incidents", pagerduty.incidents, methods=["GET", "POST", "PUT"]),
            Route("/incidents/{id}", pagerduty.incident, methods=["GET", "PUT"]),
            Route(EVENTS_ROUTE, pagerduty.enqueue, methods=["POST"]),
            Route(
                "/webhook_subscriptions",
                pagerduty.webhook_subscriptions,
                methods=["GET", "POST"],
            ),
            Route("/_simulator/responder", responder, methods=["POST"]),
            Route("/_simulator/webhooks", webhooks, methods=["GET"]),
            Route("/_simulator/state", state, methods=["GET"]),
            Route("/_simulator/counts", counts, methods=["GET"]),
            Route("/_simulator/reset", reset, methods=["POST"]),
            Route("/_simulator/health", health, methods=["GET"]),
            Route("/_simulator/faults", _get_faults, methods=["GET"]),
            Route("/_simulator/faults", _post_faults, methods=["POST"]),
            Route("/_simulator/faults/clear", _clear_faults, methods=["POST"]),
        ],
        exception_handlers={404: unmatched, 405: unmatched},
    )
    app.state.simulator = simulator
    app.state.fault_plan = fault_plan if fault_plan is not None else ConfigurableFaults(faults)
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    token: str | None = None,
    log_level: str = "warning",
    faults: FaultSettings | None = None,
    routing_keys: Iterable[str] | None = None,
) -> None:
    """Run the simulator under uvicorn until interrupted, starting with ``faults`` (see
    :class:`FaultSettings`; None: no faults) and accepting ``routing_keys`` on the Events API
    (None: any). No access log: it would dominate the cost of a benchmark request."""
    uvicorn.run(
        create_app(token=token, faults=faults, routing_keys=routing_keys),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
    )


# --------------------------------------------------------------------------------------------
# Control client
# --------------------------------------------------------------------------------------------


class _ControlResponse(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class _ControlHttpClient(Protocol):
    """What :class:`SimulatorControl` needs of an HTTP client. A Protocol rather than
    ``httpx.Client`` so that Starlette's ``TestClient`` fits whichever httpx it is built on."""

    def request(self, method: str, url: str, *, json: Any = None) -> _ControlResponse: ...

    def close(self) -> None: ...


class SimulatorControlError(Exception):
    """The control API could not be reached or answered with an unexpected status."""


class SimulatorControl:
    """Typed client for the ``/_simulator`` control API of a running simulator.

    ``client`` lets a test pass another client, e.g. Starlette's ``TestClient``; a client passed
    in is not closed by :meth:`close`. httpx errors are translated into
    :class:`SimulatorControlError`, so callers outside this package never see an httpx type.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 5.0, client: _ControlHttpClient | None = None
    ) -> None:
        """``base_url``: e.g. ``http://127.0.0.1:8089``; ``timeout_s``: per request, in seconds."""
        self._base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client: _ControlHttpClient = (
            client if client is not None else httpx.Client(timeout=timeout_s)
        )

    def state(self) -> dict[str, Any]:
        """The simulator's counters, incidents and alerts; see :meth:`SimulatedPagerDuty.state`."""
        response = self._request("GET", "/_simulator/state", expected=200)
        return cast(dict[str, Any], response.json())

    def counts(self) -> dict[str, Any]:
        """The counters alone, cheap to poll; see :meth:`SimulatedPagerDuty.counts`."""
        response = self._request("GET", "/_simulator/counts", expected=200)
        return cast(dict[str, Any], response.json())

    def reset(self) -> None:
        """Forget every incident, alert and counter; the fault settings stay as they are."""
        self._request("POST", "/_simulator/reset", expected=204)

    def faults(self) -> dict[str, Any]:
        """The current fault settings, every field (see :class:`FaultSettings`)."""
        response = self._request("GET", "/_simulator/faults", expected=200)
        return cast(dict[str, Any], response.json())

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` (names of :class:`FaultSettings`) into the fault settings; return
        the result. A bad name or value raises :class:`SimulatorControlError` naming it."""
        response = self._request("POST", "/_simulator/faults", expected=200, json=fields)
        return cast(dict[str, Any], response.json())

    def clear_faults(self) -> None:
        """Turn every fault off."""
        self._request("POST", "/_simulator/faults/clear", expected=200)

    def respond(
        self, incident_id: str, action: str, responder: str = "Simulated Responder"
    ) -> dict[str, Any]:
        """Act on an incident as a person in PagerDuty's UI (acknowledge, unacknowledge,
        resolve, reopen); the incident after it."""
        response = self._request(
            "POST",
            "/_simulator/responder",
            expected=200,
            json={"incident_id": incident_id, "action": action, "responder": responder},
        )
        return cast(dict[str, Any], response.json()["incident"])

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery made: url, body, headers, status of its last attempt."""
        response = self._request("GET", "/_simulator/webhooks", expected=200)
        return cast(list[dict[str, Any]], response.json()["deliveries"])

    def wait_until_ready(self, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
        """Poll the health endpoint until it answers; raise :class:`SimulatorControlError` after
        ``timeout_s`` seconds. For tests that start the simulator in another process."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._request("GET", "/_simulator/health", expected=200)
                return
            except SimulatorControlError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(interval_s)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, expected: int, json: Any = None
    ) -> _ControlResponse:
        url = self._base_url + path
        try:
            response = self._client.request(method, url, json=json)
        except httpx.HTTPError as exc:
            raise SimulatorControlError(f"{method} {url} failed: {exc}") from exc
        if response.status_code != expected:
            raise SimulatorControlError(
                f"{method} {url} answered {response.status_code}, expected {expected}: "
                f"{response.text[:200]}"
            )
        return response
