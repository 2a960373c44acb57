"""What PagerDuty tells the bridge about its incidents (v3 webhooks), folded into alert cycles.

PagerDuty's word is the cycle's confirmed status. A change the bridge did not make is a
responder's, and the bridge never undoes it (the rules, as pure functions, are
:func:`judge` and :func:`responder_wish`): a resolved incident is never acknowledged (that
reopens it, PagerDuty changelog 2025-09-18) nor resolved again; a reopened or unacknowledged one
is not acknowledged or resolved on the strength of CoScale events received before that.

A delivery is stored before it is answered (:func:`store_delivery`), then applied in a
transaction of its own (:func:`apply_delivery`); the sweeper applies what was stored but not
applied (:func:`apply_stored_deliveries`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent, AlertLike, PagerDutyDelivery, utcnow
from models.namespace import namespace_of
from worker.delivery.policy import Create, SendEvent, Update, plan_delivery
from worker.vocabulary import AlertStatus, DeliveryState, advance, next_update

log = logging.getLogger(__name__)

# PagerDuty's incident events the bridge follows, and the status each leaves the incident in
# (PagerDuty docs, "Webhooks v3 overview": event types).
INCIDENT_EVENTS: dict[str, AlertStatus] = {
    "incident.triggered": AlertStatus.TRIGGERED,
    "incident.acknowledged": AlertStatus.ACKNOWLEDGED,
    "incident.unacknowledged": AlertStatus.TRIGGERED,
    "incident.resolved": AlertStatus.RESOLVED,
    "incident.reopened": AlertStatus.TRIGGERED,
}
SOMEONE = "someone in PagerDuty"
# A delivery the ingress stored is applied by the sweeper only after this: the ingress applies
# it itself right after storing it.
APPLY_GRACE = timedelta(seconds=5)  # a change whose agent PagerDuty did not name


class ReportOutcome(StrEnum):
    RESPONDER = "responder"  # a change the bridge did not make: the cycle follows it
    ECHO = "echo"  # the bridge's own call coming back: nothing changes
    STALE = "stale"  # older than a status already applied (deliveries are not ordered)
    UNKNOWN = "unknown"  # no alert cycle of this route owns the incident
    IGNORED = "ignored"  # an event type the bridge does not follow
    DUPLICATE = "duplicate"  # this event was stored before (PagerDuty retried it)


class MalformedReport(ValueError):
    """A signed delivery that is not a v3 webhook event the bridge can read."""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """One incident event of a v3 webhook: what PagerDuty says the incident is now."""

    webhook_id: str
    event_type: str
    incident_id: str | None
    incident_key: str | None
    status: AlertStatus | None  # None: an event type the bridge does not follow
    agent: str | None
    occurred_at: datetime | None
    number: int | None = None
    html_url: str | None = None


def read_report(event: Any) -> StatusReport:
    """The ``event`` object of a v3 webhook body; :class:`MalformedReport` says what is wrong."""
    if not isinstance(event, dict):
        raise MalformedReport("event: required: an object")
    webhook_id, event_type = event.get("id"), event.get("event_type")
    if not isinstance(webhook_id, str) or not webhook_id or len(webhook_id) > 128:
        raise MalformedReport("event.id: required: a string of 1 to 128 characters")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
        raise MalformedReport("event.event_type: required: a string of 1 to 64 characters")
    status = INCIDENT_EVENTS.get(event_type)
    occurred_at = _timestamp(event.get("occurred_at"), "event.occurred_at")
    agent = event.get("agent")
    agent_name = agent.get("summary") if isinstance(agent, dict) else None
    if status is None:
        return StatusReport(webhook_id, event_type, None, None, None, None, occurred_at)
    data = event.get("data")
    if not isinstance(data, dict):
        raise MalformedReport("event.data: required: the incident, an object")
    incident_id, key = data.get("id"), data.get("incident_key")
    if not isinstance(incident_id, str) or not incident_id:
        raise MalformedReport("event.data.id: required: the incident's id")
    reported = data.get("status")
    if isinstance(reported, str) and reported in AlertStatus.__members__.values():
        status = AlertStatus(reported)
    number = data.get("number")
    url = data.get("html_url")
    return StatusReport(
        webhook_id=webhook_id,
        event_type=event_type,
        incident_id=incident_id[:64],
        incident_key=key[:255] if isinstance(key, str) and key else None,
        status=status,
        agent=agent_name[:255] if isinstance(agent_name, str) and agent_name else None,
        occurred_at=occurred_at,
        number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        html_url=url[:512] if isinstance(url, str) else None,
    )


def _timestamp(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedReport(f"{where}: an ISO 8601 time, if given")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedReport(f"{where}: {value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise MalformedReport(f"{where}: {value[:40]!r} has no time zone")
    return moment


# -- the rules (pure) -----------------------------------------------------------------------


def is_echo(alert: AlertLike, status: AlertStatus, now: datetime) -> bool:
    """Whether PagerDuty reporting ``status`` is the bridge's own doing.

    Either the bridge already recorded that status from its call's answer, or the call is in
    flight (a live lease, and the call the alert's plan makes sets that status): PagerDuty's
    webhook can arrive before the answer is recorded. A ``triggered`` for a cycle with no status
    yet is its create.
    """
    if alert.confirmed_status is status:
        return True
    if alert.confirmed_status is None and status is AlertStatus.TRIGGERED:
        return True
    leased = alert.lease_owner is not None and (
        alert.lease_expires_at is not None and alert.lease_expires_at >= now
    )
    if not leased:
        return False
    step = plan_delivery(alert)
    if isinstance(step, Create):
        return status is AlertStatus.TRIGGERED
    if isinstance(step, Update | SendEvent):
        return (step.status if isinstance(step, Update) else step.action) is status
    return False


def judge(alert: AlertLike, report: StatusReport, now: datetime) -> ReportOutcome:
    """What a report of the incident's status does to its cycle."""
    if report.status is None:
        return ReportOutcome.IGNORED
    last = alert.pagerduty_event_at
    if last is not None and report.occurred_at is not None and report.occurred_at < last:
        return ReportOutcome.STALE
    if is_echo(alert, report.status, now):
        return ReportOutcome.ECHO
    return ReportOutcome.RESPONDER


def responder_wish(desired: AlertStatus, status: AlertStatus) -> AlertStatus:
    """The cycle's desired status once a responder put the incident in ``status``.

    Resolved, or reopened / unacknowledged (triggered): that is what the cycle wants now, so
    the bridge neither reopens the first nor acknowledges or resolves the second on the
    strength of what CoScale said before; CoScale's later events move it on as usual.
    Acknowledged: a resolve CoScale asked for still goes (it undoes nothing).
    """
    if status is AlertStatus.ACKNOWLEDGED:
        return advance(desired, status)
    return status


def follow_responder(alert: AlertLike, report: StatusReport, received_at: datetime) -> None:
    """Fold a responder's change into the cycle (``judge`` said RESPONDER)."""
    assert report.status is not None
    alert.confirmed_status = report.status
    alert.pagerduty_event_at = report.occurred_at or alert.pagerduty_event_at
    alert.responder = report.agent or SOMEONE
    alert.responder_at = received_at
    _learn_incident(alert, report)
    alert.desired_status = responder_wish(alert.desired_status, report.status)
    if next_update(alert.desired_status, report.status) is None:
        alert.delivery_state = DeliveryState.DELIVERED
        alert.next_attempt_at = None
        alert.pending_since = None
        alert.last_error = None
        alert.attempts = 0


def _learn_incident(alert: AlertLike, report: StatusReport) -> None:
    # Found by its key before the create's answer was recorded: the incident is this one.
    if alert.pagerduty_incident_id is None and alert.backend != "events":
        alert.pagerduty_incident_id = report.incident_id
        alert.pagerduty_incident_number = report.number
        alert.pagerduty_incident_url = report.html_url


def describe(report: StatusReport, outcome: ReportOutcome) -> str:
    status = report.status.value if report.status is not None else report.event_type
    who = report.agent or SOMEONE
    when = f" at {report.occurred_at.isoformat()}" if report.occurred_at else ""
    if outcome is ReportOutcome.RESPONDER:
        return f"{status} by {who} in PagerDuty{when} (incident {report.incident_id})"
    return f"{report.event_type} for incident {report.incident_id}{when}: {outcome.value}"


# -- storing and applying ---------------------------------------------------------------------


def store_delivery(
    sessions: sessionmaker[Session],
    *,
    route: str,
    event: dict[str, Any],
    report: StatusReport,
    received_at: datetime,
) -> int | None:
    """Keep a delivery; its row id, or None when this event was stored before."""
    try:
        with sessions.begin() as session:
            row = PagerDutyDelivery(
                namespace=namespace_of(session),
                webhook_id=report.webhook_id,
                route=route,
                event_type=report.event_type,
                event=event,
                received_at=received_at,
            )
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:
        return None


def apply_delivery(sessions: sessionmaker[Session], delivery_id: int) -> ReportOutcome | None:
    """Apply a stored delivery to its cycle, once; None if it was applied already."""
    with sessions.begin() as session:
        delivery = session.scalars(
            select(PagerDutyDelivery).where(PagerDutyDelivery.id == delivery_id).with_for_update()
        ).first()
        if delivery is None or delivery.applied_at is not None:
            return None
        outcome = _apply(session, delivery)
        delivery.applied_at = utcnow()
        delivery.outcome = outcome.value
    log.info(
        "pagerduty webhook %s %s route=%s: %s",
        delivery.webhook_id,
        delivery.event_type,
        delivery.route,
        outcome.value,
    )
    return outcome


def apply_stored_deliveries(sessions: sessionmaker[Session], now: datetime, *, limit: int) -> int:
    """Apply deliveries stored but not applied (the ingress stopped between the two, or its
    apply failed); not those the ingress is applying right now."""
    with sessions.begin() as session:
        pending = list(
            session.scalars(
                select(PagerDutyDelivery.id)
                .where(
                    PagerDutyDelivery.namespace == namespace_of(session),
                    PagerDutyDelivery.applied_at.is_(None),
                    PagerDutyDelivery.received_at < now - APPLY_GRACE,
                )
                .order_by(PagerDutyDelivery.id)
                .limit(limit)
            )
        )
    return sum(1 for delivery_id in pending if apply_delivery(sessions, delivery_id) is not None)


def prune_deliveries(sessions: sessionmaker[Session], cutoff: datetime) -> int:
    """Forget deliveries applied before ``cutoff`` (PAGERBRIDGE_RETENTION_DAYS): PagerDuty
    stops retrying a delivery long before, so de-duplication no longer needs them."""
    with sessions.begin() as session:
        result = session.execute(
            delete(PagerDutyDelivery)
            .where(
                PagerDutyDelivery.namespace == namespace_of(session),
                PagerDutyDelivery.applied_at < cutoff,
            )
            .execution_options(synchronize_session=False)
        )
    return int(cast(CursorResult[Any], result).rowcount)


def _apply(session: Session, delivery: PagerDutyDelivery) -> ReportOutcome:
    try:
        report = read_report(delivery.event)
    except MalformedReport:  # checked before it was stored; kept for the record only
        return ReportOutcome.IGNORED
    if report.status is None:
        return ReportOutcome.IGNORED
    alert = _cycle_of(session, delivery.route, report)
    if alert is None:
        return ReportOutcome.UNKNOWN
    outcome = judge(alert, report, utcnow())
    if outcome is ReportOutcome.RESPONDER:
        follow_responder(alert, report, delivery.received_at)
        session.add(
            AlertEvent(
                event_id=report.webhook_id[:64],
                alert_pk=alert.id,
                source=alert.source,
                source_alert_id=alert.source_alert_id,
                kind="pagerduty",
                action=report.status.value if report.status else None,
                outcome=outcome.value,
                detail=describe(report, outcome),
                received_at=delivery.received_at,
            )
        )
    return outcome


def _cycle_of(session: Session, route: str, report: StatusReport) -> Alert | None:
    """The route's cycle owning the incident: by incident id, else by incident key (the
    Events API's dedup_key, or a create whose answer is not recorded yet); locked."""
    if report.incident_id is not None:
        found = session.scalars(
            select(Alert)
            .where(
                Alert.namespace == namespace_of(session),
                Alert.route == route,
                Alert.pagerduty_incident_id == report.incident_id,
            )
            .order_by(Alert.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if found is not None:
            return found
    if report.incident_key is None:
        return None
    # A key can come back once its incident is resolved (the API contact's keys): the newest.
    return session.scalars(
        select(Alert)
        .where(
            Alert.namespace == namespace_of(session),
            Alert.route == route,
            Alert.incident_key == report.incident_key,
        )
        .order_by(Alert.id.desc())
        .limit(1)
        .with_for_update()
    ).first()
