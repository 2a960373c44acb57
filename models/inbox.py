"""Events the ingress accepted while Redis was unreachable, kept until the sweeper applies them.

CoScale does not retry a failed webhook (docs/coscale.md), so a 503 is probably the end of that
event: when Redis is down but the database is not, the event waits here instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.alert import Id
from models.base import Base, UTCDateTime, utcnow
from worker.vocabulary import DEFAULT_NAMESPACE


class InboxEvent(Base):
    __tablename__ = "inbox_events"
    __table_args__ = (UniqueConstraint("event_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The bridge the row belongs to (models.namespace).
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    event_id: Mapped[str] = mapped_column(String(64))
    message: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


INBOX_EVENTS_TABLE = cast(Table, InboxEvent.__table__)
