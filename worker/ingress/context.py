"""What every router of the ingress shares: the token checks, the body reader, the hand-off to
the queue, and the one error shape."""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from prometheus_client import Counter
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from worker.delivery.gate import token_id
from worker.errors import InvalidEvent
from worker.ingress.access import Caller, SlidingWindow
from worker.ingress.auth import WWW_AUTHENTICATE, presented_token, token_is_valid
from worker.ingress.group_commit import GroupCommitHandoff
from worker.ingress.json_body import (
    REPAIR_DEADLINE,
    MalformedBody,
    ParsedBody,
    is_json_media_type,
    parse_strict,
    repair_body,
)
from worker.ingress.middleware import UNAUTHENTICATED
from worker.ingress.schemas import ErrorAnswer
from worker.logs import quoted
from worker.pipeline.message import (
    BACKEND_EVENTS,
    BACKEND_REST,
    DEFAULT_ROUTE,
    REPAIRED,
    SOURCE_COSCALE,
    AlertEventMessage,
)
from worker.pipeline.queue import QueuedIn
from worker.routes_file import Route, RouteTable, credential_id
from worker.settings import Settings

log = logging.getLogger("worker.ingress.app")

EVENTS_RECEIVED = Counter(
    "pagerbridge_events_received_total", "Events accepted by the ingress", ["source", "action"]
)
BODIES_REPAIRED = Counter(
    "pagerbridge_bodies_repaired_total",
    "Request bodies that were not valid JSON (CoScale's unescaped placeholders) and were read "
    "as CoScale meant them",
)

# Repairs of bodies strict JSON refused run in threads of their own, two at a time: their work is
# bounded (worker/ingress/json_body.py), and they never hold the threads sync endpoints run in.
REPAIRS_AT_ONCE = 2

SECURITY_SCHEME = "IngressToken"  # the name of the token scheme in the OpenAPI schema
INGRESS_TOKEN = APIKeyHeader(
    name="Authorization",
    scheme_name=SECURITY_SCHEME,
    description="An ingress token: 'Token token=<token>' or 'Bearer <token>'.",
    auto_error=False,
)

ERROR = {"model": ErrorAnswer}
JSON_ERROR = {"model": ErrorAnswer, "content": {"application/json": {}}}
# Every answer but success an endpoint that takes a body can give (schemathesis reads these).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "not JSON, and not repairable"},
    413: {"model": ErrorAnswer, "description": "body over PAGERBRIDGE_MAX_BODY_BYTES"},
    415: {"model": ErrorAnswer, "description": "Content-Type is not JSON"},
    503: {"model": ErrorAnswer, "description": "neither the database nor Redis took the event"},
}

Body = TypeVar("Body", bound=BaseModel)


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


def json_body(model: type[BaseModel]) -> dict[str, Any]:
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


class Ingress:
    """The shared parts of the ingress's routers.

    ``any_caller`` and ``default_caller`` are FastAPI dependencies, used as an endpoint's
    parameter default (``caller: Caller = ingress.any_caller``): a token of any route, or of
    the default route; OpenAPI describes them as the ``IngressToken`` security scheme.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session],
        handoff: GroupCommitHandoff,
        routes: RouteTable,
        authenticate: bool,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.routes = routes
        self.authenticate = authenticate
        self._handoff = handoff
        self._tokens = settings.ingress_token_values
        self._allowed_services = frozenset(settings.allowed_service_ids)
        self._limiters: list[CapacityLimiter] = []
        # Failed authentications per client address: past the limit its requests are refused
        # before any token is compared, which slows down guessing (OWASP ASVS V2.2.1).
        self.failures = SlidingWindow(60.0)
        self.foreign_updates = SlidingWindow(60.0)
        self._everyone = Caller(
            frozenset({DEFAULT_ROUTE, *routes.names}),
            frozenset({DEFAULT_ROUTE, *(r.name for r in routes if r.rest is not None)}),
            key="",
            anyone=True,
        )

        async def any_caller(
            request: Request, authorization: str | None = Security(INGRESS_TOKEN)
        ) -> Caller:
            """A token of the default route or of any route."""
            return self._caller(request, authorization)

        async def default_caller(caller: Caller = Security(any_caller)) -> Caller:
            """A token of the default route (``PAGERBRIDGE_INGRESS_TOKENS``)."""
            if DEFAULT_ROUTE not in caller.routes:
                raise self.refused()
            return caller

        self.any_caller: Any = Security(any_caller)
        self.default_caller: Any = Security(default_caller)

    # -- tokens ----------------------------------------------------------------------------

    @staticmethod
    def refused() -> ApiError:
        return ApiError(
            401,
            "missing or invalid ingress token: send 'Authorization: Token token=<token>' "
            "or 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )

    def default_token(self, presented: str | None) -> bool:
        return token_is_valid(presented, self._tokens)

    def caller_of(self, presented: str | None) -> Caller | None:
        """The routes ``presented`` opens, or ``None`` for no valid token. Every comparison is
        made, whichever matches: the time says nothing about which token it was."""
        if not self.authenticate:
            return self._everyone
        routes: set[str] = set()
        rest: set[str] = set()
        if self.default_token(presented):
            routes.add(DEFAULT_ROUTE)
            rest.add(DEFAULT_ROUTE)
        for route in self.routes:
            if self.routes.token_allowed(route, presented):
                routes.add(route.name)
                if route.rest is not None:
                    rest.add(route.name)
        if not routes or presented is None:
            return None
        return Caller(frozenset(routes), frozenset(rest), key=token_id(presented))

    def _caller(self, request: Request, authorization: str | None) -> Caller:
        address = request.client.host if request.client else "-"
        if self.failures.count(address) >= self.settings.auth_failures_per_minute:
            setattr(request.state, UNAUTHENTICATED, True)
            wait = max(1, round(self.failures.retry_after(address)))
            raise ApiError(
                429,
                f"too many failed authentications from this address; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        caller = self.caller_of(presented_token(authorization))
        if caller is None:
            self.failures.add(address)
            # Counted and logged (at most once a minute) by the guard, never kept.
            setattr(request.state, UNAUTHENTICATED, True)
            raise self.refused()
        return caller

    # -- bodies ----------------------------------------------------------------------------

    async def read_body(self, request: Request, model: type[Body]) -> tuple[Body, bool]:
        """The request's JSON body as ``model``, and whether it had to be repaired.

        Read here rather than by FastAPI, which would answer an unescaped CoScale value 422:
        strict ``json.loads`` first, the repair only when that fails
        (``worker/ingress/json_body.py``).
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
                    limiter=self._repair_limiter(),
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

    def _repair_limiter(self) -> CapacityLimiter:
        # Made in the event loop, at the first repair: anyio binds a limiter to its loop.
        if not self._limiters:
            self._limiters.append(CapacityLimiter(REPAIRS_AT_ONCE))
        return self._limiters[0]

    # -- events ----------------------------------------------------------------------------

    def service_for(self, service_id: str | None, field: str) -> str:
        """The default route's service: the one named, else the configured one; a named one
        must be on the allow-list when there is one."""
        configured = self.settings.pagerduty_service_id
        chosen = service_id or configured
        if not chosen:
            raise InvalidEvent(
                "no PagerDuty service id: send one, or set PAGERBRIDGE_PAGERDUTY_SERVICE_ID",
                field=field,
            )
        if self._allowed_services and chosen not in {configured, *self._allowed_services}:
            raise ApiError(
                403,
                f"service {chosen!r} is not one the default route may use "
                "(PAGERBRIDGE_ALLOWED_SERVICE_IDS)",
                field=field,
            )
        return chosen

    def alert_url(self, alert_id: str, source: str | None = None) -> str:
        url = f"{self.settings.public_url.rstrip('/')}/alerts/{alert_id}"
        return f"{url}?source={source}" if source and source != SOURCE_COSCALE else url

    def page_url(self, alert_id: str, source: str) -> str:
        """Where a person follows an alert: its console page when the console is on (an
        operator signs in there), else the API's view, which needs an ingress token."""
        if not self.settings.operator_tokens:
            return self.alert_url(alert_id)
        return f"{self.settings.public_url.rstrip('/')}/ui/alerts/{alert_id}?source={source}"

    async def publish(self, *events: AlertEventMessage) -> QueuedIn:
        answers = await self._handoff.publish_all(events)
        for event, where in zip(events, answers, strict=True):
            EVENTS_RECEIVED.labels(event.source, event.action_name).inc()
            log.info(
                "accepted event %s %s alert=%s:%s (kept in the %s)%s",
                event.event_id,
                event.action_name,
                event.source,
                quoted(event.alert_id),
                where,
                "; its body was repaired" if event.fields.get(REPAIRED) else "",
            )
        return answers[0]

    @staticmethod
    def audit(repaired: bool) -> dict[str, str]:
        return {REPAIRED: "true"} if repaired else {}

    @staticmethod
    def routed_fields(route: Route | None) -> dict[str, Any]:
        """An event's route fields: none for the default route."""
        if route is None:
            return {}
        return {
            "route": route.name,
            "backend": BACKEND_REST if route.rest is not None else BACKEND_EVENTS,
            "credential_id": credential_id(route),
        }
