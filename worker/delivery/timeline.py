"""How a delivery step is told: the alert's timeline row and the log line.

Every step that reaches an outcome (a call answered, a retry scheduled, a park) writes one row
to the alert's timeline (``alert_events``, kind ``delivery``) and one log line naming the alert
and its incident.
"""

from __future__ import annotations

import logging
from typing import Any

from models import AlertLike, utcnow
from worker.delivery.answers import Adopted, EventSent
from worker.delivery.policy import (
    EVENT_ACTIONS,
    Create,
    FindByKey,
    Inspect,
    SendEvent,
    Step,
    Update,
)
from worker.pagerduty import AlreadyInState, Incident

# The reconciler's logger: a reconcile's lines, these among them, come under one name.
log = logging.getLogger("worker.delivery.reconcile")

# What a successful call did, by the outcome the reconciler audits.
CALL_DONE = {
    "create": "created",
    "update": "updated",
    "findbykey": "adopted",
    "inspect": "inspected",
    "not-found": "not_found",
    "trigger": "triggered",
    "acknowledge": "acknowledged",
    "resolve": "resolved",
}
_SAID = {"retry": "retry scheduled", "not_found": "not found"}


def audit(alert: AlertLike, outcome: str, *, detail: str | None) -> dict[str, Any]:
    """The alert's timeline row for a delivery step."""
    return {
        "alert_pk": alert.id,
        "source": alert.source,
        "source_alert_id": alert.source_alert_id,
        "kind": "delivery",
        "outcome": outcome[:32],
        "detail": detail,
        "created_at": utcnow(),
    }


def log_delivery(level: int, outcome: str, alert: AlertLike, detail: str | None) -> None:
    """One line per delivery step, naming the alert and its incident; in JSON logs they are
    also fields of their own (``alert``, ``cycle``, ``incident``, ``outcome``)."""
    name = f"{alert.source}:{alert.source_alert_id}"
    log.log(
        level,
        "%s alert=%s incident=%s: %s",
        _SAID.get(outcome, outcome),
        name,
        alert.pagerduty_incident_id,
        detail,
        extra={
            "alert": name,
            "cycle": alert.cycle,
            "incident": alert.pagerduty_incident_id,
            "outcome": outcome,
        },
    )


def describe(step: Step, incident: Incident | EventSent | None) -> str:
    """What a successful call found or did, for the timeline and the log."""
    if isinstance(incident, EventSent):
        return f"{EVENT_ACTIONS[incident.action]} event taken for {step_key(step)}"
    if incident is None:
        return "no incident with this key: the create never landed"
    if isinstance(incident, Adopted):
        return f"adopted incident {incident.id} ({incident.status}): the create's answer was lost"
    if isinstance(step, Create):
        return f"incident {incident.id} is {incident.status}"
    if isinstance(step, FindByKey):
        return f"adopted incident {incident.id} ({incident.status}) found by key"
    if isinstance(step, Inspect):
        return f"incident {incident.id} is {incident.status} on service {incident.service_id}"
    if isinstance(step, Update) and step.fields:
        names = ", ".join(sorted(step.fields))
        if isinstance(incident, AlreadyInState):
            return f"incident {incident.id} was already {incident.status}; {names} not applied"
        return f"incident {incident.id} is now {incident.status}, with {names}"
    return f"incident {incident.id} is now {incident.status}"


def step_key(step: Step) -> str:
    return str(step.event.get("dedup_key")) if isinstance(step, SendEvent) else ""
