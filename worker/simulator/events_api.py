"""PagerDuty's Events API v2 (``POST /v2/enqueue``; docs/pagerduty.md, PagerDuty's "Send an Alert
Event" page): its constants, its refusal, what an event does to the alerts, the alert record and
the validation of events.

No HTTP and no state here: :meth:`worker.simulator.state.SimulatedPagerDuty.enqueue_event`
applies these rules, :mod:`worker.simulator.server` answers them over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, cast

from worker.simulator.rest import IncidentStatus, StatusChange

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
class AlertDetails:
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
    details: AlertDetails | None


def decode_event(raw: bytes) -> object:
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


def parse_event(body: object, routing_keys: Collection[str] | None = None) -> _Event:
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


def _parse_alert_details(body: Mapping[str, Any], problems: list[str]) -> AlertDetails:
    """The payload and context of a trigger; adds what is wrong to ``problems`` (the details
    returned are then meaningless: :func:`parse_event` raises)."""
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
    return AlertDetails(
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


@dataclass(slots=True)
class Alert:
    """The simulator's record of one Events API alert. Mutated only under the simulator's lock.

    ``details`` are those of the trigger that opened it: PagerDuty logs a joining trigger on the
    alert without documenting any change to it, so the simulator only counts the joins.
    """

    alert_number: int
    routing_key: str
    dedup_key: str
    details: AlertDetails
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
