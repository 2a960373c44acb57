"""PagerDuty's REST API v2, the incidents part: its constants and error codes, its errors in
PagerDuty's envelope, the status rules, the incident record and the validation of request bodies.

No HTTP and no state here: :mod:`worker.simulator.state` applies these rules to its incidents,
:mod:`worker.simulator.server` answers them over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

IncidentStatus = Literal["triggered", "acknowledged", "resolved"]

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

# updateIncident's fields besides status the simulator keeps and shows (PagerDuty's REST API
# reference, updateIncident); title and urgency change the incident's own.
UPDATE_FIELDS: Final = (
    "title",
    "urgency",
    "priority",
    "escalation_level",
    "escalation_policy",
    "assignments",
    "incident_type",
    "conference_bridge",
    "resolution",
)
# createIncident's fields besides title, service, urgency, incident_key and body, kept as given.
CREATE_FIELDS: Final = (
    "priority",
    "escalation_policy",
    "assignments",
    "incident_type",
    "conference_bridge",
)

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


def invalid_input(*errors: str) -> SimulatedError:
    """400 / 2001, the error PagerDuty gives for any malformed or incomplete request."""
    return SimulatedError(400, "Invalid Input Provided", CODE_INVALID_INPUT, errors)


def not_found(incident_id: str) -> SimulatedError:
    return SimulatedError(404, "Not Found", CODE_NOT_FOUND, [f"Incident {incident_id} not found"])


def invalid_credentials() -> SimulatedError:
    """401 / 2006: a missing or refused API key."""
    return SimulatedError(
        401,
        "Invalid Credentials",
        CODE_INVALID_CREDENTIALS,
        ["Send 'Authorization: Token token=<api key>' with a valid API key"],
    )


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
        raise invalid_input(f"Status must be one of acknowledged, resolved; got {wanted!r}")
    if wanted == "resolved":
        if current == "resolved":
            raise SimulatedError(400, "Incident Already Resolved", CODE_ALREADY_RESOLVED)
        return "resolved", False
    if current == "acknowledged":
        raise SimulatedError(400, "Incident Already Acknowledged", CODE_ALREADY_ACKNOWLEDGED)
    return "acknowledged", current == "resolved"


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
class Incident:
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
    # Fields a create or an update set (priority, assignments, escalation_level, ...), as given.
    fields: dict[str, Any] = field(default_factory=dict)

    def take_fields(self, fields: Mapping[str, Any]) -> None:
        """Apply an update's fields: title and urgency are the incident's own, the rest kept."""
        for name, value in fields.items():
            if name == "title":
                self.title = str(value)
            elif name == "urgency":
                self.urgency = str(value)
            else:
                self.fields[name] = value

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
            **{
                name: value
                for name, value in self.fields.items()
                if name not in ("resolution", "escalation_level")
            },
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
            "fields": dict(self.fields),
        }


@dataclass(frozen=True, slots=True)
class _NewIncident:
    """A validated create request."""

    title: str
    service_id: str
    urgency: str
    incident_key: str | None
    details: str | None
    fields: dict[str, Any] = field(default_factory=dict)


def parse_new_incident(body: object) -> _NewIncident:
    """Validate a ``POST /incidents`` body; raise 400 / 2001 naming every problem found."""
    if not isinstance(body, dict) or not isinstance(body.get("incident"), dict):
        raise invalid_input("Body must be an object with an 'incident' object")
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
        raise invalid_input(*problems)
    return _NewIncident(
        title=cast(str, title),
        service_id=cast(str, service_id),
        urgency=cast(str, urgency),
        incident_key=cast("str | None", incident_key) or None,
        details=cast("str | None", details),
        fields={name: incident[name] for name in CREATE_FIELDS if incident.get(name) is not None},
    )


def parse_update(item: Mapping[str, Any], where: str) -> tuple[str | None, dict[str, Any]]:
    """One update item: its wanted status (``next_status`` judges whether it is allowed; None
    leaves the status as it is) and the fields of :data:`UPDATE_FIELDS` it sets, as given.

    Only the shapes the bridge depends on are checked: an item with neither a status nor one
    of those fields changes nothing and is refused rather than silently ignored.
    """
    if item.get("type") not in ("incident_reference", "incident"):
        raise invalid_input(f"{where}.type must be 'incident_reference'")
    status = item.get("status")
    if status is not None and not isinstance(status, str):
        raise invalid_input(f"{where}.status must be a string")
    fields = {name: item[name] for name in UPDATE_FIELDS if item.get(name) is not None}
    if status is None and not fields:
        raise invalid_input(f"{where}: nothing to update (a status or a field is required)")
    problems = []
    if "title" in fields and (not isinstance(fields["title"], str) or not fields["title"]):
        problems.append(f"{where}.title must be a non-empty string")
    if "urgency" in fields and fields["urgency"] not in ("high", "low"):
        problems.append(f"{where}.urgency must be 'high' or 'low'")
    level = fields.get("escalation_level")
    if "escalation_level" in fields and (not isinstance(level, int) or isinstance(level, bool)):
        problems.append(f"{where}.escalation_level must be an integer")
    if fields.get("assignments") and fields.get("escalation_policy"):
        problems.append(f"{where}: assignments cannot be given with an escalation_policy")
    if problems:
        raise invalid_input(*problems)
    return status, fields
