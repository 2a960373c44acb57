"""The sweeper: finds alerts whose next attempt is due and hands them back to the workers.

Retries live in SQL (``next_attempt_at``), not in Celery countdowns: a Redis countdown longer
than the broker's visibility timeout is redelivered over and over, and a Redis that lost its
data would lose it. So anything pending survives a flushed Redis; the sweeper finds it again.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert
from models.namespace import namespace_of
from worker.vocabulary import AlertStatus, DeliveryState

# How long a swept alert stays out of the next sweeps while its message waits in the queue.
# Short: if the worker that prefetched the message dies, the alert is swept again this soon.
REQUEUE_GRACE = timedelta(seconds=20)


# worker.delivery.policy.drain_rank in SQL: when more alerts are due than a sweep takes, those whose
# incident exists (an acknowledge or resolve) or that resolved go first, then high urgency.
DRAIN_ORDER = (
    case(
        (
            or_(
                Alert.pagerduty_incident_id.is_not(None),
                Alert.desired_status != AlertStatus.TRIGGERED,
            ),
            0,
        ),
        else_=1,
    ),
    case((Alert.urgency == "low", 1), else_=0),
)


def due_alerts(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    limit: int,
    closed_routes: Collection[str] = (),
) -> list[int]:
    """Ids of alerts due for another attempt, oldest first, marked as queued.

    While a route's gate is closed (an outage, refused credentials) its parked alerts stay where
    they are but for the oldest one, which goes to probe PagerDuty; the gate's recovery drains
    the rest. Re-parking thousands of alerts every sweep would only churn the database. Each
    route has its own gate: one route's outage holds back only that route's alerts.
    """
    free = or_(Alert.lease_owner.is_(None), Alert.lease_expires_at < now)
    parked_here = Alert.delivery_state == DeliveryState.PARKED
    if closed_routes:
        parked_here = and_(parked_here, Alert.route.not_in(list(closed_routes)))
    with sessions.begin() as session:
        ours = Alert.namespace == namespace_of(session)
        query = (
            select(Alert)
            .where(
                ours,
                or_(Alert.delivery_state == DeliveryState.PENDING, parked_here),
                Alert.next_attempt_at <= now,
                free,
            )
            .order_by(*DRAIN_ORDER, Alert.next_attempt_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            # Two beats by mistake, or a slow sweep overlapping the next: neither queues twice.
            query = query.with_for_update(skip_locked=True)
        alerts = list(session.scalars(query))
        for route in sorted(closed_routes):
            probe = session.scalars(
                select(Alert)
                .where(
                    ours, Alert.delivery_state == DeliveryState.PARKED, Alert.route == route, free
                )
                .order_by(Alert.pending_since, Alert.id)
                .limit(1)
            ).first()
            if probe is not None and probe not in alerts:
                alerts.append(probe)
        for alert in alerts:
            alert.next_attempt_at = now + REQUEUE_GRACE
        return [alert.id for alert in alerts]


def wake_parked(sessions: sessionmaker[Session], now: datetime) -> int:
    """Make every parked alert due now (a worker started, perhaps with a fixed token)."""
    with sessions.begin() as session:
        woken = session.execute(
            update(Alert)
            .where(
                Alert.namespace == namespace_of(session),
                Alert.delivery_state == DeliveryState.PARKED,
            )
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(woken.rowcount)  # type: ignore[attr-defined]
