"""The API contact's incidents as PagerDuty shows them, read from the mapping.

An incident is an API-contact alert (``source = "api"``): one the bridge minted an id for, or
one opened before the bridge that an update adopted. It is read from the alerts table and,
while its events are accepted but not yet applied, from the inbox, so that an incident is
readable as soon as its create is answered. A reader sees only its routes' incidents.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from models import Alert, InboxEvent
from models.namespace import namespace_of
from worker.pipeline.message import DEFAULT_ROUTE, SOURCE_API, is_bridge_id
from worker.vocabulary import AlertStatus, advance

QUEUED = "queued"  # the delivery state of an incident whose create is still in the inbox


@dataclass(frozen=True, slots=True)
class IncidentView:
    id: str
    # PagerDuty's status as last known; "triggered" until PagerDuty has said otherwise.
    status: str
    desired_status: str
    delivery_state: str
    incident_key: str | None
    service_id: str | None
    title: str | None
    urgency: str | None
    route: str
    created_at: datetime
    pagerduty_incident_id: str | None = None
    pagerduty_incident_number: int | None = None
    pagerduty_incident_url: str | None = None
    forwarded: dict[str, Any] | None = None


def _of_alert(alert: Alert) -> IncidentView:
    return IncidentView(
        id=alert.source_alert_id,
        status=(alert.confirmed_status or AlertStatus.TRIGGERED).value,
        desired_status=alert.desired_status.value,
        delivery_state=alert.delivery_state.value,
        incident_key=alert.incident_key,
        service_id=alert.service_id,
        title=alert.title,
        urgency=alert.urgency,
        route=alert.route,
        created_at=alert.opened_at,
        pagerduty_incident_id=alert.pagerduty_incident_id,
        pagerduty_incident_number=alert.pagerduty_incident_number,
        pagerduty_incident_url=alert.pagerduty_incident_url,
        forwarded=alert.forwarded,
    )


def _queued(session: Session, *, alert_ids: Collection[str] | None = None) -> list[IncidentView]:
    """Incidents whose events wait in the inbox and that have no alerts row yet: created (a
    trigger is among them), their desired status the furthest their events reach."""
    alert_id = InboxEvent.message["alert_id"].as_string()
    namespace = namespace_of(session)
    statement = (
        select(InboxEvent.message).where(InboxEvent.namespace == namespace).order_by(InboxEvent.id)
    )
    if alert_ids is not None:
        statement = statement.where(alert_id.in_(list(alert_ids)))
    by_id: dict[str, list[dict[str, Any]]] = {}
    for message in session.scalars(statement):
        if message.get("source") == SOURCE_API and is_bridge_id(str(message["alert_id"])):
            by_id.setdefault(str(message["alert_id"]), []).append(message)
    if not by_id:
        return []
    stored = set(
        session.scalars(
            select(Alert.source_alert_id).where(
                Alert.namespace == namespace,
                Alert.source == SOURCE_API,
                Alert.source_alert_id.in_(list(by_id)),
            )
        )
    )
    views = []
    for incident_id, messages in by_id.items():
        trigger = next((m for m in messages if m["action"] == AlertStatus.TRIGGERED.value), None)
        if incident_id in stored or trigger is None:
            continue
        desired = AlertStatus.TRIGGERED
        for message in messages:
            if message["action"] is not None:  # None: an update with fields alone
                desired = advance(desired, AlertStatus(message["action"]))
        views.append(
            IncidentView(
                id=incident_id,
                status=AlertStatus.TRIGGERED.value,
                desired_status=desired.value,
                delivery_state=QUEUED,
                incident_key=trigger.get("incident_key"),
                service_id=trigger.get("service_id"),
                title=trigger.get("title"),
                urgency=trigger.get("urgency"),
                route=str(trigger.get("route") or DEFAULT_ROUTE),
                created_at=datetime.fromisoformat(trigger["received_at"]),
                forwarded=trigger.get("forwarded"),
            )
        )
    return sorted(views, key=lambda view: view.created_at)


def _readable(session: Session, routes: frozenset[str] | None) -> ColumnElement[bool]:
    """This bridge's API-contact alerts that ``routes`` may read (``None``: every route)."""
    base = and_(Alert.namespace == namespace_of(session), Alert.source == SOURCE_API)
    return base if routes is None else and_(base, Alert.route.in_(sorted(routes)))


def incident_by_id(
    session: Session, incident_id: str, routes: frozenset[str] | None
) -> IncidentView | None:
    """The incident of ``incident_id`` (a bridge id, or a PagerDuty id the mapping holds),
    ``None`` if there is none ``routes`` may read (``None``: every route)."""
    alert = session.scalars(
        select(Alert)
        .where(
            _readable(session, routes),
            or_(
                Alert.source_alert_id == incident_id,
                Alert.pagerduty_incident_id == incident_id,
            ),
        )
        .order_by(Alert.id.desc())
        .limit(1)
    ).first()
    if alert is not None:
        return _of_alert(alert)
    if not is_bridge_id(incident_id):
        return None
    for view in _queued(session, alert_ids=[incident_id]):
        if routes is None or view.route in routes:
            return view
    return None


def open_incident_with_key(
    session: Session, incident_key: str, service_id: str
) -> IncidentView | None:
    """An incident of the API contact, open as far as the bridge knows, with ``incident_key``
    on ``service_id``: what makes PagerDuty refuse a create (createIncident, incident_key).
    Every route's: the key is the service's, whichever token sent it."""
    alert = session.scalars(
        select(Alert)
        .where(
            Alert.namespace == namespace_of(session),
            Alert.source == SOURCE_API,
            Alert.incident_key == incident_key,
            Alert.service_id == service_id,
            Alert.desired_status != AlertStatus.RESOLVED,
            or_(Alert.confirmed_status.is_(None), Alert.confirmed_status != AlertStatus.RESOLVED),
        )
        .limit(1)
    ).first()
    if alert is not None:
        return _of_alert(alert)
    for view in _queued(session):
        if (
            view.incident_key == incident_key
            and view.service_id == service_id
            and view.desired_status != AlertStatus.RESOLVED.value
        ):
            return view
    return None


@dataclass(frozen=True, slots=True)
class IncidentPage:
    incidents: list[IncidentView]
    more: bool
    total: int | None


def list_incidents(
    session: Session,
    routes: frozenset[str] | None,
    *,
    incident_key: str | None,
    statuses: Sequence[str],
    service_ids: Sequence[str],
    limit: int,
    offset: int,
    total: bool,
) -> IncidentPage:
    """listIncidents over the mapping: oldest first, the applied ones (alerts table) before
    the ones still in the inbox (accepted last)."""
    shown_status = func.coalesce(Alert.confirmed_status, AlertStatus.TRIGGERED.value)
    conditions: list[ColumnElement[bool]] = [_readable(session, routes)]
    if incident_key:
        conditions.append(Alert.incident_key == incident_key)
    if statuses:
        conditions.append(shown_status.in_(list(statuses)))
    if service_ids:
        conditions.append(Alert.service_id.in_(list(service_ids)))
    wanted = offset + limit + 1
    stored = [
        _of_alert(alert)
        for alert in session.scalars(
            select(Alert).where(*conditions).order_by(Alert.id).limit(wanted)
        )
    ]
    queued = [
        view
        for view in _queued(session)
        if _matches(view, routes, incident_key, statuses, service_ids)
    ]
    combined = stored + queued
    count = None
    if total:
        stored_count = session.scalar(select(func.count()).select_from(Alert).where(*conditions))
        count = int(stored_count or 0) + len(queued)
    return IncidentPage(combined[offset : offset + limit], len(combined) > offset + limit, count)


def _matches(
    view: IncidentView,
    routes: frozenset[str] | None,
    incident_key: str | None,
    statuses: Iterable[str],
    service_ids: Collection[str],
) -> bool:
    return (
        (routes is None or view.route in routes)
        and (not incident_key or view.incident_key == incident_key)
        and (not statuses or view.status in statuses)
        and (not service_ids or view.service_id in service_ids)
    )


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as PagerDuty writes its times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
