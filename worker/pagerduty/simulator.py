"""A PagerDuty REST API v2 simulator: the subset of the API that the bridge uses, over real HTTP.

Used by integration tests, benchmarks and ``pagerbridge run --simulate``; started on its own with
``pagerbridge simulate --port N`` (which calls :func:`serve`).

Layers, top to bottom:

- :class:`SimulatedPagerDuty` — in-memory incidents and PagerDuty's rules, no HTTP. Its methods
  take decoded JSON and return plain data, or raise :class:`SimulatedError`, which carries the
  HTTP status and PagerDuty's error envelope. A ``threading.Lock`` guards the state, so tests may
  inspect it from their own thread while uvicorn serves requests.
- :func:`create_app` — a plain Starlette app (no FastAPI: fewer layers per request, and the
  benchmarks push thousands of requests per second through it). It checks the headers PagerDuty
  checks, decodes JSON and translates :class:`SimulatedError` into PagerDuty's envelope
  ``{"error": {"message", "code", "errors"}}``. Every PagerDuty call passes through a
  :class:`FaultPlan`, the extension point for fault injection (down, flaky, lost, slow, hang,
  rate limits, 401 per token). Only the no-fault plan exists today.
- A control API under ``/_simulator`` (not PagerDuty's): ``GET /_simulator/state``,
  ``POST /_simulator/reset``, ``GET /_simulator/health``. :class:`SimulatorControl` is its typed
  client.

PagerDuty's behaviour comes from ``/work/shared/PAGERDUTY.md``. Where PagerDuty documents
nothing, the docstring at that point says which choice the simulator made.
"""

from __future__ import annotations

import json
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
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

__all__ = [
    "DUPLICATE_INCIDENT_KEY_ERROR",
    "PAGERDUTY_ACCEPT",
    "FaultPlan",
    "IncidentStatus",
    "PagerDutyCall",
    "SimulatedError",
    "SimulatedPagerDuty",
    "SimulatorControl",
    "SimulatorControlError",
    "StatusChange",
    "create_app",
    "next_status",
    "serve",
]

IncidentStatus = Literal["triggered", "acknowledged", "resolved"]

# The media type PagerDuty's REST API v2 expects in Accept.
PAGERDUTY_ACCEPT: Final = "application/vnd.pagerduty+json;version=2"
# The errors[] text PagerDuty sends when a create repeats the incident_key of an open incident on
# the same service (seen in the wild; PAGERDUTY.md). The bridge matches on this text plus 400.
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

MAX_BULK_UPDATE: Final = 250  # PUT /incidents: more items → 413 (PAGERDUTY.md)
MAX_TITLE_CHARS: Final = 1024
DEFAULT_PAGE_LIMIT: Final = 25  # PagerDuty's default page size for classic pagination
MAX_PAGE_LIMIT: Final = 100

# PagerDuty error codes (PAGERDUTY.md, "Errors").
CODE_ALREADY_RESOLVED: Final = 1001
CODE_ALREADY_ACKNOWLEDGED: Final = 1002
CODE_INVALID_INPUT: Final = 2001
CODE_INVALID_CREDENTIALS: Final = 2006
CODE_NOT_FOUND: Final = 2100

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
    status: IncidentStatus = "triggered"
    history: list[StatusChange] = field(default_factory=list)

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


class SimulatedPagerDuty:
    """PagerDuty's incidents and rules, in memory, without HTTP. Thread-safe.

    Any service id is taken to exist: the simulator keeps no service registry.
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

    def reset(self) -> None:
        """Forget every incident and counter; incident numbers start again at 1."""
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

    # ---- PagerDuty operations --------------------------------------------------------------

    def create_incident(self, body: object) -> dict[str, Any]:
        """``POST /incidents``: validate ``{"incident": {...}}``, create, return the incident.

        Refuses (400, code 2001, :data:`DUPLICATE_INCIDENT_KEY_ERROR`) a create whose
        ``incident_key`` matches an open incident on the same service, and counts the refusal.
        An empty ``incident_key`` is treated as none (no de-duplication).
        """
        new = _parse_new_incident(body)
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
                created_at=_timestamp(self._clock()),
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
            return incident.to_pagerduty()

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

    # ---- Bookkeeping and inspection --------------------------------------------------------

    def record_call(self, method: str, route: str, status: int) -> None:
        """Count one HTTP call by method, route template (``/incidents/{id}``) and status code."""
        with self._lock:
            self._calls[(method, route, status)] += 1

    def state(self) -> dict[str, Any]:
        """A snapshot of every counter and incident; the body of ``GET /_simulator/state``."""
        with self._lock:
            by_status = dict.fromkeys(STATUSES, 0)
            incidents = []
            for incident in self._incidents.values():
                by_status[incident.status] += 1
                incidents.append(incident.to_state())
            calls = [
                {"method": method, "route": route, "status": status, "count": count}
                for (method, route, status), count in sorted(self._calls.items())
            ]
            return {
                "counts": {
                    "calls": calls,
                    "creates": self._creates,
                    "duplicate_creates_refused": self._duplicate_creates_refused,
                    "reopened": self._reopened,
                    "listings_without_incident_key": self._listings_without_incident_key,
                    "incidents_by_status": by_status,
                },
                "incidents": incidents,
            }

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

    def _new_id(self) -> str:
        """A fresh id, ``Q`` + 6 uppercase alphanumerics. Lock held."""
        while True:
            incident_id = "Q" + "".join(self._random.choices(_ID_ALPHABET, k=6))
            if incident_id not in self._incidents:
                return incident_id

    def _apply_status_updates(self, updates: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Check every ``(id, wanted status)`` in order, then apply them all, or none."""
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
            at = _timestamp(self._clock())
            for incident, new_status, reopened in plan:
                was_open = incident.is_open
                incident.history.append(StatusChange(at, incident.status, new_status, reopened))
                incident.status = new_status
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
# HTTP: fault plan hook
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PagerDutyCall:
    """One PagerDuty API call as a :class:`FaultPlan` sees it, before any header is checked."""

    method: str
    route: str  # the route template, e.g. "/incidents/{id}"
    token: str | None  # from "Authorization: Token token=<t>"; None if absent or malformed
    request: Request


class FaultPlan:
    """Extension point for fault injection; this base class injects nothing.

    The app consults ``app.state.fault_plan`` on every PagerDuty call (never on ``/_simulator``):

    - :meth:`before` runs first, before the headers are checked. Returning a response answers
      the call with it and leaves the simulated state untouched: that is how "down", "rate
      limit" (429 with ``ratelimit-*`` headers) or "401 for this token" can be made. Awaiting
      in it gives "slow" and "hang".
    - :meth:`after` runs once the simulator answered the call (state change included; not when
      :meth:`before` answered) and may replace the response: a 5xx or a stall after the
      incident was created is the "lost response" case.

    The recorded call counts use the status of the response finally sent. The plan may be
    swapped while the app runs by assigning ``app.state.fault_plan``.
    """

    async def before(self, call: PagerDutyCall) -> Response | None:
        """Return a response to answer the call without running it, or None to run it."""
        return None

    async def after(self, call: PagerDutyCall, response: Response) -> Response:
        """Return the response to send; ``response`` is what the simulator answered."""
        return response


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
        raise SimulatedError(
            401,
            "Invalid Credentials",
            CODE_INVALID_CREDENTIALS,
            ["Send 'Authorization: Token token=<api key>' with a valid API key"],
        )
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
    """The PagerDuty endpoints, bound to one simulator and one expected token."""

    def __init__(self, simulator: SimulatedPagerDuty, token: str | None) -> None:
        self.simulator = simulator
        self.token = token

    async def _answer(self, request: Request, route: str) -> Response:
        """Run one PagerDuty call: fault plan, header checks, operation, envelope, counting."""
        call = PagerDutyCall(request.method, route, _token_of(request), request)
        plan: FaultPlan = request.app.state.fault_plan
        response = await plan.before(call)
        if response is None:
            try:
                _check_credentials_and_accept(request, call.token, self.token)
                status, payload = await self._operate(request, route)
                response = JSONResponse(payload, status)
            except SimulatedError as error:
                response = JSONResponse(error.envelope(), error.status)
            response = await plan.after(call, response)
        self.simulator.record_call(call.method, route, response.status_code)
        return response

    async def _operate(self, request: Request, route: str) -> tuple[int, Any]:
        """Dispatch on (method, route template) to the simulator."""
        simulator = self.simulator
        method = request.method
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

    async def incident(self, request: Request) -> Response:
        return await self._answer(request, "/incidents/{id}")


def create_app(
    simulator: SimulatedPagerDuty | None = None,
    *,
    token: str | None = None,
    fault_plan: FaultPlan | None = None,
) -> Starlette:
    """The simulator as an ASGI app.

    ``token``: the only API key accepted; None accepts any non-empty key. ``fault_plan``: see
    :class:`FaultPlan`; defaults to no faults. The simulator and the plan are reachable as
    ``app.state.simulator`` and ``app.state.fault_plan``.
    """
    simulator = simulator if simulator is not None else SimulatedPagerDuty()
    pagerduty = _PagerDutyRoutes(simulator, token)

    async def state(request: Request) -> Response:
        return JSONResponse(simulator.state())

    async def reset(request: Request) -> Response:
        simulator.reset()
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

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
            Route("/_simulator/state", state, methods=["GET"]),
            Route("/_simulator/reset", reset, methods=["POST"]),
            Route("/_simulator/health", health, methods=["GET"]),
        ],
        exception_handlers={404: unmatched, 405: unmatched},
    )
    app.state.simulator = simulator
    app.state.fault_plan = fault_plan if fault_plan is not None else FaultPlan()
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    token: str | None = None,
    log_level: str = "warning",
) -> None:
    """Run the simulator under uvicorn until interrupted. No access log: it would dominate the
    cost of a benchmark request."""
    uvicorn.run(
        create_app(token=token),
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

    def request(self, method: str, url: str) -> _ControlResponse: ...

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
        """The simulator's counters and incidents; see :meth:`SimulatedPagerDuty.state`."""
        response = self._request("GET", "/_simulator/state", expected=200)
        return cast(dict[str, Any], response.json())

    def reset(self) -> None:
        """Forget every incident and counter."""
        self._request("POST", "/_simulator/reset", expected=204)

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

    def _request(self, method: str, path: str, *, expected: int) -> _ControlResponse:
        url = self._base_url + path
        try:
            response = self._client.request(method, url)
        except httpx.HTTPError as exc:
            raise SimulatorControlError(f"{method} {url} failed: {exc}") from exc
        if response.status_code != expected:
            raise SimulatorControlError(
                f"{method} {url} answered {response.status_code}, expected {expected}: "
                f"{response.text[:200]}"
            )
        return response
