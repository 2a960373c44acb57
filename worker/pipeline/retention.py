"""Retention: deleting alerts the bridge is done with, and their timelines.

An alert is done when PagerDuty confirmed what it wanted and what it wanted was "resolved":
``delivery_state = delivered`` and ``desired_status = resolved``. Once such an alert has not
changed for ``PAGERBRIDGE_RETENTION_DAYS``, its row and its ``alert_events`` rows are deleted.
Anything still owed to PagerDuty (pending, parked, failed) and anything not resolved (an open
incident the bridge may still have to acknowledge or resolve) is never deleted, however old.

Deletion runs in batches of at most ``BATCH_SIZE`` alerts, one short transaction each, walking
the primary key upwards (a keyset, so no batch re-reads rows a previous one looked at). On
PostgreSQL the rows are taken ``FOR UPDATE SKIP LOCKED``: a row a worker holds is left for the
next run instead of making either side wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from models.namespace import namespace_of
from worker.vocabulary import AlertStatus, DeliveryState

BATCH_SIZE = 1000  # alerts per transaction


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune deleted (or, for a dry run, would delete)."""

    alerts: int
    events: int
    cutoff: datetime  # alerts last updated before this were eligible
    complete: bool = True  # False when the time budget ran out with eligible alerts left

    def as_dict(self) -> dict[str, Any]:
        return {
            "alerts": self.alerts,
            "events": self.events,
            "cutoff": self.cutoff.isoformat(),
            "complete": self.complete,
        }


def retention_cutoff(now: datetime, retention_days: float) -> datetime:
    """Alerts last updated before this instant may be pruned."""
    return now - timedelta(days=retention_days)


def expired(cutoff: datetime, namespace: str) -> ColumnElement[bool]:
    """The rule: this bridge's, delivered, resolved, and untouched since ``cutoff``."""
    return and_(
        Alert.namespace == namespace,
        Alert.delivery_state == DeliveryState.DELIVERED,
        Alert.desired_status == AlertStatus.RESOLVED,
        Alert.updated_at < cutoff,
    )


def count_expired(sessions: sessionmaker[Session], cutoff: datetime) -> PruneResult:
    """What :func:`prune` would delete now (``pagerbridge prune --dry-run``)."""
    with sessions() as session:
        eligible = select(Alert.id).where(expired(cutoff, namespace_of(session)))
        alerts = session.scalar(select(func.count()).select_from(eligible.subquery()))
        events = session.scalar(
            select(func.count()).select_from(AlertEvent).where(AlertEvent.alert_pk.in_(eligible))
        )
    return PruneResult(alerts=int(alerts or 0), events=int(events or 0), cutoff=cutoff)


def prune(
    sessions: sessionmaker[Session],
    cutoff: datetime,
    *,
    batch_size: int = BATCH_SIZE,
    time_budget: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PruneResult:
    """Delete expired alerts and their events, ``batch_size`` alerts per transaction.

    ``time_budget`` (seconds, by ``clock``) stops starting new batches once spent, so a
    scheduled run ends well inside its task time limit; the next run goes on where this one
    stopped. ``None`` runs until nothing eligible is left.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = clock()
    alerts = events = 0
    after = 0  # the keyset: the highest alert id a batch has looked at
    while True:
        with sessions.begin() as session:
            ids = list(
                session.scalars(
                    select(Alert.id)
                    .where(expired(cutoff, namespace_of(session)), Alert.id > after)
                    .order_by(Alert.id)
                    .limit(batch_size)
                    .with_for_update(skip_locked=True)
                )
            )
            if ids:
                # Events first: their foreign key would otherwise be set to NULL, row by row.
                events += _deleted(
                    session.execute(
                        delete(AlertEvent)
                        .where(AlertEvent.alert_pk.in_(ids))
                        .execution_options(synchronize_session=False)
                    )
                )
                alerts += _deleted(
                    session.execute(
                        delete(Alert)
                        .where(Alert.id.in_(ids))
                        .execution_options(synchronize_session=False)
                    )
                )
        if len(ids) < batch_size:
            return PruneResult(alerts=alerts, events=events, cutoff=cutoff)
        after = ids[-1]
        if time_budget is not None and clock() - started >= time_budget:
            return PruneResult(alerts=alerts, events=events, cutoff=cutoff, complete=False)


def _deleted(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
