"""CoScale's Webhook contact: ``POST /webhooks/coscale[/<route>]``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from models import utcnow
from worker.coscale import incident_details, incident_title, is_web_link
from worker.ingress.access import Caller
from worker.ingress.context import BODY_ERRORS, ERROR, ApiError, Ingress, json_body
from worker.ingress.schemas import CoScaleWebhook, EventAccepted
from worker.logs import quoted
from worker.pipeline.message import (
    BACKEND_EVENTS,
    BACKEND_REST,
    DEFAULT_ROUTE,
    SOURCE_COSCALE,
    AlertEventMessage,
    new_event_id,
    route_source,
)
from worker.routes_file import ROUTE_NAME_PATTERN, Route, credential_id
from worker.title import TITLE_LIMIT, truncate
from worker.vocabulary import parse_action

log = logging.getLogger("worker.ingress.app")


def webhooks_router(ingress: Ingress) -> APIRouter:
    router = APIRouter()
    settings = ingress.settings

    async def accept_webhook(request: Request, route: Route | None) -> EventAccepted:
        """A CoScale event for ``route`` (None: the default route, the PAGERDUTY_* settings)."""
        body, repaired = await ingress.read_body(request, CoScaleWebhook)
        action = parse_action(body.action)
        fields = body.model_dump(exclude_none=True, exclude={"service_id", "title", "urgency"})
        if "link" in fields and not is_web_link(fields["link"]):
            # Only a web address becomes a link a responder may click in PagerDuty.
            log.warning("dropped the link of alert %s: not an http(s) URL", quoted(body.alert_id))
            del fields["link"]
        # The values are placed in the title in one pass and never read as a template, format
        # string or markup again (worker/title.py); the database sees them as bound parameters.
        routed: dict[str, Any] = {}
        given_title = truncate(body.title, TITLE_LIMIT) if body.title else None
        urgency: str | None
        if route is None:
            service_id: str | None = ingress.service_for(body.service_id, "service_id")
            urgency = body.urgency
            title = given_title or incident_title(settings.title_template, fields)
        elif route.rest is not None:
            service_id = route.rest.service_id
            urgency = body.urgency or route.rest.urgency_for(fields)
            title = given_title or route.rest.title(fields)
            routed = {"route": route.name, "backend": BACKEND_REST}
        else:
            assert route.events is not None
            trigger = route.events.build("trigger", "-", fields)
            # The worker adds the cycle's dedup_key and the action when it sends.
            del trigger["dedup_key"], trigger["event_action"]
            if given_title:
                trigger["payload"]["summary"] = given_title
            title, service_id, urgency = trigger["payload"]["summary"], None, None
            routed = {"route": route.name, "backend": BACKEND_EVENTS, "event_payload": trigger}
        if route is not None:
            routed["credential_id"] = credential_id(route)
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=route_source(SOURCE_COSCALE, route.name if route else DEFAULT_ROUTE),
            alert_id=body.alert_id,
            action=action,
            received_at=utcnow(),
            title=title,
            details=incident_details(fields),
            service_id=service_id,
            urgency=urgency,
            fields={**fields, **ingress.audit(repaired)},
            **routed,
        )
        where = await ingress.publish(event)
        return EventAccepted(
            alert_id=event.alert_id,
            event_id=event.event_id,
            action=action.value,
            queued_in=where,
            alert_url=ingress.alert_url(event.alert_id, event.source),
            repaired=repaired,
        )

    @router.post(
        "/webhooks/coscale",
        status_code=202,
        response_model=EventAccepted,
        responses=BODY_ERRORS,
        openapi_extra=json_body(CoScaleWebhook),
    )
    async def coscale_webhook(
        request: Request, _caller: Caller = ingress.default_caller
    ) -> EventAccepted:
        return await accept_webhook(request, None)

    @router.post(
        "/webhooks/coscale/{route_name}",
        status_code=202,
        response_model=EventAccepted,
        responses={**BODY_ERRORS, 404: ERROR},
        openapi_extra=json_body(CoScaleWebhook),
    )
    async def routed_webhook(
        request: Request,
        route_name: Annotated[str, Path(min_length=1, max_length=63, pattern=ROUTE_NAME_PATTERN)],
        caller: Caller = ingress.any_caller,
    ) -> EventAccepted:
        """CoScale's Webhook contact for a route of the routes file (its own tokens)."""
        route = ingress.routes.by_name(route_name)
        if route is None:
            # Only a caller holding some valid token gets this far.
            raise ApiError(404, f"no route {route_name!r} in the routes file", field="route_name")
        if not (caller.anyone or route.name in caller.routes):
            raise ingress.refused()
        return await accept_webhook(request, route)

    return router
