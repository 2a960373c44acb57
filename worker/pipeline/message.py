"""An event as it travels from the ingress to a worker: the Celery message body.

It carries the alert's id and what CoScale said, never a secret: Celery messages sit in Redis
and in its AOF file, readable by anyone who can read those.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from worker.vocabulary import AlertStatus

SOURCE_COSCALE = "coscale"  # CoScale's Webhook contact: the alert id is CoScale's {ALERT_ID}
SOURCE_API = "api"  # the PagerDuty-shaped API contact: the alert id is one the bridge minted
# Set to "true" in an event's ``fields`` (and so in its timeline entry) when its body was not
# valid JSON and the ingress repaired it (worker/ingress/json_body.py).
REPAIRED = "repaired"

# The action an event names when it changes no status: the API contact's update that carries
# only fields PagerDuty takes (a reassignment, a priority, an escalation level).
UPDATE_ACTION = "update"

# Ids the bridge mints for the API contact: "PB" and 16 base32 characters (80 random bits).
# Matched by their whole shape: a PagerDuty incident id may start with "PB" too.
BRIDGE_ID_PREFIX = "PB"
_BRIDGE_ID = re.compile(r"^PB[A-Z2-7]{16}$")

# The PAGERBRIDGE_PAGERDUTY_* settings (worker.routes_file.DEFAULT_ROUTE_NAME).
DEFAULT_ROUTE = "default"
BACKEND_REST = "rest"  # PagerDuty's REST API: incidents
BACKEND_EVENTS = "events"  # PagerDuty's Events API v2: alerts by dedup_key


def route_source(source: str, route: str) -> str:
    """The alert identity's source part: a named route's webhook alerts are apart from the
    default route's (one CoScale alert sent to two routes is two alerts, two incidents)."""
    return source if route == DEFAULT_ROUTE or source != SOURCE_COSCALE else f"{source}:{route}"


@dataclass(frozen=True, slots=True)
class AlertEventMessage:
    """One CoScale event, stamped by the ingress that received it.

    ``received_at`` orders events for the same alert when the queue hands them out of order.
    ``incident_id`` is set only by the API contact, for an update naming a PagerDuty incident
    the bridge did not create (one opened before the switch to the bridge). ``action`` is None
    only for the API contact's update that changes no status (``update_fields`` alone).
    """

    event_id: str
    source: str
    alert_id: str
    action: AlertStatus | None
    received_at: datetime
    title: str | None = None
    details: str | None = None
    service_id: str | None = None
    urgency: str | None = None
    incident_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    # The route that took it and that route's backend; for the Events backend, the trigger the
    # route built (no routing key: messages hold no secret). Older messages have none of these:
    # the defaults are the default route's.
    route: str = DEFAULT_ROUTE
    backend: str = BACKEND_REST
    credential_id: str | None = None
    event_payload: dict[str, Any] | None = None
    # API contact: the client's incident_key (else the bridge mints one), and the create's
    # fields PagerDuty takes that are sent on as given (priority, assignments, ...).
    incident_key: str | None = None
    forwarded: dict[str, Any] | None = None
    # API contact: an update's fields PagerDuty's updateIncident takes besides the status
    # (title, priority, assignments, escalation_level, ...), sent on with the incident's next
    # update. Older messages have none.
    update_fields: dict[str, Any] | None = None

    @property
    def action_name(self) -> str:
        """The action as logs, metrics and the timeline name it."""
        return self.action.value if self.action is not None else UPDATE_ACTION

    def to_message(self) -> dict[str, Any]:
        # Shallow, not dataclasses.asdict: its deep copy was a tenth of the api's CPU per
        # webhook, and the message is only ever serialized, never changed.
        body = {name: getattr(self, name) for name in _FIELD_NAMES}
        body["action"] = self.action.value if self.action is not None else None
        body["received_at"] = self.received_at.isoformat()
        return body

    @classmethod
    def from_message(cls, body: dict[str, Any]) -> AlertEventMessage:
        values = dict(body)
        action = values.get("action")
        values["action"] = AlertStatus(action) if action is not None else None
        values["received_at"] = datetime.fromisoformat(values["received_at"])
        return cls(**values)


_FIELD_NAMES = tuple(f.name for f in fields(AlertEventMessage))


def new_event_id() -> str:
    return uuid.uuid4().hex


def is_bridge_id(incident_id: str) -> bool:
    """Whether ``incident_id`` is one the bridge minted (else: a PagerDuty incident's id)."""
    return _BRIDGE_ID.match(incident_id) is not None


def is_adopted_incident(source: str, alert_id: str) -> bool:
    """Whether an alert is the API contact's update of an incident the bridge did not create."""
    return source == SOURCE_API and not is_bridge_id(alert_id)
