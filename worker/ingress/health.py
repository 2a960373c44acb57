"""The api's own state: ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from worker.delivery.gate import DeliveryGate
from worker.ingress.auth import presented_token
from worker.ingress.context import INGRESS_TOKEN, JSON_ERROR, Ingress
from worker.pipeline.durability import RedisDurability

ReadinessCheck = Callable[[], None]
# The events waiting to be applied (worker/pipeline/backlog.py), in one line.
BacklogReading = Callable[[], str]


def health_router(
    app: FastAPI,
    ingress: Ingress,
    *,
    redis_ping: ReadinessCheck,
    gate: DeliveryGate | None,
    route_gates: dict[str, DeliveryGate] | None,
    durability: Callable[[], RedisDurability] | None = None,
    backlog: BacklogReading | None = None,
) -> APIRouter:
    router = APIRouter()
    settings, sessions = ingress.settings, ingress.sessions

    @router.get("/openapi.json", dependencies=[ingress.default_caller], include_in_schema=False)
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    # async: answered on the event loop, never waiting for a thread of the pool.
    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses={503: {"model": dict[str, Any]}})
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
        if durability is not None:
            # Not a reason to be unready: events are taken while the database is up; 503 only
            # while it is not. The operator is told here, and at start.
            known = durability()
            checks["redis_durability"] = {
                "status": "ok" if known.can_confirm else "degraded",
                "reason": known.reason,
            }
        if gate is not None and checks["redis"]["status"] == "ok":
            checks.update(gate_checks(gate))
        if checks["redis"]["status"] == "ok":
            # Each route's token or key: a refused one makes the bridge not ready, as for the
            # default route's (someone must act); the check names the route, never the key.
            for name, route_gate in (route_gates or {}).items():
                checks.update(
                    {
                        f"{check} ({name})": result
                        for check, result in gate_checks(route_gate).items()
                    }
                )
        if backlog is not None and all(checks[name]["status"] == "ok" for name in BACKLOG_NEEDS):
            # Shown, never a reason for not ready: a storm's backlog is work, not a fault.
            try:
                checks["backlog"] = {"status": "ok", "reason": backlog()}
            except Exception as exc:
                checks["backlog"] = {"status": "unknown", "reason": f"{type(exc).__name__}"[:300]}
        ready = all(result["status"] != "down" for result in checks.values())
        answer: dict[str, Any] = {"ready": ready}
        if not ingress.authenticate or ingress.default_token(presented_token(authorization)):
            answer["checks"] = checks
        return JSONResponse(answer, status_code=200 if ready else 503)

    # Behind the token unless PAGERBRIDGE_METRICS_PUBLIC: it shows counts, no secret.
    @router.get(
        "/metrics",
        dependencies=[] if settings.metrics_public else [ingress.default_caller],
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

    return router


BACKLOG_NEEDS = ("redis", "database")


def gate_checks(gate: DeliveryGate) -> dict[str, dict[str, str]]:
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
