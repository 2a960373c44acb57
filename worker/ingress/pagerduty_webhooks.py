"""PagerDuty's v3 webhooks: ``POST /webhooks/pagerduty[/<route>]``.

Authenticated by PagerDuty's signature (worker/ingress/signatures.py), not by an ingress token:
PagerDuty sends none. A delivery is stored before it is answered and applied to its alert cycle
right after (worker/pipeline/responders.py); PagerDuty retries anything not answered 2xx within
5 s (PagerDuty docs, "Webhook Behavior"), and a retry of a stored event is answered as a
duplicate.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Path, Request
from prometheus_client import Counter

from models import utcnow
from worker.ingress.context import ERROR, ApiError, Ingress
from worker.ingress.schemas import PagerDutyWebhookTaken
from worker.ingress.signatures import SIGNATURE_HEADER, signature_matches
from worker.logs import quoted
from worker.pipeline.message import DEFAULT_ROUTE
from worker.pipeline.responders import (
    INCIDENT_EVENTS,
    MalformedReport,
    ReportOutcome,
    apply_delivery,
    read_report,
    store_delivery,
)
from worker.routes_file import ROUTE_NAME_PATTERN

log = logging.getLogger("worker.ingress.app")

PAGERDUTY_WEBHOOKS = Counter(
    "pagerbridge_pagerduty_webhooks_total",
    "PagerDuty webhook deliveries taken, by event type (the five incident events the bridge "
    "follows, else other) and outcome (responder, echo, stale, unknown, ignored, duplicate, "
    "stored: applied later by the sweeper)",
    ["event_type", "outcome"],
)
SIGNATURES_REFUSED = Counter(
    "pagerbridge_pagerduty_webhook_signatures_refused_total",
    "PagerDuty webhook deliveries refused 401: no signature, or none made with a configured secret",
    ["route"],
)
STORED = "stored"


def pagerduty_webhooks_router(ingress: Ingress) -> APIRouter:
    router = APIRouter()

    async def take(request: Request, route: str, secrets: tuple[str, ...]) -> PagerDutyWebhookTaken:
        raw = await request.body()
        if not signature_matches(raw, request.headers.get(SIGNATURE_HEADER), secrets):
            SIGNATURES_REFUSED.labels(route).inc()
            # Never the body: it was not PagerDuty's, or not for this bridge.
            log.warning(
                "refused a PagerDuty webhook for route %s: %s (X-Webhook-Id %s)",
                route,
                "no signature"
                if SIGNATURE_HEADER.lower() not in request.headers
                else "no signature made with a configured secret"
                if secrets
                else "no webhook secret is configured for this route",
                quoted(request.headers.get("X-Webhook-Id", "-")[:128]),
            )
            raise ApiError(
                401,
                f"missing or invalid {SIGNATURE_HEADER}: set the subscription's secret in "
                "PAGERBRIDGE_PAGERDUTY_WEBHOOK_SECRETS (or the route's webhook_secrets)",
                field=SIGNATURE_HEADER,
            )
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "body is not JSON", field="body") from None
        event = document.get("event") if isinstance(document, dict) else None
        try:
            report = read_report(event)
        except MalformedReport as exc:
            raise ApiError(400, str(exc), field=str(exc).split(":", 1)[0]) from None
        assert isinstance(event, dict)
        type_label = report.event_type if report.event_type in INCIDENT_EVENTS else "other"
        if report.status is None:
            outcome = ReportOutcome.IGNORED.value
        else:
            received_at = utcnow()
            stored = await anyio.to_thread.run_sync(
                lambda: store_delivery(
                    ingress.sessions,
                    route=route,
                    event=event,
                    report=report,
                    received_at=received_at,
                )
            )
            if stored is None:
                outcome = ReportOutcome.DUPLICATE.value
            else:
                outcome = await _apply_now(ingress, stored)
        PAGERDUTY_WEBHOOKS.labels(type_label, outcome).inc()
        return PagerDutyWebhookTaken(
            webhook_id=report.webhook_id, event_type=report.event_type, outcome=outcome
        )

    @router.post(
        "/webhooks/pagerduty",
        response_model=PagerDutyWebhookTaken,
        responses={400: ERROR, 401: ERROR, 503: ERROR},
    )
    async def pagerduty_webhook(request: Request) -> PagerDutyWebhookTaken:
        """A PagerDuty v3 webhook delivery for the default route's incidents."""
        return await take(request, DEFAULT_ROUTE, ingress.settings.pagerduty_webhook_secret_values)

    @router.post(
        "/webhooks/pagerduty/{route_name}",
        response_model=PagerDutyWebhookTaken,
        responses={400: ERROR, 401: ERROR, 503: ERROR},
    )
    async def routed_pagerduty_webhook(
        request: Request,
        route_name: Annotated[str, Path(min_length=1, max_length=63, pattern=ROUTE_NAME_PATTERN)],
    ) -> PagerDutyWebhookTaken:
        """A PagerDuty v3 webhook delivery for a route of the routes file. An unknown route has
        no secret, so its deliveries are refused like forged ones (no route names are told)."""
        route = ingress.routes.by_name(route_name)
        secrets = route.webhook_secret_values if route is not None else ()
        return await take(request, route_name, secrets)

    return router


async def _apply_now(ingress: Ingress, delivery_id: int) -> str:
    """Apply a stored delivery; if that fails it stays stored, for the sweeper."""
    try:
        applied = await anyio.to_thread.run_sync(
            lambda: apply_delivery(ingress.sessions, delivery_id)
        )
    except Exception as exc:
        log.warning("stored PagerDuty webhook %d; applying it failed (%s)", delivery_id, exc)
        return STORED
    return applied.value if applied is not None else ReportOutcome.DUPLICATE.value
