"""The quarantine: requests the ingress rejected, kept with why, bounded by count and age.

CoScale does not retry a webhook it got a 4xx for (docs/coscale.md), so a rejected body would be
gone. The api keeps each one here (``worker/ingress/middleware.py``); ``pagerbridge rejected`` lists
them and ``pagerbridge rejected --replay ID`` sends one through the ingress again once the
cause is fixed (``worker/ingress/replay_rejected.py``). The table never grows past
``PAGERBRIDGE_QUARANTINE_MAX_ROWS`` rows nor keeps a row past
``PAGERBRIDGE_QUARANTINE_MAX_AGE_DAYS``: both bounds are applied in the transaction that adds
rows, and by beat's hourly prune.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from models import QuarantinedRequest, utcnow
from models.namespace import namespace_of

PATH_MAX = 255  # the column's size
CONTENT_TYPE_MAX = 255
CLIENT_MAX = 64


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the ingress answered 4xx: what it was, and why. Never its Authorization."""

    method: str
    path: str
    status: int
    reason: str
    body: bytes
    size: int  # bytes the request had (or announced); more than len(body) when cut
    field: str | None = None
    content_type: str | None = None
    client: str | None = None
    received_at: datetime = dataclasses.field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class QuarantineBounds:
    max_rows: int
    max_age_days: float


def keep(
    session: Session, rejections: Sequence[Rejection], bounds: QuarantineBounds, now: datetime
) -> list[int]:
    """Add ``rejections`` (in the caller's transaction), keep the table within ``bounds``, and
    answer each new row's id."""
    namespace = namespace_of(session)
    rows = [
        QuarantinedRequest(
            namespace=namespace,
            received_at=rejection.received_at,
            method=rejection.method[:8],
            path=rejection.path[:PATH_MAX],
            content_type=_cut(rejection.content_type, CONTENT_TYPE_MAX),
            client=_cut(rejection.client, CLIENT_MAX),
            status=rejection.status,
            reason=rejection.reason,
            field=_cut(rejection.field, 255),
            body=rejection.body,
            size=rejection.size,
        )
        for rejection in rejections
    ]
    session.add_all(rows)
    session.flush()
    ids = [row.id for row in rows]
    prune(session, bounds, now)
    return ids


def prune(session: Session, bounds: QuarantineBounds, now: datetime) -> int:
    """Delete this bridge's rows older than the age bound, then the oldest beyond the count
    bound (each bridge keeps its own bounds' worth)."""
    ours = QuarantinedRequest.namespace == namespace_of(session)
    cutoff = now - timedelta(days=bounds.max_age_days)
    deleted = _deleted(
        session.execute(
            delete(QuarantinedRequest)
            .where(ours, QuarantinedRequest.received_at < cutoff)
            .execution_options(synchronize_session=False)
        )
    )
    # The newest id that is one too many: it and everything older go.
    first_too_many = (
        select(QuarantinedRequest.id)
        .where(ours)
        .order_by(QuarantinedRequest.id.desc())
        .offset(bounds.max_rows)
        .limit(1)
        .scalar_subquery()
    )
    deleted += _deleted(
        session.execute(
            delete(QuarantinedRequest)
            .where(ours, QuarantinedRequest.id <= first_too_many)
            .execution_options(synchronize_session=False)
        )
    )
    return deleted


def listing(session: Session, *, limit: int) -> list[dict[str, Any]]:
    """The newest rejected requests first, as ``pagerbridge rejected`` shows them (no body)."""
    rows = session.scalars(
        select(QuarantinedRequest)
        .where(QuarantinedRequest.namespace == namespace_of(session))
        .order_by(QuarantinedRequest.id.desc())
        .limit(limit)
    )
    return [describe(row) for row in rows]


def find(session: Session, request_id: int) -> QuarantinedRequest | None:
    """This bridge's rejected request ``request_id`` (None if none, or another bridge's)."""
    row = session.get(QuarantinedRequest, request_id)
    return row if row is not None and row.namespace == namespace_of(session) else None


def describe(row: QuarantinedRequest) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": row.received_at.isoformat(),
        "method": row.method,
        "path": row.path,
        "status": row.status,
        "reason": row.reason,
        "field": row.field,
        "content_type": row.content_type,
        "client": row.client,
        "size": row.size,
        "complete": row.complete,
        "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None,
        "replay_status": row.replay_status,
        "replay_outcome": row.replay_outcome,
    }


def record_replay(
    session: Session,
    row: QuarantinedRequest,
    status: int,
    outcome: str,
    now: datetime | None = None,
) -> None:
    row.replayed_at = now or utcnow()
    row.replay_status = status
    row.replay_outcome = outcome


def _cut(text: str | None, limit: int) -> str | None:
    return text[:limit] if text is not None else None


def _deleted(result: object) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
