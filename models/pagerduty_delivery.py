"""PagerDuty's v3 webhook deliveries, stored before they are answered.

PagerDuty waits 5 s for an answer and retries what it did not get a 2xx for, so a delivery is
kept (one row per event id: a repeated delivery finds its row) and then applied to its alert
cycle; one the ingress could not apply at once is applied by the sweeper.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Index, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.alert import Id
from models.base import Base, UTCDateTime, utcnow
from worker.vocabulary import DEFAULT_NAMESPACE


class PagerDutyDelivery(Base):
    __tablename__ = "pagerduty_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id"),
        # The sweeper's look-up of deliveries not applied yet.
        Index("ix_pagerduty_deliveries_applied_at", "applied_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The bridge the row belongs to (models.namespace).
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    # The event's id (``event.id``, also sent as ``X-Webhook-Id``): the same on every retry.
    webhook_id: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    # The webhook's ``event`` object as PagerDuty sent it (it holds no secret).
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(32))


PAGERDUTY_DELIVERIES_TABLE = cast(Table, PagerDutyDelivery.__table__)
