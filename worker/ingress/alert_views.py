"""The mapping, as the api shows it: ``GET /alerts/{alert_id}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, select

from models import Alert, AlertEvent
from models.namespace import namespace_of
from worker.ingress.access import Caller
from worker.ingress.context import ERROR, ApiError, Ingress
from worker.ingress.schemas import ALERT_ID_MAX, ALERT_ID_PATTERN, AlertView, TimelineEntry
from worker.pipeline.message import REPAIRED

TIMELINE_LIMIT = 50


def alerts_router(ingress: Ingress) -> APIRouter:
    router = APIRouter()

    @router.get("/alerts/{alert_id}", response_model=AlertView, responses={404: ERROR})
    def show_alert(
        alert_id: Annotated[
            str, Path(min_length=1, max_length=ALERT_ID_MAX, pattern=ALERT_ID_PATTERN)
        ],
        source: Annotated[
            str | None, Query(min_length=1, max_length=80, pattern=ALERT_ID_PATTERN)
        ] = None,
        caller: Caller = ingress.any_caller,
    ) -> AlertView:
        with ingress.sessions() as session:
            ours = Alert.namespace == namespace_of(session)
            query = select(Alert).where(ours, Alert.source_alert_id == alert_id)
            if source:
                query = query.where(Alert.source == source)
            if not caller.anyone:  # a token sees its own routes' alerts only
                query = query.where(Alert.route.in_(caller.routes))
            alert = session.scalars(query.order_by(Alert.cycle.desc(), Alert.id.desc())).first()
            if alert is None:
                raise ApiError(
                    404,
                    f"no alert {alert_id!r} (yet): an event just accepted may "
                    "still be in the queue",
                    field="alert_id",
                )
            same_alert = (
                ours,
                Alert.source == alert.source,
                Alert.source_alert_id == alert.source_alert_id,
            )
            cycles = session.scalar(select(func.count()).select_from(Alert).where(*same_alert))
            events = session.scalars(
                select(AlertEvent)
                # By the cycles' ids: another bridge's alert of the same id has its own.
                .where(AlertEvent.alert_pk.in_(select(Alert.id).where(*same_alert)))
                .order_by(AlertEvent.id.desc())
                .limit(TIMELINE_LIMIT)
            ).all()
            return alert_view(alert, int(cycles or 1), list(reversed(events)))

    return router


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _repaired_note(event: AlertEvent) -> str | None:
    if event.payload and event.payload.get(REPAIRED) == "true":
        return "body repaired: the JSON had unescaped characters in a value"
    return None


def alert_view(alert: Alert, cycles: int, events: list[AlertEvent]) -> AlertView:
    return AlertView(
        source=alert.source,
        alert_id=alert.source_alert_id,
        cycle=alert.cycle,
        cycles=cycles,
        route=alert.route,
        backend=alert.backend,
        credential_id=alert.credential_id,
        incident_key=alert.incident_key,
        service_id=alert.service_id,
        title=alert.title,
        pagerduty_incident_id=alert.pagerduty_incident_id,
        pagerduty_incident_number=alert.pagerduty_incident_number,
        pagerduty_incident_url=alert.pagerduty_incident_url,
        desired_status=alert.desired_status.value,
        confirmed_status=alert.confirmed_status.value if alert.confirmed_status else None,
        responder=alert.responder,
        responder_at=_iso(alert.responder_at),
        delivery_state=alert.delivery_state.value,
        attempts=alert.attempts,
        next_attempt_at=_iso(alert.next_attempt_at),
        last_error=alert.last_error,
        created_at=alert.created_at.isoformat(),
        updated_at=alert.updated_at.isoformat(),
        timeline=[
            TimelineEntry(
                at=(event.received_at or event.created_at).isoformat(),
                kind=event.kind,
                action=event.action,
                outcome=event.outcome,
                detail=event.detail or _repaired_note(event),
            )
            for event in events
        ],
    )
