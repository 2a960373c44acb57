"""The ingress: FastAPI endpoints for CoScale, answering at once, never waiting for PagerDuty.

One router per endpoint group (``webhooks``, ``incidents``, ``alerts``, ``health``), sharing the
token checks, the body reader and the hand-off of :class:`~worker.ingress.context.Ingress`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.delivery.gate import DeliveryGate
from worker.errors import InvalidEvent, NotDurable, ServiceUnavailable
from worker.ingress.alert_views import alerts_router
from worker.ingress.console import console_router, console_state
from worker.ingress.context import ERROR, ApiError, Ingress
from worker.ingress.group_commit import GroupCommitHandoff
from worker.ingress.health import BacklogReading, ReadinessCheck, health_router
from worker.ingress.incidents import incidents_router, is_pagerduty_path, pagerduty_error
from worker.ingress.middleware import IngressGuard, RejectionSink
from worker.ingress.pagerduty_webhooks import pagerduty_webhooks_router
from worker.ingress.rejections import QuarantineWriter
from worker.ingress.schemas import ErrorAnswer
from worker.ingress.webhooks import webhooks_router
from worker.ops.rejected import QuarantineBounds
from worker.pipeline.durability import RedisDurability
from worker.pipeline.message import DEFAULT_ROUTE
from worker.pipeline.queue import EventQueue
from worker.routes_file import RouteTable, credential_key, load_route_table
from worker.settings import Settings
from worker.startup import freeze_startup_objects

log = logging.getLogger(__name__)

__all__ = ["ApiError", "build_app", "carries_events", "create_app", "fastapi_telemetry"]

# Milliseconds: the api's statements are small; one that takes longer than this is a database in
# trouble, and the event is on the queue by then (PAGERBRIDGE_INGRESS_STORE_DEADLINE).
API_STATEMENT_TIMEOUT_MS = 10_000
# The endpoints whose requests carry events, by method: a rejected one is kept in the quarantine.
_EVENT_PATHS = {
    # /webhooks/coscale/<name>: per-route webhooks; one for an unknown route is kept too (the
    # operator adds the route, then replays). Not /webhooks/pagerduty: PagerDuty retries what
    # it was refused, and a forged delivery is nothing to replay.
    "POST": re.compile(r"^/(?:webhooks/coscale(?:/[^/]+)?|incidents)$"),
    "PUT": re.compile(r"^/incidents(?:/[^/]*)?$"),
}
# Where a validation error's location starts; the rest names the field.
_LOCATIONS = frozenset({"body", "path", "query", "header", "cookie"})


def carries_events(method: str, path: str) -> bool:
    """Whether a request is one whose rejection the quarantine keeps."""
    paths = _EVENT_PATHS.get(method)
    return paths is not None and paths.match(path) is not None


def _error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    errors: list[str] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    if is_pagerduty_path(path):
        status, body = pagerduty_error(status, message, field=field, errors=errors)
        # PagerDuty's error object has no nulls: a status without a PagerDuty code (503) has
        # no ``code`` (PagerDuty's REST API reference, "Errors").
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)
    body = ErrorAnswer.of(message, field=field, errors=errors)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def fastapi_telemetry(environ: Mapping[str, str]) -> TelemetryConfig | None:
    """FastAPI's own OpenTelemetry instrumentation: left to FastAPI (on when a provider is set
    up) where the environment configures OpenTelemetry (``OTEL_*``, as ``opentelemetry-instrument``
    and the SDK read it), off otherwise: left on with nothing configured, it looks for a
    provider on every request, for spans nobody collects. The bridge's own metrics are
    Prometheus's."""
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
    durability: Callable[[], RedisDurability] | None = None,
    queue_depth: Callable[[], int] | None = None,
    backlog: BacklogReading | None = None,
) -> FastAPI:
    """The ingress application, wired to its queue and database (and, when the PagerDuty token
    is known here, the delivery gate whose state ``/readyz`` reports).

    ``authenticate=False`` serves every endpoint without a token (``api --insecure-no-auth``,
    and the replay of a quarantined request, which an operator vouches for). ``rejections``
    receives every rejected event-carrying request; by default they are written to the
    quarantine table. ``queue_depth`` reads the Celery queue's length for the console.
    """
    handoff = GroupCommitHandoff(queue)
    writer = None
    if rejections is None:
        writer = QuarantineWriter(
            sessions,
            QuarantineBounds(settings.quarantine_max_rows, settings.quarantine_max_age_days),
            timeout=settings.ingress_store_deadline,
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
        # The schema is served behind the token like everything but /healthz and /readyz; the
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
        request_timeout=settings.http_request_timeout,
    )
    ingress = Ingress(
        settings,
        sessions=sessions,
        handoff=handoff,
        routes=routes if routes is not None else RouteTable(()),
        authenticate=authenticate,
    )
    _answer_errors_in_one_shape(app)
    app.include_router(webhooks_router(ingress))
    app.include_router(pagerduty_webhooks_router(ingress))
    app.include_router(incidents_router(ingress))
    app.include_router(alerts_router(ingress))
    app.include_router(
        health_router(
            app,
            ingress,
            redis_ping=redis_ping,
            gate=gate,
            route_gates=route_gates,
            durability=durability,
            backlog=backlog,
        )
    )
    app.include_router(
        console_router(
            ingress,
            queue=queue,
            queue_depth=queue_depth,
            gates={**({DEFAULT_ROUTE: gate} if gate else {}), **(route_gates or {})},
        )
    )
    return app


def _answer_errors_in_one_shape(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(
            exc.status,
            exc.message,
            field=exc.field,
            errors=exc.errors,
            headers=exc.headers,
            path=request.url.path,
        )

    @app.exception_handler(InvalidEvent)
    async def _invalid_event(request: Request, exc: InvalidEvent) -> JSONResponse:
        return _error(422, str(exc), field=exc.field, path=request.url.path)

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        log.error("event not accepted: %s", exc)
        if isinstance(exc, NotDurable):
            return _error(
                503,
                f"the bridge cannot keep events safely right now: {exc}",
                headers={"Retry-After": "5"},
                path=request.url.path,
            )
        return _error(
            503,
            "the bridge cannot queue events right now; nothing was accepted",
            headers={"Retry-After": "5"},
            path=request.url.path,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
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
            422,
            "invalid request: " + "; ".join(problems),
            field=first_field,
            errors=problems,
            path=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code,
            str(exc.detail),
            headers=getattr(exc, "headers", None),
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the caller's fault: the traceback goes to the log (redacted there), the
        # caller gets the one error shape and nothing of the exception's text.
        log.error("unexpected error answering a request", exc_info=exc)
        message = "internal error; the bridge's log has the details"
        return _error(500, message, path=request.url.path)


def build_app(settings: Settings, *, insecure_no_auth: bool = False) -> FastAPI:
    """The ingress wired to the real Redis, Celery and database of ``settings``.

    It needs an ingress token unless ``insecure_no_auth`` (``api --insecure-no-auth``), which
    serves every endpoint to anyone.
    """
    import redis

    from models import make_engine, make_session_factory, utcnow
    from worker.pipeline.backlog import read_backlog
    from worker.pipeline.celery_app import app as celery_app
    from worker.pipeline.celery_app import delivery_queue, intake_queue
    from worker.pipeline.durability import DurableQueueCheck
    from worker.pipeline.inbox import DurableEventQueue
    from worker.pipeline.queue import CeleryEventQueue

    routes = load_route_table(settings)
    log.info(console_state(settings))
    if insecure_no_auth:
        log.warning(INSECURE_WARNING)
    elif not len(routes):
        settings.require("ingress_tokens")
    redis_client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )

    def redis_ping() -> None:
        redis_client.ping()

    sessions = make_session_factory(
        make_engine(settings.database_url, statement_timeout_ms=API_STATEMENT_TIMEOUT_MS),
        settings.namespace,
    )
    durable = DurableQueueCheck(redis_client, settings.namespace)
    if durable.durability.can_confirm:
        log.info("queue durability: %s", durable.durability.reason)
    else:
        log.warning(
            "queue durability: %s; see /readyz (redis_durability)", durable.durability.reason
        )
    queue = DurableEventQueue(
        CeleryEventQueue(celery_app),
        sessions,
        store_deadline=settings.ingress_store_deadline,
        durability=durable,
    )

    def backlog() -> str:
        with sessions() as session:
            return read_backlog(redis_client, settings.namespace, session, utcnow()).summary()

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
        durability=lambda: durable.durability,
        # Celery's Redis transport keeps a queue's messages in a list named after the queue.
        queue_depth=lambda: sum(
            int(redis_client.llen(name))
            for name in (intake_queue(settings.namespace), delivery_queue(settings.namespace))
        ),
        backlog=backlog,
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
