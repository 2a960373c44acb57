"""CoScale's API contact: PagerDuty's own incident endpoints, answered at once
(``POST /incidents``, ``PUT /incidents``, ``PUT /incidents/{id}``) or from the mapping
(``GET /incidents``, ``GET /incidents/{id}``), errors in PagerDuty's codes and shape."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session

from models import utcnow
from worker.errors import ServiceUnavailable
from worker.ingress.access import Caller, bridge_incident_routes, mint_bridge_id, plan_updates
from worker.ingress.context import BODY_ERRORS, ERROR, ApiError, Ingress, json_body
from worker.ingress.incident_views import (
    QUEUED,
    IncidentView,
    incident_by_id,
    list_incidents,
    open_incident_with_key,
    timestamp,
)
from worker.ingress.schemas import (
    INCIDENT_ID_MAX,
    INCIDENT_ID_PATTERN,
    INCIDENT_KEY_MAX,
    MAX_BULK_UPDATES,
    NO_NUL,
    BridgeState,
    BulkUpdateRequest,
    CreateIncidentRequest,
    ErrorAnswer,
    IncidentAnswer,
    IncidentEnvelope,
    IncidentList,
    IncidentsEnvelope,
    ServiceAnswer,
    SingleUpdate,
    SingleUpdateRequest,
)
from worker.pipeline.intake import incident_key as minted_incident_key
from worker.pipeline.message import DEFAULT_ROUTE, SOURCE_API, AlertEventMessage, new_event_id
from worker.title import TITLE_LIMIT, truncate
from worker.vocabulary import AlertStatus, parse_action

REFUSALS: dict[int | str, dict[str, Any]] = {403: ERROR, 404: ERROR, 429: ERROR}
READ_ERRORS: dict[int | str, dict[str, Any]] = {400: ERROR, 404: ERROR, 429: ERROR}

# -- PagerDuty's error shape ----------------------------------------------------------------

_PAGERDUTY_PATHS = re.compile(r"^/incidents(?:/|$)")
# PagerDuty's error codes (its "Errors" reference; docs/pagerduty.md): what each status carries.
_CODES = {400: 2001, 401: 2006, 403: 2010, 404: 2100, 429: 2020, 500: 2000}
# PagerDuty's 400 message; on the others the bridge's own says more (which ids, and why).
_MESSAGES = {400: "Invalid Input Provided"}
# errors[] of PagerDuty's 400 for a create repeating an open incident's incident_key on the
# same service (docs/pagerduty.md; worker/simulator/rest.py sends the same).
DUPLICATE_KEY = "Open incident with matching dedup key already exists on this service"
# listIncidents: "limit ... Maximum of 100"; PagerDuty's classic pagination stops at 10,000.
LIST_LIMIT_MAX = 100
LIST_WINDOW = 10_000


def is_pagerduty_path(path: str) -> bool:
    """Whether ``path`` is one of the PagerDuty-shaped endpoints (errors in PagerDuty's shape)."""
    return _PAGERDUTY_PATHS.match(path) is not None


def pagerduty_error(
    status: int, message: str, *, field: str | None, errors: list[str] | None
) -> tuple[int, ErrorAnswer]:
    """An error of the PagerDuty-shaped endpoints as PagerDuty answers it: invalid input is
    400 "Invalid Input Provided" (its OpenAPI documents no 422 there), every error carries the
    code of its status and says what is wrong in ``errors``; ``field`` is kept beside them."""
    if status == 422:
        status = 400
    details = errors or [message]
    return status, ErrorAnswer.of(
        _MESSAGES.get(status, message), field=field, errors=details, code=_CODES.get(status)
    )


Found = TypeVar("Found")


def incidents_router(ingress: Ingress) -> APIRouter:
    router = APIRouter()
    settings = ingress.settings

    def read_mapping(what: str, read: Callable[[Session], Found]) -> Found:
        try:
            with ingress.sessions() as session:
                return read(session)
        except DataError as exc:
            # A value the database refuses to compare (PostgreSQL text holds no NUL): the
            # caller's input, not an outage.
            raise ApiError(400, f"cannot read {what}: a value the database cannot compare") from exc
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(
                f"cannot read {what}: the database is unavailable ({type(exc).__name__})"
            ) from exc

    def readable_routes(caller: Caller) -> frozenset[str] | None:
        return None if caller.anyone else caller.routes

    def answer_of(view: IncidentView) -> IncidentAnswer:
        forwarded = view.forwarded or {}
        created_at = timestamp(view.created_at)
        return IncidentAnswer(
            id=view.id,
            status=view.status,
            title=view.title,
            summary=view.title,
            incident_number=view.pagerduty_incident_number,
            incident_key=view.incident_key,
            created_at=created_at,
            service=ServiceAnswer(id=view.service_id) if view.service_id else None,
            urgency=view.urgency,
            html_url=view.pagerduty_incident_url or ingress.page_url(view.id, SOURCE_API),
            priority=forwarded.get("priority"),
            escalation_policy=forwarded.get("escalation_policy"),
            # PagerDuty's OpenAPI (Incident.assignments, Assignment) requires each one's "at":
            # the assignments the create asked for, as of the create.
            assignments=[
                {**assignment, "at": created_at} for assignment in forwarded["assignments"]
            ]
            if forwarded.get("assignments")
            else None,
            incident_type=forwarded.get("incident_type"),
            conference_bridge=forwarded.get("conference_bridge"),
            bridge=BridgeState(
                delivery_state=view.delivery_state,
                desired_status=view.desired_status,
                pagerduty_incident_id=view.pagerduty_incident_id,
                alert_url=ingress.alert_url(view.id),
            ),
        )

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
        client_key = incident.incident_key
        if client_key is not None:
            key = client_key

            def open_one(session: Session) -> IncidentView | None:
                return open_incident_with_key(session, key, service_id)

            if await anyio.to_thread.run_sync(read_mapping, "the open incidents", open_one):
                # As PagerDuty answers it. Two creates racing past this check both go out;
                # PagerDuty refuses the second and the bridge adopts the first's incident.
                raise ApiError(
                    400, DUPLICATE_KEY, field="incident.incident_key", errors=[DUPLICATE_KEY]
                )
        bridge_id = mint_bridge_id()
        title = truncate(incident.title, TITLE_LIMIT)
        forwarded = incident.forwarded()
        event = AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_API,
            alert_id=bridge_id,
            action=AlertStatus.TRIGGERED,
            received_at=utcnow(),
            title=title,
            details=incident.details_text(),
            service_id=service_id,
            urgency=incident.urgency,
            incident_key=client_key,
            forwarded=forwarded,
            fields=ingress.audit(repaired),
            **ingress.routed_fields(route),
        )
        await ingress.publish(event)
        view = IncidentView(
            id=bridge_id,
            status=AlertStatus.TRIGGERED.value,
            desired_status=AlertStatus.TRIGGERED.value,
            delivery_state=QUEUED,
            incident_key=client_key
            or minted_incident_key(SOURCE_API, bridge_id, 1, settings.namespace),
            service_id=service_id,
            title=title,
            urgency=incident.urgency,
            route=route.name if route else DEFAULT_ROUTE,
            created_at=event.received_at,
            forwarded=forwarded,
        )
        return IncidentEnvelope(incident=answer_of(view))

    @router.get(
        "/incidents",
        response_model=IncidentList,
        response_model_exclude_none=True,
        responses=READ_ERRORS,
    )
    async def list_incidents_endpoint(
        incident_key: Annotated[
            str | None, Query(max_length=INCIDENT_KEY_MAX, pattern=NO_NUL)
        ] = None,
        statuses: Annotated[
            list[Literal["triggered", "acknowledged", "resolved"]] | None,
            Query(alias="statuses[]"),
        ] = None,
        service_ids: Annotated[
            list[Annotated[str, Query(max_length=64, pattern=NO_NUL)]] | None,
            Query(alias="service_ids[]"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 25,
        offset: Annotated[int, Query(ge=0, le=LIST_WINDOW)] = 0,
        total: bool = False,
        caller: Caller = ingress.any_caller,
    ) -> IncidentList:
        """listIncidents, answered from the mapping (README, "API contact")."""
        if offset + limit > LIST_WINDOW:
            raise ApiError(
                400,
                f"offset + limit must be at most {LIST_WINDOW}",
                field="offset",
            )

        def page_of(session: Session) -> Any:
            return list_incidents(
                session,
                readable_routes(caller),
                incident_key=incident_key,
                statuses=statuses or (),
                service_ids=service_ids or (),
                limit=limit,
                offset=offset,
                total=total,
            )

        page = await anyio.to_thread.run_sync(read_mapping, "the incidents", page_of)
        return IncidentList(
            incidents=[answer_of(view) for view in page.incidents],
            limit=limit,
            offset=offset,
            more=page.more,
            total=page.total,
        )

    @router.get(
        "/incidents/{incident_id}",
        response_model=IncidentEnvelope,
        response_model_exclude_none=True,
        responses=READ_ERRORS,
    )
    async def get_incident(
        incident_id: Annotated[
            str, Path(min_length=1, max_length=INCIDENT_ID_MAX, pattern=INCIDENT_ID_PATTERN)
        ],
        caller: Caller = ingress.any_caller,
    ) -> IncidentEnvelope:
        """getIncident: a bridge id, or a PagerDuty id the mapping holds; another route's
        incident is answered as one that does not exist."""

        def one(session: Session) -> IncidentView | None:
            return incident_by_id(session, incident_id, readable_routes(caller))

        view = await anyio.to_thread.run_sync(read_mapping, "the incident", one)
        if view is None:
            raise ApiError(404, f"{incident_id}: no such incident", field="id")
        return IncidentEnvelope(incident=answer_of(view))

    def known_bridge_ids(ids: list[str]) -> dict[str, str]:
        try:
            with ingress.sessions() as session:
                return bridge_incident_routes(session, ids)
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(
                f"cannot look up the incidents' routes: the database is unavailable "
                f"({type(exc).__name__})"
            ) from exc

    def views_of(ids: list[str], caller: Caller) -> Callable[[Session], dict[str, IncidentView]]:
        routes = readable_routes(caller)

        def read(session: Session) -> dict[str, IncidentView]:
            found = {i: incident_by_id(session, i, routes) for i in ids}
            return {incident_id: view for incident_id, view in found.items() if view is not None}

        return read

    async def accept_updates(
        caller: Caller,
        updates: Sequence[tuple[str, SingleUpdate]],
        repaired: bool,
        *,
        not_found: int,
    ) -> list[IncidentAnswer]:
        """Updates for incidents ``caller`` may reach, all or none: an id of another route, an
        unknown bridge id, or a refused foreign id refuses the request, saying which and why
        (README, "Security model"); an id it cannot reach is answered ``not_found``. Each
        becomes an event: its status, if any, and the fields PagerDuty takes, sent on with the
        incident's next update (every incident the API contact reaches is on a REST route: the
        Events API could carry none of them)."""
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
                not_found if 404 in statuses else min(statuses),
                f"{len(plan.refused)} of {len(set(ids))} incident(s) refused, nothing "
                f"updated: {problems[0]}" + ("; see errors for all" if len(problems) > 1 else ""),
                field="incidents",
                errors=problems,
            )
        # An update with fields alone is answered with the status last known (read before the
        # events go: once accepted, a failed read must not refuse them).
        unchanged = [incident_id for incident_id, item in updates if item.status is None]
        views = (
            await anyio.to_thread.run_sync(
                read_mapping, "the incidents", views_of(unchanged, caller)
            )
            if unchanged
            else {}
        )
        ingress.foreign_updates.add(caller.key, len(plan.foreign))
        events = []
        for incident_id, item in updates:
            foreign_route = plan.foreign.get(incident_id)
            route_name = plan.bridge.get(incident_id) or foreign_route or DEFAULT_ROUTE
            route = ingress.routes.by_name(route_name) if route_name != DEFAULT_ROUTE else None
            events.append(
                AlertEventMessage(
                    event_id=new_event_id(),
                    source=SOURCE_API,
                    alert_id=incident_id,
                    # None: fields alone, the incident's status left as it is.
                    action=parse_action(item.status) if item.status is not None else None,
                    received_at=utcnow(),
                    # An incident opened before the switch: adopted, its service and status
                    # checked by the worker before anything is sent (worker/delivery/policy.py).
                    incident_id=incident_id if foreign_route else None,
                    fields=ingress.audit(repaired),
                    update_fields=item.fields(),
                    **ingress.routed_fields(route),
                )
            )
        await ingress.publish(*events)
        return [
            update_answer(incident_id, item, views.get(incident_id))
            for incident_id, item in updates
        ]

    def update_answer(
        incident_id: str, item: SingleUpdate, view: IncidentView | None
    ) -> IncidentAnswer:
        """The incident as the update leaves it, as far as the bridge knows without asking
        PagerDuty: the status asked for (else the one last known), the fields given."""
        fields = item.fields() or {}
        priority = fields.get("priority")
        assignments = fields.get("assignments")
        # PagerDuty's OpenAPI (Incident.assignments, Assignment) requires each one's "at".
        at = timestamp(utcnow())
        return IncidentAnswer(
            id=incident_id,
            # Without a status: PagerDuty's as last known (an incident not seen yet: triggered).
            status=item.status or (view.status if view is not None else "triggered"),
            title=fields.get("title"),
            urgency=fields.get("urgency"),
            html_url=ingress.page_url(incident_id, SOURCE_API),
            priority=priority if isinstance(priority, dict) else None,
            escalation_policy=fields.get("escalation_policy"),
            assignments=[{**one, "at": at} for one in assignments] if assignments else None,
            incident_type=fields.get("incident_type"),
            conference_bridge=fields.get("conference_bridge"),
        )

    @router.put(
        "/incidents",
        response_model=IncidentsEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, 403: ERROR, 429: ERROR},
        openapi_extra=json_body(BulkUpdateRequest),
    )
    async def update_incidents(
        request: Request, caller: Caller = ingress.any_caller
    ) -> IncidentsEnvelope:
        body, repaired = await ingress.read_body(request, BulkUpdateRequest)
        if len(body.incidents) > MAX_BULK_UPDATES:
            # updateIncidents documents 413 for more than PagerDuty takes in one request.
            raise ApiError(
                413,
                f"{len(body.incidents)} incidents in one request: at most {MAX_BULK_UPDATES}",
                field="incidents",
            )
        updates = [(item.id, item) for item in body.incidents]
        # PagerDuty's OpenAPI documents no 404 for updateIncidents (200, 400, 401, 403, 413,
        # 429): an id in its body that is not there is invalid input.
        answers = await accept_updates(caller, updates, repaired, not_found=400)
        return IncidentsEnvelope(incidents=answers)

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
        answers = await accept_updates(
            caller, [(incident_id, body.incident)], repaired, not_found=404
        )
        return IncidentEnvelope(incident=answers[0])

    @router.api_route(
        "/incidents/{incident_id}/{rest:path}",
        methods=["GET", "POST", "PUT", "DELETE"],
        include_in_schema=False,
    )
    async def unsupported(incident_id: str, rest: str, caller: Caller = ingress.any_caller) -> None:
        """An incident's sub-resources (notes, log entries, alerts, ...) the bridge does not
        keep: PagerDuty's 404, saying so."""
        raise ApiError(
            404,
            f"/incidents/{{id}}/{rest.split('/')[0][:40]} is not supported by the bridge: it "
            "keeps incidents' status and fields only (docs/api-contact.md)",
        )

    return router
