"""The audit trail: every event received and every delivery attempt, in order."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, ForeignKey, Index, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.alert import Id
from models.base import Base, UTCDateTime, utcnow


class AlertEvent(Base):
    __tablename__ = "alert_events"
    __table_args__ = (
        # The ingress mints event_id; a redelivered Celery message finds its row and stops.
        UniqueConstraint("event_id"),
        Index("ix_alert_events_timeline", "source", "source_alert_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    event_id: Mapped[str | None] = mapped_column(String(64))
    alert_pk: Mapped[int | None] = mapped_column(
        Id, ForeignKey("alerts.id", ondelete="SET NULL"), index=True
    )
    source: Mapped[str] = mapped_column(String(80))
    source_alert_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # "received" | "delivery"
    action: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


ALERT_EVENTS_TABLE = cast(Table, AlertEvent.__table__)
