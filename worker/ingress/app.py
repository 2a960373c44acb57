"""The ingress: FastAPI endpoints for CoScale, answering at once, never waiting for PagerDuty."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from models import Alert, AlertEvent, utcnow
from worker.coscale import incident_details, incident_title, is_web_link
from worker.errors import InvalidEvent, ServiceUnavailable
from worker.event import (
    BACKEND_EVENTS,
    BACKEND_REST,
    DEFAULT_ROUTE,
    REPAIRED,
    SOURCE_API,
    SOURCE_COSCALE,
    AlertEventMessage,
    new_event_id,
    route_source,
)
from worker.gate import DeliveryGate, token_id
from worker.heap import freeze_startup_objects
from worker.ingress.access import (
    Caller,
    SlidingWindow,
    bridge_incident_routes,
    mint_bridge_id,
    plan_updates,
)
from worker.ingress.auth import WWW_AUTHENTICATE, presented_token, token_is_valid
from worker.ingress.body import (
    REPAIR_DEADLINE,
    MalformedBody,
    ParsedBody,
    is_json_media_type,
    parse_strict,
    repair_body,
)
from worker.ingress.guard import IngressGuard, RejectionSink
from worker.ingress.handoff import GroupCommitHandoff
from worker.ingress.quarantine import QuarantineWriter
from worker.ingress.schemas import (
    ALERT_ID_MAX,
    ALERT_ID_PATTERN,
    INCIDENT_ID_MAX,
    INCIDENT_ID_PATTERN,
    AlertView,
    BulkUpdateRequest,
    CoScaleWebhook,
    CreateIncidentRequest,
    ErrorAnswer,
    EventAccepted,
    IncidentAnswer,
    IncidentEnvelope,
    IncidentsEnvelope,
    ServiceAnswer,
    SingleUpdateRequest,
    TimelineEntry,
)
from worker.logs import quoted
from worker.quarantine import QuarantineBounds
from worker.queue import EventQueue, QueuedIn
from worker.routes import (
    ROUTE_NAME_PATTERN,
    Route,
    RouteTable,
    credential_id,
    credential_key,
    load_route_table,
)
from worker.settings import Settings
from worker.status import AlertStatus, parse_action
from worker.title import TITLE_LIMIT, truncate

log = logging.getLogger(__name__)

EVENTS_RECEIVED = Counter(
    "pagerbridge_events_received_total", "Events accepted by the ingress", ["source", "action"]
)
BODIES_REPAIRED = Counter(
    "pagerbridge_bodies_repaired_total",
    "Request bodies that were not valid JSON (CoScale's unescaped placeholders) and were read "
    "as CoScale meant them",
)

TIMELINE_LIMIT = 50
# Repairs of bodies strict JSON refused run in threads of their own, two at a time: their work is
# bounded (worker/ingress/body.py), and they never hold the threads sync endpoints run in.
REPAIRS_AT_ONCE = 2


class ApiError(Exception):
    """An answer other than 2xx, in the one error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.errors = errors
        self.headers = headers


def _error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    errors: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorAnswer.of(message, field=field, errors=errors)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


ReadinessCheck = Callable[[], None]
Body = TypeVar("Body", bound=BaseModel)

# The endpoints whose requests carry events, by method: a rejected one is kept in the quarantine.
_EVENT_PATHS = {
    # /webhooks/coscale/<name>: per-route webhooks; one for an unknown route is kept too (the
    # operator adds the route, then replays).
    "POST": re.compile(r"^/(?:webhooks/coscale(?:/[^/]+)?|incidents)$"),
    "PUT": re.compile(r"^/incidents(?:/[^/]*)?$"),
}
# Where a validation error's location starts; the rest names the field.
_LOCATIONS = frozenset({"body", "path", "query", "header", "cookie"})
ERROR = {"model": ErrorAnswer}
JSON_ERROR = {"model": ErrorAnswer, "content": {"application/json": {}}}
# Every answer but success an endpoint that takes a body can give (schemathesis reads these).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "not JSON, and not repairable"},
    413: {"model": ErrorAnswer, "description": "body over PAGERBRIDGE_MAX_BODY_BYTES"},
    415: {"model": ErrorAnswer, "description": "Content-Type is not JSON"},
    503: {"model": ErrorAnswer, "description": "neither the database nor Redis took the event"},
}


def carries_events(method: str, path: str) -> bool:
    """Whether a request is one whose rejection the quarantine keeps."""
    paths = _EVENT_PATHS.get(method)
    return paths is not None and paths.match(path) is not None


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of an endpoint that reads its body
    itself (to repair it): the schema inlined, since it is not among FastAPI's components."""
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }


AUTH = "authorization"
SECURITY_SCHEME = "IngressToken"  # the name of the token scheme in the OpenAPI schema
INGRESS_TOKEN = APIKeyHeader(
    name="Authorization",
    scheme_name=SECURITY_SCHEME,
    description="An ingress token: 'Token token=<token>' or 'Bearer <token>'.",
    auto_error=False,
)


def fastapi_telemetry(environ: Mapping[str, str]) -> TelemetryConfig | None:
    """FastAPI's own OpenTelemetry instrumentation: left to FastAPI (on when a provider is set
    up) where the environment configures OpenTelemetry (``OTEL_*``, as ``opentelemetry-instrument``
    and the SDK read it), off otherwise. Left on with nothing configured, it looks for a
    provider on every request: 2% of the api's instructions per webhook (callgrind,
    bench/api_profile.py), for spans nobody collects. The bridge's own metrics are Prometheus's."""
    if any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in environ):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def create_app(
    settings: Settings,
    *,
    queue: EventQueue,
    sessions: sessionmaker[Session],
    redis_ping: ReadinessCheck,
    gate: DeliveryGate | None = None,
    route_gates: dict[str, DeliveryGate] | None = None,
    authenticate: bool = True,
    rejections: RejectionSink | None = None,
    routes: RouteTable | None = None,
) -> FastAPI:
    """The ingress application, wired to its queue and database (and, when the PagerDuty token
    is known here, the delivery gate whose state ``/readyz`` reports).

    ``authenticate=False`` serves every endpoint without a token (``api --insecure-no-auth``,
    and the replay of a quarantined request, which an operator vouches for). ``rejections``
    receives every rejected event-carrying request; by default they are written to the
    quarantine table.
    """
    handoff = GroupCommitHandoff(queue)
    writer = None
    if rejections is None:
        writer = QuarantineWriter(
            sessions,
            QuarantineBounds(settings.quarantine_max_rows, settings.quarantine_max_age_days),
        )
        rejections = writer.keep

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        handoff.close()  # waits for the batch being written: its requests are answered
        if writer is not None:
            writer.close()

    app = FastAPI(
        lifespan=lifespan,
        title="pagerbridge",
        summary="CoScale alert events to PagerDuty incidents, retry-safe.",
        version="0.1.0",
        responses={401: ERROR, 422: ERROR},
        # The schema is served behind the token like everything but /healthz (below); the
        # browsable docs, which fetch it without one, are not served.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry=fastapi_telemetry(os.environ),
    )
    app.add_middleware(
        IngressGuard,
        max_body_bytes=settings.max_body_bytes,
        keep=rejections,
        carries_events=carries_events,
    )
    valid_tokens = settings.ingress_token_values
    table = routes if routes is not None else RouteTable(())

    def refused() -> ApiError:
        return ApiError(
            401,
            "missing or invalid ingress token: send 'Authorization: Token token=<token>' "
            "or 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )

    def default_token(presented: str | None) -> bool:
        return token_is_valid(presented, valid_tokens)

    everyone = Caller(
        frozenset({DEFAULT_ROUTE, *table.names}),
        frozenset({DEFAULT_ROUTE, *(route.name for route in table if route.rest is not None)}),
        key="",
        anyone=True,
    )

    def caller_of(presented: str | None) -> Caller | None:
        """The routes ``presented`` opens, or ``None`` for no valid token. Every comparison is
        made, whichever matches: the time says nothing about which token it was."""
        if not authenticate:
            return everyone
        routes: set[str] = set()
        rest: set[str] = set()
        if default_token(presented):
            routes.add(DEFAULT_ROUTE)
            rest.add(DEFAULT_ROUTE)
        for route in table:
            if table.token_allowed(route, presented):
                routes.add(route.name)
                if route.rest is not None:
                    rest.add(route.name)
        if not routes or presented is None:
            return None
        return Caller(frozenset(routes), frozenset(rest), key=token_id(presented))

    # Failed authentications per client address: past the limit its requests are refused
    # before any token is compared, which slows down guessing (OWASP ASVS V2.2.1).
    failures = SlidingWindow(60.0)
    foreign_updates = SlidingWindow(60.0)

    def client_address(request: Request) -> str:
        return request.client.host if request.client else "-"

    async def any_caller(
        request: Request, authorization: str | None = Security(INGRESS_TOKEN)
    ) -> Caller:
        """A token of the default route or of any route (the PagerDuty-shaped API, whose route
        is known only from the body or the incident)."""
        address = client_address(request)
        if failures.count(address) >= settings.auth_failures_per_minute:
            wait = max(1, round(failures.retry_after(address)))
            raise ApiError(
                429,
                f"too many failed authentications from this address; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        caller = caller_of(presented_token(authorization))
        if caller is None:
            failures.add(address)
            log.warning("refused a request to %s: no valid ingress token", request.url.path)
            raise refused()
        return caller

    async def default_caller(caller: Caller = Security(any_caller)) -> Caller:
        """A token of the default route (``PAGERBRIDGE_INGRESS_TOKENS``)."""
        if DEFAULT_ROUTE not in caller.routes:
            raise refused()
        return caller

    # As default values, not ``Annotated`` aliases: the module's annotations are strings
    # (``from __future__ import annotations``), which FastAPI resolves in the module's globals.
    AnyCaller = Security(any_caller)
    Auth = Security(default_caller)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(
            exc.status, exc.message, field=exc.field, errors=exc.errors, headers=exc.headers
        )

    @app.exception_handler(InvalidEvent)
    async def _invalid_event(_request: Request, exc: InvalidEvent) -> JSONResponse:
        return _error(422, str(exc), field=exc.field)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_request: Request, exc: ServiceUnavailable) -> JSONResponse:
        log.error("event not accepted: %s", exc)
        return _error(
            503,
            "the bridge cannot queue events right now; nothing was accepted",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        first_field = None
        for error in exc.errors():
            parts = list(error["loc"])
            if parts and parts[0] in _LOCATIONS:
                parts = parts[1:]
            location = ".".join(str(part) for part in parts) or "body"
            first_field = first_field or location
            problems.append(f"{location}: {error['msg']}")
        return _error(
            422, "invalid request: " + "; ".join(problems), field=first_field, errors=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the caller's fault: the traceback goes to the log (redacted there), the
        # caller gets the one error shape and nothing of the exception's text.
        log.error("unexpected error answering a request", exc_info=exc)
        return _error(500, "internal error; the bridge's log has the details")

    async def read_body(request: Request, model: type[Body]) -> tuple[Body, bool]:
        """The request's JSON body as ``model``, and whether it had to be repaired.

        Read here rather than by FastAPI, which would answer an unescaped CoScale value 422:
        strict ``json.loads`` first, the repair only when that fails (``worker/ingress/body.py``).
        """
        content_type = request.headers.get("content-type")
        if content_type is not None and not is_json_media_type(content_type):
            raise ApiError(
                415,
                f"Content-Type {content_type[:100]!r} is not JSON: send "
                "'Content-Type: application/json'",
                field="Content-Type",
            )
        raw = await request.body()
        try:
            strict = parse_strict(raw)
            if isinstance(strict, ParsedBody):
                parsed = strict
            else:
                parsed = await anyio.to_thread.run_sync(
                    lambda: repair_body(raw, strict, deadline=time.monotonic() + REPAIR_DEADLINE),
                    limiter=repair_limiter(),
                )
        except MalformedBody as exc:
            raise ApiError(400, str(exc), field="body") from None
        try:
            body = model.model_validate(parsed.document)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        if parsed.repaired:
            BODIES_REPAIRED.inc()
        return body, parsed.repaired

    limiters: list[CapacityLimiter] = []

    def repair_limiter() -> CapacityLimiter:
        # Made in the event loop, at the first repair: anyio binds a limiter to its loop.
        if not limiters:
            limiters.append(CapacityLimiter(REPAIRS_AT_ONCE))
        return limiters[0]

    allowed_services = frozenset(settings.allowed_service_ids)

    def service_for(service_id: str | None, field: str) -> str:
        """The default route's service: the one named, else the configured one; a named one
        must be on the allow-list when there is one."""
        chosen = service_id or settings.pagerduty_service_id
        if not chosen:
            raise InvalidEvent(
                "no PagerDuty service id: send one, or set PAGERBRIDGE_PAGERDUTY_SERVICE_ID",
                field=field,
            )
        if (
            allowed_services
            and chosen != settings.pagerduty_service_id
            and chosen not in allowed_services
        ):
            raise ApiError(
                403,
                f"service {chosen!r} is not one the default route may use "
                "(PAGERBRIDGE_ALLOWED_SERVICE_IDS)",
                field=field,
            )
        return chosen

    def alert_url(alert_id: str, source: str | None = None) -> str:
        url = f"{settings.public_url.rstrip('/')}/alerts/{alert_id}"
        return f"{url}?source={source}" if source and source != SOURCE_COSCALE else url

    async def publish(*events: AlertEventMessage) -> QueuedIn:
        answers = await handoff.publish_all(events)
        for event, where in zip(events, answers, strict=True):
            EVENTS_RECEIVED.labels(event.source, event.action.value).inc()
            log.info(
                "accepted event %s %s alert=%s:%s (kept in the %s)%s",
                event.event_id,
                event.action.value,
                event.source,
                quoted(event.alert_id),
                where,
                "; its body was repaired" if event.fields.get(REPAIRED) else "",
            )
        return answers[0]

    def audit(repaired: bool) -> dict[str, str]:
        return {REPAIRED: "true"} if repaired else {}

    # -- CoScale's Webhook contact -----------------------------------------------------------

    async def accept_webhook(request: Request, route: Route | None) -> EventAccepted:
        """A CoScale event for ``route`` (None: the default route, the PAGERDUTY_* settings)."""
        body, repaired = await read_body(request, CoScaleWebhook)
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
            service_id: str | None = service_for(body.service_id, "service_id")
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
            fields={**fields, **audit(repaired)},
            **routed,
        )
        where = await publish(event)
        return EventAccepted(
            alert_id=event.alert_id,
            event_id=event.event_id,
            action=action.value,
            queued_in=where,
            alert_url=alert_url(event.alert_id, event.source),
            repaired=repaired,
        )

    @app.post(
        "/webhooks/coscale",
        status_code=202,
        response_model=EventAccepted,
        responses=BODY_ERRORS,
        openapi_extra=_json_body(CoScaleWebhook),
    )
    async def coscale_webhook(request: Request, _caller: Caller = Auth) -> EventAccepted:
        return await accept_webhook(request, None)

    @app.post(
        "/webhooks/coscale/{route_name}",
        status_code=202,
        response_model=EventAccepted,
        responses={**BODY_ERRORS, 404: ERROR},
        openapi_extra=_json_body(CoScaleWebhook),
    )
    async def routed_webhook(
        request: Request,
        route_name: Annotated[str, Path(min_length=1, max_length=63, pattern=ROUTE_NAME_PATTERN)],
        caller: Caller = AnyCaller,
    ) -> EventAccepted:
        """CoScale's Webhook contact for a route of the routes file (its own tokens)."""
        route = table.by_name(route_name)
        if route is None:
            # Only a caller holding some valid token gets this far.
            raise ApiError(404, f"no route {route_name!r} in the routes file", field="route_name")
        if not (caller.anyone or route.name in caller.routes):
            raise refused()
        return await accept_webhook(request, route)

    # -- the seed's API contact: PagerDuty's own endpoints, answered at once ----------------

    def routed_fields(route: Route | None) -> dict[str, Any]:
        if route is None:
            return {}
        return {
            "route": route.name,
            "backend": BACKEND_REST if route.rest is not None else BACKEND_EVENTS,
            "credential_id": credential_id(route),
        }

    @app.post(
        "/incidents",
        status_code=201,
        response_model=IncidentEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, 403: ERROR},
        openapi_extra=_json_body(CreateIncidentRequest),
    )
    async def create_incident(request: Request, caller: Caller = AnyCaller) -> IncidentEnvelope:
        body, repaired = await read_body(request, CreateIncidentRequest)
        incident = body.incident
        named = incident.service.id if incident.service else None
        route = table.for_service_id(named) if named else None
        if route is None:
            if not (caller.anyone or DEFAULT_ROUTE in caller.routes):
                raise refused()
            service_id = service_for(named, "incident.service.id")
        else:
            if not (caller.anyone or route.name in caller.routes):
                raise refused()
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
            fields=audit(repaired),
            **routed_fields(route),
        )
        await publish(event)
        return IncidentEnvelope(
            incident=IncidentAnswer(
                id=bridge_id,
                status="triggered",
                title=title,
                summary=title,
                service=ServiceAnswer(id=service_id),
                urgency=incident.urgency,
                html_url=alert_url(bridge_id),
            )
        )

    def known_bridge_ids(ids: list[str]) -> dict[str, str]:
        try:
            with sessions() as session:
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
        and why (docs/security.md)."""
        ids = [incident_id for incident_id, _ in updates]
        known = await anyio.to_thread.run_sync(known_bridge_ids, ids)
        allowance = min(
            settings.foreign_updates_per_request,
            settings.foreign_updates_per_minute - foreign_updates.count(caller.key),
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
        foreign_updates.add(caller.key, len(plan.foreign))
        events = []
        for incident_id, status in updates:
            foreign_route = plan.foreign.get(incident_id)
            route_name = plan.bridge.get(incident_id) or foreign_route or DEFAULT_ROUTE
            route = table.by_name(route_name) if route_name != DEFAULT_ROUTE else None
            events.append(
                AlertEventMessage(
                    event_id=new_event_id(),
                    source=SOURCE_API,
                    alert_id=incident_id,
                    action=parse_action(status),
                    received_at=utcnow(),
                    # An incident opened before the switch: adopted, its service and status
                    # checked by the worker before anything is sent (worker/delivery.py).
                    incident_id=incident_id if foreign_route else None,
                    fields=audit(repaired),
                    **routed_fields(route),
                )
            )
        await publish(*events)
        return [
            IncidentAnswer(id=incident_id, status=status, html_url=alert_url(incident_id))
            for incident_id, status in updates
        ]

    @app.put(
        "/incidents",
        response_model=IncidentsEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, 403: ERROR, 404: ERROR, 429: ERROR},
        openapi_extra=_json_body(BulkUpdateRequest),
    )
    async def update_incidents(
        request: Request, caller: Caller = AnyCaller
    ) -> IncidentsEnvelope:
        body, repaired = await read_body(request, BulkUpdateRequest)
        updates = [(item.id, item.status) for item in body.incidents]
        return IncidentsEnvelope(incidents=await accept_updates(caller, updates, repaired))

    @app.put(
        "/incidents/{incident_id}",
        response_model=IncidentEnvelope,
        response_model_exclude_none=True,
        responses={**BODY_ERRORS, 403: ERROR, 404: ERROR, 429: ERROR},
        openapi_extra=_json_body(SingleUpdateRequest),
    )
    async def update_incident(
        request: Request,
        incident_id: Annotated[
            str, Path(min_length=1, max_length=INCIDENT_ID_MAX, pattern=INCIDENT_ID_PATTERN)
        ],
        caller: Caller = AnyCaller,
    ) -> IncidentEnvelope:
        body, repaired = await read_body(request, SingleUpdateRequest)
        answers = await accept_updates(
            caller, [(incident_id, body.incident.status)], repaired
        )
        return IncidentEnvelope(incident=answers[0])

    # -- the mapping ---------------------------------------------------------------------------

    @app.get("/alerts/{alert_id}", response_model=AlertView, responses={404: ERROR})
    def show_alert(
        alert_id: Annotated[
            str, Path(min_length=1, max_length=ALERT_ID_MAX, pattern=ALERT_ID_PATTERN)
        ],
        source: Annotated[
            str | None, Query(min_length=1, max_length=80, pattern=ALERT_ID_PATTERN)
        ] = None,
        caller: Caller = AnyCaller,
    ) -> AlertView:
        with sessions() as session:
            query = select(Alert).where(Alert.source_alert_id == alert_id)
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
            cycles = session.scalar(
                select(func.count())
                .select_from(Alert)
                .where(Alert.source == alert.source, Alert.source_alert_id == alert.source_alert_id)
            )
            events = session.scalars(
                select(AlertEvent)
                .where(
                    AlertEvent.source == alert.source,
                    AlertEvent.source_alert_id == alert.source_alert_id,
                )
                .order_by(AlertEvent.id.desc())
                .limit(TIMELINE_LIMIT)
            ).all()
            return _alert_view(alert, int(cycles or 1), list(reversed(events)))

    @app.get("/openapi.json", dependencies=[Auth], include_in_schema=False)
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    # -- health --------------------------------------------------------------------------------

    # async: answered on the event loop, never waiting for a thread of the pool.
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": dict[str, Any]}})
    def readyz(authorization: str | None = Security(INGRESS_TOKEN)) -> JSONResponse:
        """Ready or not for anyone (a load balancer's probe has no token); which check failed,
        and why, only for a default route's token."""
        checks: dict[str, dict[str, str]] = {}

        def check(name: str, probe: ReadinessCheck) -> None:
            try:
                probe()
            except Exception as exc:  # any failure means not ready; say which
                checks[name] = {"status": "down", "reason": f"{type(exc).__name__}: {exc}"[:300]}
            else:
                checks[name] = {"status": "ok", "reason": "answered"}

        def database() -> None:
            with sessions() as session:
                session.execute(text("SELECT 1"))

        check("redis", redis_ping)
        check("database", database)
        if gate is not None and checks["redis"]["status"] == "ok":
            checks.update(_gate_checks(gate))
        if checks["redis"]["status"] == "ok":
            # Each route's token or key: a refused one makes the bridge not ready, as for the
            # default route's (someone must act); the check names the route, never the key.
            for name, route_gate in (route_gates or {}).items():
                checks.update(
                    {
                        f"{check} ({name})": result
                        for check, result in _gate_checks(route_gate).items()
                    }
                )
        ready = all(result["status"] != "down" for result in checks.values())
        answer: dict[str, Any] = {"ready": ready}
        if not authenticate or default_token(presented_token(authorization)):
            answer["checks"] = checks
        return JSONResponse(answer, status_code=200 if ready else 503)

    # Behind the token unless PAGERBRIDGE_METRICS_PUBLIC (issue #6): it shows counts, no secret.
    @app.get(
        "/metrics",
        dependencies=[] if settings.metrics_public else [Auth],
        response_class=PlainTextResponse,
        responses={
            200: {"description": "Prometheus text format"},
            # JSON like every error, whatever this route's own media type.
            **({} if settings.metrics_public else {401: JSON_ERROR}),
        },
    )
    def metrics() -> Response:
        from worker.metrics import BridgeStateCollector

        if not hasattr(app.state, "bridge_state"):  # made at the first scrape
            app.state.bridge_state = BridgeStateCollector(
                settings, sessions, gate=gate, route_gates=route_gates
            )
        # This process's counters, then the shared state read now (worker/metrics.py).
        body = generate_latest() + generate_latest(app.state.bridge_state)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _gate_checks(gate: DeliveryGate) -> dict[str, dict[str, str]]:
    """PagerDuty as the workers last saw it. Refused credentials make the bridge not ready (it
    cannot deliver anything until someone acts); an open breaker does not: PagerDuty's outage
    is not ours, and the bridge keeps taking events, parked until it recovers."""
    try:
        status = gate.status()
    except Exception as exc:  # Redis hiccup between the two checks; reported, not fatal
        return {"pagerduty": {"status": "unknown", "reason": f"{type(exc).__name__}: {exc}"}}
    if status.credentials_error:
        credentials = {"status": "down", "reason": f"token refused: {status.credentials_error}"}
    else:
        credentials = {"status": "ok", "reason": "not refused"}
    if status.breaker_open:
        breaker = {
            "status": "open",
            "reason": f"PagerDuty failing; deliveries parked since {status.opened_at}",
        }
    else:
        breaker = {"status": "ok", "reason": f"closed ({status.consecutive_failures} failures)"}
    return {"pagerduty_credentials": credentials, "pagerduty_breaker": breaker}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _repaired_note(event: AlertEvent) -> str | None:
    if event.payload and event.payload.get(REPAIRED) == "true":
        return "body repaired: the JSON had unescaped characters in a value"
    return None


def _alert_view(alert: Alert, cycles: int, events: list[AlertEvent]) -> AlertView:
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


def build_app(settings: Settings, *, insecure_no_auth: bool = False) -> FastAPI:
    """The ingress wired to the real Redis, Celery and database of ``settings``.

    It needs an ingress token unless ``insecure_no_auth`` (``api --insecure-no-auth``), which
    serves every endpoint to anyone.
    """
    import redis

    from models import make_engine, make_session_factory
    from worker.celery_app import app as celery_app
    from worker.inbox import DurableEventQueue
    from worker.queue import CeleryEventQueue

    routes = load_route_table(settings)
    if insecure_no_auth:
        log.warning(INSECURE_WARNING)
    elif not len(routes):
        settings.require("ingress_tokens")
    redis_client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )

    def redis_ping() -> None:
        redis_client.ping()

    sessions = make_session_factory(make_engine(settings.database_url))
    queue = DurableEventQueue(CeleryEventQueue(celery_app), sessions)
    gate = None
    if settings.pagerduty_token is not None:
        gate = DeliveryGate(
            redis_client, settings.pagerduty_token.get_secret_value(), namespace=settings.namespace
        )
    route_gates = {
        route.name: DeliveryGate(redis_client, credential_key(route), namespace=settings.namespace)
        for route in routes
    }
    return create_app(
        settings,
        queue=queue,
        sessions=sessions,
        redis_ping=redis_ping,
        gate=gate,
        route_gates=route_gates,
        authenticate=not insecure_no_auth,
        routes=routes,
    )


INSECURE_WARNING = (
    "INSECURE: the api runs with --insecure-no-auth: every endpoint answers anyone, without an "
    "ingress token. Never expose it beyond this machine; set PAGERBRIDGE_INGRESS_TOKENS instead."
)


def app_from_environment() -> FastAPI:
    """``uvicorn --factory`` entry point: the api of this process's settings."""
    from worker.settings import get_settings

    return _serving(build_app(get_settings()))


def insecure_app_from_environment() -> FastAPI:
    """``uvicorn --factory`` entry point of ``api --insecure-no-auth --workers N``."""
    from worker.settings import get_settings

    return _serving(build_app(get_settings(), insecure_no_auth=True))


def _serving(app: FastAPI) -> FastAPI:
    freeze_startup_objects()  # the app is built: what exists now lives as long as the process
    return app
