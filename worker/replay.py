"""Putting failed alerts back into delivery (``pagerbridge replay``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from worker.status import DeliveryState


def replay(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    alert_ids: Sequence[str] = (),
    all_failed: bool = False,
) -> list[str]:
    """Make failed alerts pending again, due now, with a fresh give-up clock.

    ``alert_ids`` name source alert ids (CoScale's, or the bridge's for the API contact); the
    latest cycle of each is replayed, whatever its state, so an operator can also push a
    parked alert. Returns ``source:alert_id`` of every alert put back.
    """
    with sessions.begin() as session:
        if all_failed:
            alerts = list(
                session.scalars(
                    select(Alert)
                    .where(Alert.delivery_state == DeliveryState.FAILED)
                    .order_by(Alert.pending_since, Alert.id)
                    .with_for_update()
                )
            )
        else:
            latest = (
                select(Alert.source, Alert.source_alert_id, func.max(Alert.cycle).label("cycle"))
                .where(Alert.source_alert_id.in_(list(alert_ids)))
                .group_by(Alert.source, Alert.source_alert_id)
                .subquery()
            )
            alerts = list(
                session.scalars(
                    select(Alert)
                    .join(
                        latest,
                        (Alert.source == latest.c.source)
                        & (Alert.source_alert_id == latest.c.source_alert_id)
                        & (Alert.cycle == latest.c.cycle),
                    )
                    .where(Alert.delivery_state != DeliveryState.DELIVERED)
                    .with_for_update()
                )
            )
        for alert in alerts:
            alert.delivery_state = DeliveryState.PENDING
            alert.attempts = 0
            alert.pending_since = now
            alert.next_attempt_at = now
            previous, alert.last_error = alert.last_error, None
            session.add(
                AlertEvent(
                    alert_pk=alert.id,
                    source=alert.source,
                    source_alert_id=alert.source_alert_id,
                    kind="delivery",
                    outcome="replayed",
                    detail=f"replayed by an operator; last error was: {previous}",
                )
            )
        return [f"{alert.source}:{alert.source_alert_id}" for alert in alerts]
