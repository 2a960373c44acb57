"""CoScale's API contact: PagerDuty's own incident endpoints, answered at once
(``POST /incidents``, ``PUT /incidents``, ``PUT /incidents/{id}``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request
from sqlalchemy.exc import SQLAlchemyError

from models import utcnow
from worker.errors import ServiceUnavailable
from worker.ingress.access import Caller, bridge_incident_routes, mint_bridge_id, plan_updates
from worker.ingress.context import BODY_ERRORS, ERROR, ApiError, Ingress, json_body
from worker.ingress.schemas import (
    INCIDENT_ID_MAX,
    INCIDENT_ID_PATTERN,
    BulkUpdateRequest,
    CreateIncidentRequest,
    IncidentAnswer,
    IncidentEnvelope,
    IncidentsEnvelope,
    ServiceAnswer,
    SingleUpdateRequest,
)
from worker.pipeline.message import DEFAULT_ROUTE, SOURCE_API, AlertEventMessage, new_event_id
from worker.title import TITLE_LIMIT, truncate
from worker.vocabulary import AlertStatus, parse_action

REFUSALS: dict[int | str, dict[str, Any]] = {403: ERROR, 404: ERROR, 429: ERROR}


def incidents_router(ingress: Ingress) -> APIRouter:
    router = APIRouter()
    settings = ingress.settings

    @router.post(
        "/incidents",
        status_code=201,
        response_model=IncidentEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, 403: ERROR},
        openapi_extra=json_body(CreateIncidentRequest),
    )
    async def create_incident(
        request: Request, caller: Caller = ingress.any_caller
    ) -> IncidentEnvelope:
        body, repaired = await ingress.read_body(request, CreateIncidentRequest)
        incident = body.incident
        named = incident.service.id if incident.service else None
        route = ingress.routes.for_service_id(named) if named else None
        if route is None:
            if not (caller.anyone or DEFAULT_ROUTE in caller.routes):
                raise ingress.refused()
            service_id = ingress.service_for(named, "incident.service.id")
        else:
            if not (caller.anyone or route.name in caller.routes):
                raise ingress.refused()
            service_id = named or ""
        bridge_id = mint_bridge_id()
        title = truncate(incident.title, TITLE_LIMIT)
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_API,
            alert_id=bridge_id,
            action=AlertStatus.TRIGGERED,
            received_at=utcnow(),
            title=title,
            details=incident.body.details if incident.body else None,
            service_id=service_id,
            urgency=incident.urgency,
            fields=ingress.audit(repaired),
            **ingress.routed_fields(route),
        )
        await ingress.publish(event)
        return IncidentEnvelope(
            incident=IncidentAnswer(
                id=bridge_id,
                status="triggered",
                title=title,
                summary=title,
                service=ServiceAnswer(id=service_id),
                urgency=incident.urgency,
                html_url=ingress.alert_url(bridge_id),
            )
        )

    def known_bridge_ids(ids: list[str]) -> dict[str, str]:
        try:
            with ingress.sessions() as session:
                return bridge_incident_routes(session, ids)
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(
                f"cannot look up the incidents' routes: the database is unavailable "
                f"({type(exc).__name__})"
            ) from exc

    async def accept_updates(
        caller: Caller, updates: Sequence[tuple[str, str]], repaired: bool
    ) -> list[IncidentAnswer]:
        """Status updates for incidents ``caller`` may reach, all or none: an id of another
        route, an unknown bridge id, or a refused foreign id refuses the request, saying which
        and why (README, "Security model")."""
        ids = [incident_id for incident_id, _ in updates]
        known = await anyio.to_thread.run_sync(known_bridge_ids, ids)
        allowance = min(
            settings.foreign_updates_per_request,
            settings.foreign_updates_per_minute - ingress.foreign_updates.count(caller.key),
        )
        plan = plan_updates(
            ids,
            caller,
            known,
            forward_foreign=settings.forward_foreign_updates,
            foreign_allowance=max(0, allowance),
        )
        if plan.refused:
            statuses = {refusal.status for refusal in plan.refused}
            problems = [f"{refusal.incident_id}: {refusal.reason}" for refusal in plan.refused]
            raise ApiError(
                404 if 404 in statuses else min(statuses),
                f"{len(plan.refused)} of {len(set(ids))} incident(s) refused, nothing "
                f"updated: {problems[0]}" + ("; see errors for all" if len(problems) > 1 else ""),
                field="incidents",
                errors=problems,
            )
        ingress.foreign_updates.add(caller.key, len(plan.foreign))
        events = []
        for incident_id, status in updates:
            foreign_route = plan.foreign.get(incident_id)
            route_name = plan.bridge.get(incident_id) or foreign_route or DEFAULT_ROUTE
            route = ingress.routes.by_name(route_name) if route_name != DEFAULT_ROUTE else None
            events.append(
                AlertEventMessage(
                    event_id=new_event_id(),
                    source=SOURCE_API,
                    alert_id=incident_id,
                    action=parse_action(status),
                    received_at=utcnow(),
                    # An incident opened before the switch: adopted, its service and status
                    # checked by the worker before anything is sent (worker/delivery/policy.py).
                    incident_id=incident_id if foreign_route else None,
                    fields=ingress.audit(repaired),
                    **ingress.routed_fields(route),
                )
            )
        await ingress.publish(*events)
        return [
            IncidentAnswer(id=incident_id, status=status, html_url=ingress.alert_url(incident_id))
            for incident_id, status in updates
        ]

    @router.put(
        "/incidents",
        response_model=IncidentsEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, **REFUSALS},
        openapi_extra=json_body(BulkUpdateRequest),
    )
    async def update_incidents(
        request: Request, caller: Caller = ingress.any_caller
    ) -> IncidentsEnvelope:
        body, repaired = await ingress.read_body(request, BulkUpdateRequest)
        updates = [(item.id, item.status) for item in body.incidents]
        return IncidentsEnvelope(incidents=await accept_updates(caller, updates, repaired))

    @router.put(
        "/incidents/{incident_id}",
        response_model=IncidentEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, **REFUSALS},
        openapi_extra=json_body(SingleUpdateRequest),
    )
    async def update_incident(
        request: Request,
        incident_id: Annotated[
            str, Path(min_length=1, max_length=INCIDENT_ID_MAX, pattern=INCIDENT_ID_PATTERN)
        ],
        caller: Caller = ingress.any_caller,
    ) -> IncidentEnvelope:
        body, repaired = await ingress.read_body(request, SingleUpdateRequest)
        answers = await accept_updates(caller, [(incident_id, body.incident.status)], repaired)
        return IncidentEnvelope(incident=answers[0])

    return router
