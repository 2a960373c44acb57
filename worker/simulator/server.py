"""The simulator over HTTP: :func:`create_app`, a plain Starlette app (no FastAPI: fewer layers
per request, and the benchmarks push thousands of requests per second through it), and
:func:`serve`, which runs it under uvicorn.

Every PagerDuty call, REST or Events, passes through the app's
:class:`~worker.simulator.fault_plan.FaultPlan`, then the headers PagerDuty checks, then
:class:`~worker.simulator.state.SimulatedPagerDuty`; a
:class:`~worker.simulator.rest.SimulatedError` is answered in PagerDuty's envelope. The control
API under ``/_simulator`` (not PagerDuty's) is served alongside.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.simulator.events_api import EVENTS_ROUTE, InvalidEventError, decode_event
from worker.simulator.fault_plan import ConfigurableFaults, FaultPlan, PagerDutyCall
from worker.simulator.faults import FaultSettings, FaultSettingsError
from worker.simulator.rest import (
    CODE_NOT_FOUND,
    DEFAULT_PAGE_LIMIT,
    PAGERDUTY_ACCEPT,
    SimulatedError,
    invalid_credentials,
    invalid_input,
)
from worker.simulator.state import SimulatedPagerDuty
from worker.simulator.webhooks import SubscriptionError

_UNMATCHED_ROUTE: Final = "<unmatched>"


def _token_of(request: Request) -> str | None:
    """The API key in ``Authorization: Token token=<key>``, or None if absent or malformed."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "token" or not credentials.startswith("token="):
        return None
    return credentials.removeprefix("token=").strip() or None


def _accepts_pagerduty_v2(accept: str) -> bool:
    """Whether an Accept header names PagerDuty's v2 media type (whitespace and case ignored)."""
    wanted = PAGERDUTY_ACCEPT.lower()
    return any("".join(part.split()).lower() == wanted for part in accept.split(","))


def _check_credentials_and_accept(
    request: Request, token: str | None, expected: str | None
) -> None:
    """401 / 2006 for a missing or wrong token (any token passes if none is expected), then 400
    for an Accept header that does not ask for API v2."""
    if token is None or (expected is not None and token != expected):
        raise invalid_credentials()
    if not _accepts_pagerduty_v2(request.headers.get("accept", "")):
        raise invalid_input(f"The Accept header must be '{PAGERDUTY_ACCEPT}'")


def _require_from(request: Request) -> None:
    """400 without a ``From`` header. PagerDuty requires it on writes made with an account key."""
    if not request.headers.get("from", "").strip():
        raise invalid_input("The From header is required: the email address of a user")


async def _json_body(request: Request) -> object:
    """The decoded JSON body; 400 if it is not declared as JSON or does not parse."""
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise invalid_input("The Content-Type header must be 'application/json'")
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid_input(f"Malformed JSON body: {exc}") from exc


def _int_param(params: QueryParams, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise invalid_input(f"{name} must be an integer") from exc


class _PagerDutyRoutes:
    """The PagerDuty endpoints, bound to one simulator, one expected token and the accepted
    routing keys (None: any)."""

    def __init__(
        self,
        simulator: SimulatedPagerDuty,
        token: str | None,
        routing_keys: frozenset[str] | None = None,
    ) -> None:
        self.simulator = simulator
        self.token = token
        self.routing_keys = routing_keys

    async def _answer(self, request: Request, route: str) -> Response:
        """Run one PagerDuty call: fault plan, header checks, operation, envelope, counting."""
        call = PagerDutyCall(request.method, route, _token_of(request), request, self.simulator)
        plan: FaultPlan = request.app.state.fault_plan
        self.simulator.call_started()
        try:
            response = await plan.before(call)
            if response is None:
                try:
                    _check_credentials_and_accept(request, call.token, self.token)
                    status, payload = await self._operate(request, route)
                    response = JSONResponse(payload, status)
                except SimulatedError as error:
                    response = JSONResponse(error.envelope(), error.status)
                response = await plan.after(call, response)
        finally:
            self.simulator.call_ended()
        self.simulator.record_call(call.method, route, response.status_code)
        return response

    async def _operate(self, request: Request, route: str) -> tuple[int, Any]:
        """Dispatch on (method, route template) to the simulator."""
        simulator = self.simulator
        method = request.method
        if route == "/webhook_subscriptions":
            if method == "GET":
                listed = simulator.webhooks.subscriptions()
                return 200, {
                    "webhook_subscriptions": listed,
                    "limit": len(listed),
                    "offset": 0,
                    "more": False,
                    "total": len(listed),
                }
            body = await _json_body(request)
            try:
                return 201, {"webhook_subscription": simulator.webhooks.subscribe(body)}
            except SubscriptionError as exc:
                raise invalid_input(str(exc)) from None
        if route == "/incidents/{id}":
            incident_id: str = request.path_params["id"]
            if method == "GET":
                return 200, {"incident": simulator.get_incident(incident_id)}
            _require_from(request)
            body = await _json_body(request)
            return 200, {"incident": simulator.update_incident(incident_id, body)}
        if method == "GET":
            params = request.query_params
            return 200, simulator.list_incidents(
                incident_key=params.get("incident_key"),
                statuses=params.getlist("statuses[]"),
                date_range=params.get("date_range"),
                service_ids=params.getlist("service_ids[]"),
                limit=_int_param(params, "limit", DEFAULT_PAGE_LIMIT),
                offset=_int_param(params, "offset", 0),
                total=params.get("total", "").lower() == "true",
            )
        _require_from(request)
        body = await _json_body(request)
        if method == "POST":
            return 201, {"incident": simulator.create_incident(body)}
        return 200, {"incidents": simulator.update_incidents(body)}

    async def incidents(self, request: Request) -> Response:
        return await self._answer(request, "/incidents")

    async def webhook_subscriptions(self, request: Request) -> Response:
        return await self._answer(request, "/webhook_subscriptions")

    async def incident(self, request: Request) -> Response:
        return await self._answer(request, "/incidents/{id}")

    async def enqueue(self, request: Request) -> Response:
        """``POST /v2/enqueue``: fault plan, then the event, answered in the Events API's shape.

        The body is read and decoded before the plan runs, because the rate-limit bucket is the
        body's routing_key. A body that is too large or not JSON is refused only once the plan
        has let the call through, as a REST call's headers are checked after the plan: a fault
        answers first either way.
        """
        raw = await request.body()
        body: object = None
        undecodable: InvalidEventError | None = None
        try:
            body = decode_event(raw)
        except InvalidEventError as error:
            undecodable = error
        routing_key = body.get("routing_key") if isinstance(body, dict) else None
        call = PagerDutyCall(
            request.method,
            EVENTS_ROUTE,
            None,
            request,
            self.simulator,
            api="events",
            routing_key=routing_key if isinstance(routing_key, str) else None,
        )
        plan: FaultPlan = request.app.state.fault_plan
        response = await plan.before(call)
        if response is None:
            try:
                if undecodable is not None:
                    raise undecodable
                accepted = self.simulator.enqueue_event(body, routing_keys=self.routing_keys)
                response = JSONResponse(accepted, 202)
            except InvalidEventError as error:
                response = JSONResponse(error.body(), error.status)
            response = await plan.after(call, response)
        self.simulator.record_call(call.method, EVENTS_ROUTE, response.status_code)
        return response


def _configurable_plan(request: Request) -> ConfigurableFaults:
    """The app's plan, or 409 if it was replaced by one the control API cannot configure."""
    plan = request.app.state.fault_plan
    if not isinstance(plan, ConfigurableFaults):
        raise _ControlError(409, f"the fault plan is a {type(plan).__name__}, not configurable")
    return plan


class _ControlError(Exception):
    """A refused control API request: answered ``{"error": message[, "field": name]}``."""

    def __init__(self, status: int, message: str, field_name: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field_name = field_name
        super().__init__(message)

    def response(self) -> Response:
        body: dict[str, str] = {"error": self.message}
        if self.field_name is not None:
            body["field"] = self.field_name
        return JSONResponse(body, self.status)


async def _get_faults(request: Request) -> Response:
    """``GET /_simulator/faults``: the current :class:`FaultSettings`, every field."""
    try:
        return JSONResponse(_configurable_plan(request).settings.to_json())
    except _ControlError as error:
        return error.response()


async def _post_faults(request: Request) -> Response:
    """``POST /_simulator/faults``: merge a JSON object of fault settings into the current ones
    (all or nothing) and answer the result; 400 naming the field for an unknown name or a bad
    value."""
    try:
        plan = _configurable_plan(request)
        try:
            changes = await request.json()
        except ValueError as exc:
            raise _ControlError(400, f"the body must be a JSON object: {exc}") from exc
        if not isinstance(changes, dict):
            raise _ControlError(400, "the body must be a JSON object of fault settings")
        try:
            settings = plan.update(changes)
        except FaultSettingsError as exc:
            raise _ControlError(400, str(exc), exc.field_name) from exc
        return JSONResponse(settings.to_json())
    except _ControlError as error:
        return error.response()


async def _clear_faults(request: Request) -> Response:
    """``POST /_simulator/faults/clear``: every fault off; answers the (default) settings."""
    try:
        return JSONResponse(_configurable_plan(request).clear().to_json())
    except _ControlError as error:
        return error.response()


def create_app(
    simulator: SimulatedPagerDuty | None = None,
    *,
    token: str | None = None,
    fault_plan: FaultPlan | None = None,
    faults: FaultSettings | None = None,
    routing_keys: Iterable[str] | None = None,
) -> Starlette:
    """The simulator as an ASGI app.

    ``token``: the only API key accepted; None accepts any non-empty key. ``routing_keys``: the
    Events API routing keys accepted (any other → 400 "Invalid routing key"); None accepts any
    non-empty key, an empty collection none. ``fault_plan``: see
    :class:`FaultPlan`; by default a :class:`ConfigurableFaults` starting with ``faults`` (no
    faults if None), which the ``/_simulator/faults`` endpoints change at run time. Pass one of
    ``fault_plan`` and ``faults``, not both. The simulator and the plan are reachable as
    ``app.state.simulator`` and ``app.state.fault_plan``.
    """
    if fault_plan is not None and faults is not None:
        raise ValueError("pass fault_plan or faults, not both")
    simulator = simulator if simulator is not None else SimulatedPagerDuty()
    pagerduty = _PagerDutyRoutes(
        simulator, token, None if routing_keys is None else frozenset(routing_keys)
    )

    async def state(request: Request) -> Response:
        return JSONResponse(simulator.state())

    async def counts(request: Request) -> Response:
        return JSONResponse(simulator.counts())

    async def reset(request: Request) -> Response:
        """Forget incidents, alerts and counters. The fault settings (and rate-limit buckets)
        are left as they are: ``POST /_simulator/faults/clear`` turns faults off."""
        simulator.reset()
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def responder(request: Request) -> Response:
        """``POST /_simulator/responder`` ``{"incident_id", "action", "responder"?}``: a person
        in PagerDuty's UI acts on an incident (see :meth:`SimulatedPagerDuty.respond`)."""
        try:
            body = await request.json()
        except ValueError:
            return _ControlError(400, "the body must be a JSON object").response()
        if not isinstance(body, dict) or not all(
            isinstance(body.get(name), str) for name in ("incident_id", "action")
        ):
            return _ControlError(400, "incident_id and action are required strings").response()
        name = body.get("responder")
        try:
            incident = simulator.respond(
                body["incident_id"],
                body["action"],
                name if isinstance(name, str) and name else "Simulated Responder",
            )
        except SimulatedError as error:
            return JSONResponse(error.envelope(), error.status)
        return JSONResponse({"incident": incident})

    async def webhooks(request: Request) -> Response:
        """``GET /_simulator/webhooks``: every webhook delivery made, with its body and headers,
        and the status its last attempt was answered with."""
        return JSONResponse({"deliveries": simulator.webhooks.sent()})

    async def unmatched(request: Request, exc: Exception) -> Response:
        # Answer unknown paths and methods in PagerDuty's envelope rather than Starlette's plain
        # text, and count them: a bridge calling a wrong URL should show up in the state.
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        simulator.record_call(request.method, _UNMATCHED_ROUTE, status)
        message = "Not Found" if status == 404 else "Method Not Allowed"
        error = SimulatedError(
            status, message, CODE_NOT_FOUND, [f"{request.method} {request.url.path}"]
        )
        return JSONResponse(error.envelope(), status)

    app = Starlette(
        routes=[
            Route("/incidents", pagerduty.incidents, methods=["GET", "POST", "PUT"]),
            Route("/incidents/{id}", pagerduty.incident, methods=["GET", "PUT"]),
            Route(EVENTS_ROUTE, pagerduty.enqueue, methods=["POST"]),
            Route(
                "/webhook_subscriptions",
                pagerduty.webhook_subscriptions,
                methods=["GET", "POST"],
            ),
            Route("/_simulator/responder", responder, methods=["POST"]),
            Route("/_simulator/webhooks", webhooks, methods=["GET"]),
            Route("/_simulator/state", state, methods=["GET"]),
            Route("/_simulator/counts", counts, methods=["GET"]),
            Route("/_simulator/reset", reset, methods=["POST"]),
            Route("/_simulator/health", health, methods=["GET"]),
            Route("/_simulator/faults", _get_faults, methods=["GET"]),
            Route("/_simulator/faults", _post_faults, methods=["POST"]),
            Route("/_simulator/faults/clear", _clear_faults, methods=["POST"]),
        ],
        exception_handlers={404: unmatched, 405: unmatched},
    )
    app.state.simulator = simulator
    app.state.fault_plan = fault_plan if fault_plan is not None else ConfigurableFaults(faults)
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8089,
    token: str | None = None,
    log_level: str = "warning",
    faults: FaultSettings | None = None,
    routing_keys: Iterable[str] | None = None,
) -> None:
    """Run the simulator under uvicorn until interrupted, starting with ``faults`` (see
    :class:`FaultSettings`; None: no faults) and accepting ``routing_keys`` on the Events API
    (None: any). No access log: it would dominate the cost of a benchmark request."""
    uvicorn.run(
        create_app(token=token, faults=faults, routing_keys=routing_keys),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
    )
