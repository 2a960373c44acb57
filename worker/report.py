"""What `pagerbridge status` reports, read from the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from models import Alert, make_engine, make_session_factory
from worker.errors import ServiceUnavailable
from worker.status import DeliveryState


def delivery_report(database_url: str) -> dict[str, Any]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            counts: dict[DeliveryState, int] = {
                state: count
                for state, count in session.execute(
                    select(Alert.delivery_state, func.count()).group_by(Alert.delivery_state)
                )
            }
            oldest = session.scalars(
                select(Alert)
                .where(Alert.delivery_state.in_([DeliveryState.PENDING, DeliveryState.PARKED]))
                .order_by(Alert.pending_since)
                .limit(1)
            ).first()
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(
            f"cannot read the database ({exc.__class__.__name__}); is it migrated and up?"
        ) from exc
    finally:
        engine.dispose()
    return {
        "by_state": {state.value: counts.get(state, 0) for state in DeliveryState},
        "oldest_pending": None
        if oldest is None
        else {
            "alert": f"{oldest.source}:{oldest.source_alert_id}",
            "cycle": oldest.cycle,
            "state": oldest.delivery_state.value,
            "since": oldest.pending_since.isoformat() if oldest.pending_since else None,
            "attempts": oldest.attempts,
            "last_error": oldest.last_error,
        },
    }
