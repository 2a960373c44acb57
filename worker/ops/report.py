"""What the operator commands (`status`, `alerts`, `alert`) report, read from the database.

Each function returns plain dicts of JSON types: ``--json`` prints them as they are, and the
tables show the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Alert, AlertEvent
from models.namespace import namespace_of
from worker.pipeline.message import SOURCE_API, SOURCE_COSCALE
from worker.vocabulary import DeliveryState

SOURCES = (SOURCE_COSCALE, SOURCE_API)
# Delivery outcomes the reconciler records when PagerDuty did not do what was asked
# (worker/delivery/reconcile.py records the alert's new delivery state as the outcome).
ERROR_OUTCOMES = tuple(
    state.value for state in (DeliveryState.PENDING, DeliveryState.PARKED, DeliveryState.FAILED)
)
# `status` looks for the last PagerDuty error among this many newest events: a range of the
# primary key, so the look-up stays quick on a large table with no error in it.
LAST_ERROR_WINDOW = 100_000


def delivery_report(session: Session, now: datetime) -> dict[str, Any]:
    """Alerts by delivery state, the oldest waiting delivery, the last PagerDuty error."""
    ours = Alert.namespace == namespace_of(session)
    counts: dict[DeliveryState, int] = {
        state: count
        for state, count in session.execute(
            select(Alert.delivery_state, func.count()).where(ours).group_by(Alert.delivery_state)
        )
    }
    oldest = session.scalars(
        select(Alert)
        .where(ours, Alert.delivery_state.in_([DeliveryState.PENDING, DeliveryState.PARKED]))
        .order_by(Alert.pending_since)
        .limit(1)
    ).first()
    return {
        "by_state": {state.value: counts.get(state, 0) for state in DeliveryState},
        "oldest_pending": None
        if oldest is None
        else {
            "alert": f"{oldest.source}:{oldest.source_alert_id}",
            "source": oldest.source,
            "alert_id": oldest.source_alert_id,
            "cycle": oldest.cycle,
            "state": oldest.delivery_state.value,
            "since": _iso(oldest.pending_since),
            "age_seconds": None
            if oldest.pending_since is None
            else round((now - oldest.pending_since).total_seconds(), 1),
            "attempts": oldest.attempts,
            "last_error": oldest.last_error,
        },
        "last_pagerduty_error": last_pagerduty_error(session),
    }


def last_pagerduty_error(session: Session) -> dict[str, Any] | None:
    """The newest delivery that PagerDuty refused or did not answer, if any recent one."""
    newest = session.scalar(select(func.max(AlertEvent.id)))
    if newest is None:
        return None
    event = session.scalars(
        select(AlertEvent)
        .join(Alert, Alert.id == AlertEvent.alert_pk)
        .where(
            Alert.namespace == namespace_of(session),
            AlertEvent.id > newest - LAST_ERROR_WINDOW,
            AlertEvent.kind == "delivery",
            AlertEvent.outcome.in_(ERROR_OUTCOMES),
        )
        .order_by(AlertEvent.id.desc())
        .limit(1)
    ).first()
    if event is None:
        return None
    return {
        "at": _iso(event.created_at),
        "alert": f"{event.source}:{event.source_alert_id}",
        "outcome": event.outcome,
        "error": event.detail,
    }


def list_alerts(
    session: Session, *, state: DeliveryState | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Alert cycles, newest first (by creation), optionally in one delivery state."""
    return alert_page(session, AlertFilter(state=state), limit=limit)[0]


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alert cycles a listing shows; ``None`` fields do not filter."""

    state: DeliveryState | None = None
    route: str | None = None
    source: str | None = None
    alert_id_prefix: str | None = None


def alert_page(
    session: Session, where: AlertFilter, *, limit: int, before: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` alert cycles matching ``where``, newest first, older than the cycle
    ``before`` (a cursor from a previous page); and the cursor of the next page, if any.

    A cursor on the primary key rather than an offset: a page deep in a large table costs what
    the first one does, and alerts arriving meanwhile do not shift the pages.
    """
    query = (
        select(Alert)
        .where(Alert.namespace == namespace_of(session))
        .order_by(Alert.id.desc())
        .limit(limit + 1)
    )
    if where.state is not None:
        query = query.where(Alert.delivery_state == where.state)
    if where.route is not None:
        query = query.where(Alert.route == where.route)
    if where.source is not None:
        query = query.where(Alert.source == where.source)
    if where.alert_id_prefix:
        query = query.where(
            Alert.source_alert_id.startswith(where.alert_id_prefix, autoescape=True)
        )
    if before is not None:
        query = query.where(Alert.id < before)
    alerts = list(session.scalars(query))
    more = len(alerts) > limit
    alerts = alerts[:limit]
    return [alert_row(alert) for alert in alerts], alerts[-1].id if more else None


# Delivery outcomes an operator's action writes to the timeline, not a PagerDuty call.
OPERATOR_OUTCOMES = ("replayed",)


def pagerduty_calls(
    session: Session, now: datetime, *, minutes: float, recent: int
) -> dict[str, Any]:
    """PagerDuty's answers over the last ``minutes``, counted by outcome, and the newest
    ``recent`` of them, as the delivery timeline recorded them."""
    newest = session.scalar(select(func.max(AlertEvent.id)))
    if newest is None:
        return {"minutes": minutes, "by_outcome": {}, "recent": []}
    calls = (
        select(AlertEvent)
        .where(
            AlertEvent.id > newest - LAST_ERROR_WINDOW,
            AlertEvent.kind == "delivery",
            AlertEvent.outcome.not_in(OPERATOR_OUTCOMES),
            AlertEvent.created_at >= now - timedelta(minutes=minutes),
        )
        .order_by(AlertEvent.id.desc())
    )
    answered = calls.subquery()
    by_outcome = {
        str(outcome): int(count)
        for outcome, count in session.execute(
            select(answered.c.outcome, func.count()).group_by(answered.c.outcome)
        )
    }
    return {
        "minutes": minutes,
        "by_outcome": dict(sorted(by_outcome.items())),
        "recent": [
            {
                "at": _iso(event.created_at),
                "source": event.source,
                "alert_id": event.source_alert_id,
                "outcome": event.outcome,
                "error": event.outcome in ERROR_OUTCOMES,
                "detail": event.detail,
            }
            for event in session.scalars(calls.limit(recent))
        ],
    }


def alert_histories(
    session: Session, alert_id: str, *, source: str | None = None
) -> list[dict[str, Any]]:
    """Every cycle and the whole timeline of ``alert_id``, one entry per source that has it.

    Usually one: CoScale's ids and the ids the bridge mints for the API contact differ.
    """
    cycles = list(
        session.scalars(
            select(Alert)
            # The (namespace, source, source_alert_id, cycle) index serves this look-up.
            .where(Alert.namespace == namespace_of(session))
            .where(Alert.source.in_([source] if source else SOURCES))
            .where(Alert.source_alert_id == alert_id)
            .order_by(Alert.source, Alert.cycle)
        )
    )
    histories = []
    for name in dict.fromkeys(alert.source for alert in cycles):
        own = [alert for alert in cycles if alert.source == name]
        cycle_of = {alert.id: alert.cycle for alert in own}
        events = session.scalars(
            select(AlertEvent)
            # By the cycles' ids: another bridge's alert of the same id has its own.
            .where(AlertEvent.alert_pk.in_(list(cycle_of)))
            .order_by(AlertEvent.id)
        )
        histories.append(
            {
                "source": name,
                "alert_id": alert_id,
                "cycles": [alert_row(alert) for alert in own],
                "timeline": [
                    {
                        "at": _iso(event.received_at or event.created_at),
                        "cycle": cycle_of.get(event.alert_pk) if event.alert_pk else None,
                        "kind": event.kind,
                        "action": event.action,
                        "outcome": event.outcome,
                        "detail": event.detail,
                        "fields": event.payload or {},
                    }
                    for event in events
                ],
            }
        )
    return histories


def alert_row(alert: Alert) -> dict[str, Any]:
    """One alert cycle as the operator commands show it."""
    return {
        "source": alert.source,
        "alert_id": alert.source_alert_id,
        "cycle": alert.cycle,
        "route": alert.route,
        "title": alert.title,
        "desired_status": alert.desired_status.value,
        "confirmed_status": alert.confirmed_status.value if alert.confirmed_status else None,
        "responder": alert.responder,
        "responder_at": _iso(alert.responder_at),
        "delivery_state": alert.delivery_state.value,
        "attempts": alert.attempts,
        "pagerduty_incident_id": alert.pagerduty_incident_id,
        "pagerduty_incident_number": alert.pagerduty_incident_number,
        "pagerduty_incident_url": alert.pagerduty_incident_url,
        "next_attempt_at": _iso(alert.next_attempt_at),
        "last_error": alert.last_error,
        "created_at": _iso(alert.created_at),
        "updated_at": _iso(alert.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
