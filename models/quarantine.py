"""Requests the ingress rejected, kept so that an operator can see them and replay them.

CoScale does not retry a webhook it got a 4xx for (docs/coscale.md): a body refused for a rotated
token, a Content-Type header forgotten in CoScale, or JSON that could not be repaired would be
gone. Each is kept here, with why it was refused, until ``pagerbridge rejected --replay ID``
sends it through the ingress again or it ages out (``PAGERBRIDGE_QUARANTINE_MAX_ROWS``,
``PAGERBRIDGE_QUARANTINE_MAX_AGE_DAYS``). Never the request's Authorization header.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.alert import Id
from models.base import Base, UTCDateTime, utcnow
from worker.vocabulary import DEFAULT_NAMESPACE


class QuarantinedRequest(Base):
    __tablename__ = "quarantined_requests"
    __table_args__ = (
        # The age bound's delete, and the listing's order.
        Index("ix_quarantined_requests_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The bridge the row belongs to (models.namespace).
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    client: Mapped[str | None] = mapped_column(String(64))  # the peer's address
    status: Mapped[int] = mapped_column(Integer)  # what the ingress answered
    reason: Mapped[str] = mapped_column(Text)
    field: Mapped[str | None] = mapped_column(String(255))
    # The body as received, at most PAGERBRIDGE_MAX_BODY_BYTES of it; ``size`` is how many bytes
    # the request had (or announced in Content-Length): more than len(body) when it was cut.
    body: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)

    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    replay_status: Mapped[int | None] = mapped_column(Integer)
    replay_outcome: Mapped[str | None] = mapped_column(Text)

    @property
    def complete(self) -> bool:
        """Whether ``body`` is the whole body (it can be replayed)."""
        return len(self.body) >= self.size

    def __repr__(self) -> str:
        return f"<QuarantinedRequest #{self.id} {self.method} {self.path} {self.status}>"
