"""What the console's pages show, read with the operator commands' own queries
(``worker/ops/report.py``, ``worker/ops/rejected.py``); plain dicts, rendered by the templates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import QuarantinedRequest
from worker.delivery.gate import DeliveryGate
from worker.ops.rejected import describe
from worker.ops.report import (
    AlertFilter,
    alert_page,
    delivery_report,
    pagerduty_calls,
)
from worker.vocabulary import DeliveryState

log = logging.getLogger(__name__)

QueueDepth = Callable[[], int]

# The overview's window of PagerDuty calls, and how many of them it lists.
CALL_MINUTES = 15
RECENT_CALLS = 10
NEWEST_ALERTS = 10
PAGE_SIZE = 50
# Alerts per table of the failed-and-parked page; the count above says how many there are.
TROUBLE_LIMIT = 200
REJECTED_LIMIT = 50
# Bytes of a rejected body the page shows: `pagerbridge rejected --show ID` prints the rest.
BODY_SHOWN = 16 * 1024


def overview(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    queue_depth: QueueDepth | None,
    gates: Mapping[str, DeliveryGate],
    rate_per_minute: float,
) -> dict[str, Any]:
    """The overview: deliveries by state, the queue, each route's gate, PagerDuty's answers."""
    with sessions() as session:
        report = delivery_report(session, now)
        calls = pagerduty_calls(session, now, minutes=CALL_MINUTES, recent=RECENT_CALLS)
        newest, _ = alert_page(session, AlertFilter(), limit=NEWEST_ALERTS)
    return {
        "report": report,
        "calls": calls,
        "newest": newest,
        "queue": _queue(queue_depth),
        "gates": [_gate(name, gate, rate_per_minute) for name, gate in gates.items()],
        "now": now.isoformat(),
    }


def _queue(queue_depth: QueueDepth | None) -> dict[str, Any]:
    if queue_depth is None:
        return {"depth": None, "error": "not known to this api"}
    try:
        return {"depth": queue_depth(), "error": None}
    except Exception as exc:  # Redis down: the page says so and shows the rest
        log.warning("console: queue depth unreadable: %s", type(exc).__name__)
        return {"depth": None, "error": f"Redis does not answer ({type(exc).__name__})"}


def _gate(name: str, gate: DeliveryGate, rate_per_minute: float) -> dict[str, Any]:
    row: dict[str, Any] = {"route": name, "configured_per_minute": rate_per_minute}
    try:
        row.update(gate.status().as_dict())
    except Exception as exc:  # Redis down: the page says so and shows the rest
        row["error"] = f"Redis does not answer ({type(exc).__name__})"
    return row


def alert_listing(
    sessions: sessionmaker[Session], where: AlertFilter, *, before: int | None
) -> dict[str, Any]:
    with sessions() as session:
        rows, next_before = alert_page(session, where, limit=PAGE_SIZE, before=before)
    return {"alerts": rows, "next_before": next_before}


def trouble(sessions: sessionmaker[Session], now: datetime) -> dict[str, Any]:
    """Failed and parked alerts, newest first, and how many of each there are."""
    with sessions() as session:
        counts = delivery_report(session, now)["by_state"]
        failed, _ = alert_page(
            session, AlertFilter(state=DeliveryState.FAILED), limit=TROUBLE_LIMIT
        )
        parked, _ = alert_page(
            session, AlertFilter(state=DeliveryState.PARKED), limit=TROUBLE_LIMIT
        )
    return {
        "failed": failed,
        "parked": parked,
        "failed_count": counts[DeliveryState.FAILED.value],
        "parked_count": counts[DeliveryState.PARKED.value],
        "limit": TROUBLE_LIMIT,
    }


def rejected_requests(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The quarantine's newest requests, each with (the start of) its body as text."""
    with sessions() as session:
        rows = session.scalars(
            select(QuarantinedRequest).order_by(QuarantinedRequest.id.desc()).limit(REJECTED_LIMIT)
        )
        return [rejected_request(row) for row in rows]


def rejected_request(row: QuarantinedRequest) -> dict[str, Any]:
    return {
        **describe(row),
        "body": row.body[:BODY_SHOWN].decode("utf-8", errors="replace"),
        "body_cut_for_display": len(row.body) > BODY_SHOWN,
    }


def one_rejected(sessions: sessionmaker[Session], request_id: int) -> dict[str, Any] | None:
    with sessions() as session:
        row = session.get(QuarantinedRequest, request_id)
        return rejected_request(row) if row is not None else None
