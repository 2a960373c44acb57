"""Putting failed alerts back into delivery (``pagerbridge replay``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent
from models.namespace import namespace_of
from worker.vocabulary import DeliveryState

# Alerts put back per transaction: a replay of thousands of failed alerts never holds their row
# locks all at once, and the command can show its progress.
REPLAY_BATCH = 100


def replay(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    alert_ids: Sequence[str] = (),
    all_failed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Make failed alerts pending again, due now, with a fresh give-up clock.

    ``alert_ids`` name source alert ids (CoScale's, or the bridge's for the API contact); the
    latest cycle of each is replayed, whatever its state but delivered, so an operator can also
    push a parked alert. Alerts are put back ``REPLAY_BATCH`` per transaction, each checked
    again under its row lock; ``progress(done, total)`` is called after each batch. Returns
    ``source:alert_id`` of every alert put back.
    """
    with sessions() as session:
        pks = _candidates(session, alert_ids, all_failed)
    eligible = (
        Alert.delivery_state == DeliveryState.FAILED
        if all_failed
        else Alert.delivery_state != DeliveryState.DELIVERED
    )
    replayed: list[str] = []
    for start in range(0, len(pks), REPLAY_BATCH):
        batch = pks[start : start + REPLAY_BATCH]
        order = {pk: position for position, pk in enumerate(batch)}
        with sessions.begin() as session:
            alerts = sorted(
                session.scalars(
                    select(Alert)
                    .where(Alert.namespace == namespace_of(session), Alert.id.in_(batch), eligible)
                    .with_for_update()
                ),
                key=lambda alert: order[alert.id],
            )
            for alert in alerts:
                _put_back(session, alert, now)
            replayed += [f"{alert.source}:{alert.source_alert_id}" for alert in alerts]
        if progress is not None:
            progress(start + len(batch), len(pks))
    return replayed


def _candidates(session: Session, alert_ids: Sequence[str], all_failed: bool) -> list[int]:
    """Primary keys of this bridge's alerts to replay, oldest first for ``all_failed``."""
    ours = Alert.namespace == namespace_of(session)
    if all_failed:
        return list(
            session.scalars(
                select(Alert.id)
                .where(ours, Alert.delivery_state == DeliveryState.FAILED)
                .order_by(Alert.pending_since, Alert.id)
            )
        )
    latest = (
        select(Alert.source, Alert.source_alert_id, func.max(Alert.cycle).label("cycle"))
        .where(ours, Alert.source_alert_id.in_(list(alert_ids)))
        .group_by(Alert.source, Alert.source_alert_id)
        .subquery()
    )
    return list(
        session.scalars(
            select(Alert.id)
            .join(
                latest,
                (Alert.source == latest.c.source)
                & (Alert.source_alert_id == latest.c.source_alert_id)
                & (Alert.cycle == latest.c.cycle),
            )
            .where(ours, Alert.delivery_state != DeliveryState.DELIVERED)
            .order_by(Alert.id)
        )
    )


def _put_back(session: Session, alert: Alert, now: datetime) -> None:
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
