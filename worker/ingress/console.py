"""The operator's console: ``/ui``, server-rendered pages for what ``status``, ``alerts``,
``alert``, ``replay`` and ``rejected`` do on the command line.

Signed in with an operator token (``PAGERBRIDGE_OPERATOR_TOKENS``; an ingress token opens
nothing here), kept by a signed session cookie, every change a POST carrying the session's
CSRF token (``worker/console/signin.py``). Without operator tokens the router has no route:
every ``/ui`` path answers 404.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from models import utcnow
from worker.console import pages
from worker.console.signin import (
    COOKIE_PATH,
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_FORM_MINUTES,
    OperatorAuth,
    OperatorSession,
    new_form_token,
    same_token,
)
from worker.delivery.gate import DeliveryGate
from worker.ingress.context import Ingress
from worker.ingress.replay_rejected import NotReplayable, replay_rejected
from worker.ingress.schemas import ALERT_ID_MAX, ALERT_ID_PATTERN
from worker.ops.replay import replay
from worker.ops.report import SOURCES, AlertFilter, alert_histories
from worker.pipeline.message import DEFAULT_ROUTE, SOURCE_COSCALE, route_source
from worker.pipeline.queue import EventQueue
from worker.settings import Settings
from worker.vocabulary import DeliveryState

log = logging.getLogger(__name__)

STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
# No inline script or style, nothing from elsewhere, never framed (OWASP Secure Headers).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
FORM_TYPE = "application/x-www-form-urlencoded"

AlertId = Annotated[str, Path(min_length=1, max_length=ALERT_ID_MAX, pattern=ALERT_ID_PATTERN)]
Filter = Annotated[str | None, Query(max_length=ALERT_ID_MAX)]
Before = Annotated[int | None, Query(ge=1)]
RequestId = Annotated[int, Path(ge=1)]


def console_state(settings: Settings) -> str:
    """The start-up line saying whether the console is served."""
    if settings.operator_tokens:
        return "operator console on at /ui"
    return "operator console off (/ui answers 404): PAGERBRIDGE_OPERATOR_TOKENS is unset"


def console_templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("worker.console", "templates"),
        autoescape=True,  # every value is text unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["when"] = _when
    environment.filters["web_link"] = _web_link
    return Jinja2Templates(env=environment)


def console_router(
    ingress: Ingress,
    *,
    queue: EventQueue,
    queue_depth: pages.QueueDepth | None = None,
    gates: Mapping[str, DeliveryGate] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)
    settings, sessions = ingress.settings, ingress.sessions
    auth = OperatorAuth(
        settings.operator_token_values, session_seconds=settings.console_session_hours * 3600
    )
    if not auth.enabled:
        return router
    templates = console_templates()
    all_gates = dict(gates or {})
    routes = [DEFAULT_ROUTE, *ingress.routes.names]
    sources = list(dict.fromkeys([*SOURCES, *(route_source(SOURCE_COSCALE, r) for r in routes)]))

    def page(
        request: Request,
        name: str,
        operator: OperatorSession | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        context.update(csrf_field=CSRF_FIELD, csrf=operator.csrf if operator else None)
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def signed_in(request: Request) -> OperatorSession:
        """A page's operator; anyone else is sent to the sign-in form."""
        operator = auth.session_of(request.cookies.get(SESSION_COOKIE))
        if operator is None:
            raise HTTPException(303, "sign in first", headers={"Location": "/ui/sign-in"})
        return operator

    def signed_in_fragment(request: Request) -> OperatorSession:
        """A fragment's operator; the polling script reloads the page on 401 (to sign in)."""
        operator = auth.session_of(request.cookies.get(SESSION_COOKIE))
        if operator is None:
            raise HTTPException(401, "sign in at /ui/sign-in")
        return operator

    async def form_of(request: Request, expected_csrf: str | None) -> dict[str, str]:
        """A POSTed form, after the CSRF checks; a refused one answers 403."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
            raise HTTPException(403, "refused: the form was sent from another site")
        fields: dict[str, str] = {}
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == FORM_TYPE:  # anything else has no CSRF field, and is refused
            body = (await request.body()).decode("utf-8", "replace")
            fields = {key: values[0] for key, values in parse_qs(body).items()}
        if not same_token(expected_csrf, fields.get(CSRF_FIELD)):
            log.warning(
                "console: refused a POST to %s: CSRF token missing or wrong", request.url.path
            )
            raise HTTPException(
                403, "refused: the form's CSRF token is missing or stale; reload the page"
            )
        return fields

    # -- static files and sign-in -------------------------------------------------------

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        body = files("worker.console").joinpath("static", name).read_bytes()
        return Response(
            body, media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=300"}
        )

    @router.get("/sign-in")
    def sign_in_form(request: Request) -> HTMLResponse:
        return sign_in_page(request, error=None, status=200)

    def sign_in_page(request: Request, *, error: str | None, status: int) -> HTMLResponse:
        form_token = new_form_token()
        response = page(request, "sign_in.html", None, status, error=error, form_token=form_token)
        response.set_cookie(
            SIGN_IN_COOKIE,
            form_token,
            max_age=SIGN_IN_FORM_MINUTES * 60,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        address = request.client.host if request.client else "-"
        if ingress.failures.count(address) >= settings.auth_failures_per_minute:
            wait = max(1, round(ingress.failures.retry_after(address)))
            refused = sign_in_page(
                request, error=f"Too many failed sign-ins; try again in {wait} s.", status=429
            )
            refused.headers["Retry-After"] = str(wait)
            return refused
        fields = await form_of(request, request.cookies.get(SIGN_IN_COOKIE))
        operator = auth.sign_in(fields.get("token", "").strip())
        if operator is None:
            ingress.failures.add(address)
            log.warning("console: refused a sign-in from %s: not an operator token", address)
            return sign_in_page(request, error="That is not an operator token.", status=401)
        log.info("console: operator %s signed in from %s", operator.operator, address)
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            auth.cookie_value(operator),
            max_age=auth.session_seconds,
            path=COOKIE_PATH,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
        return response

    @router.post("/sign-out")
    async def sign_out(
        request: Request, operator: OperatorSession = Depends(signed_in)
    ) -> Response:
        await form_of(request, operator.csrf)
        response = RedirectResponse("/ui/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    # -- overview and alerts ------------------------------------------------------------

    def overview_data() -> dict[str, Any]:
        return pages.overview(
            sessions,
            utcnow(),
            queue_depth=queue_depth,
            gates=all_gates,
            rate_per_minute=settings.pagerduty_rate_per_minute,
        )

    @router.get("")
    def overview(request: Request, operator: OperatorSession = Depends(signed_in)) -> Response:
        return page(request, "overview.html", operator, nav="overview", **overview_data())

    @router.get("/live/overview")
    def overview_fragment(
        request: Request, operator: OperatorSession = Depends(signed_in_fragment)
    ) -> Response:
        return page(request, "_overview.html", operator, **overview_data())

    def listing(
        state: DeliveryState | None = None,
        route: Filter = None,
        source: Filter = None,
        q: Filter = None,
        before: Before = None,
    ) -> dict[str, Any]:
        """The alerts page's data from its query (a dependency of both its routes)."""
        where = AlertFilter(
            state=state,
            route=route or None,
            source=source or None,
            alert_id_prefix=(q or "").strip() or None,
        )
        filters = {
            "state": state.value if state else "",
            "route": route or "",
            "source": source or "",
            "q": (q or "").strip(),
        }
        return {
            **pages.alert_listing(sessions, where, before=before),
            "filters": filters,
            "query": urlencode({k: v for k, v in filters.items() if v}),
            "before": before,
            "states": [s.value for s in DeliveryState],
            "routes": routes,
            "sources": sources,
        }

    @router.get("/alerts")
    def alerts(
        request: Request,
        operator: OperatorSession = Depends(signed_in),
        data: dict[str, Any] = Depends(listing),
    ) -> Response:
        return page(request, "alerts.html", operator, nav="alerts", **data)

    @router.get("/live/alerts")
    def alerts_fragment(
        request: Request,
        operator: OperatorSession = Depends(signed_in_fragment),
        data: dict[str, Any] = Depends(listing),
    ) -> Response:
        return page(request, "_alerts.html", operator, **data)

    @router.get("/alerts/{alert_id}")
    def alert(
        request: Request,
        alert_id: AlertId,
        source: Filter = None,
        operator: OperatorSession = Depends(signed_in),
    ) -> Response:
        with sessions() as session:
            histories = alert_histories(session, alert_id, source=source or None)
        status = 200 if histories else 404
        return page(
            request,
            "alert.html",
            operator,
            status,
            nav="alerts",
            alert_id=alert_id,
            histories=histories,
        )

    # -- failed, parked and replay ------------------------------------------------------

    @router.get("/failed")
    def failed(request: Request, operator: OperatorSession = Depends(signed_in)) -> Response:
        data = pages.trouble(sessions, utcnow())
        return page(request, "failed.html", operator, nav="failed", **data)

    @router.get("/replay")
    def confirm_replay(
        request: Request,
        alert_id: Annotated[str | None, Query(max_length=ALERT_ID_MAX)] = None,
        all_failed: bool = False,
        operator: OperatorSession = Depends(signed_in),
    ) -> Response:
        if not alert_id and not all_failed:
            raise HTTPException(422, "name an alert_id, or all_failed=true")
        count = pages.trouble(sessions, utcnow())["failed_count"] if all_failed else None
        return page(
            request,
            "confirm_replay.html",
            operator,
            nav="failed",
            alert_id=alert_id,
            all_failed=all_failed and not alert_id,
            failed_count=count,
        )

    @router.post("/replay")
    async def do_replay(
        request: Request, operator: OperatorSession = Depends(signed_in)
    ) -> Response:
        fields = await form_of(request, operator.csrf)
        alert_id = fields.get("alert_id", "").strip()
        all_failed = fields.get("all_failed") == "true" and not alert_id
        if not alert_id and not all_failed:
            raise HTTPException(422, "name an alert_id, or all_failed=true")
        replayed = await run_in_threadpool(
            replay,
            sessions,
            utcnow(),
            alert_ids=[alert_id] if alert_id else (),
            all_failed=all_failed,
        )
        log.info("console: operator %s replayed %d alert(s)", operator.operator, len(replayed))
        return page(
            request,
            "replayed.html",
            operator,
            nav="failed",
            replayed=replayed,
            alert_id=alert_id or None,
        )

    # -- rejected requests --------------------------------------------------------------

    @router.get("/rejected")
    def rejected(request: Request, operator: OperatorSession = Depends(signed_in)) -> Response:
        rows = pages.rejected_requests(sessions)
        return page(request, "rejected.html", operator, nav="rejected", rows=rows)

    @router.get("/rejected/{request_id}/replay")
    def confirm_rejected_replay(
        request: Request, request_id: RequestId, operator: OperatorSession = Depends(signed_in)
    ) -> Response:
        row = pages.one_rejected(sessions, request_id)
        if row is None:
            raise HTTPException(404, f"no rejected request #{request_id} (unknown, or aged out)")
        return page(request, "confirm_rejected.html", operator, nav="rejected", row=row)

    @router.post("/rejected/{request_id}/replay")
    async def do_rejected_replay(
        request: Request, request_id: RequestId, operator: OperatorSession = Depends(signed_in)
    ) -> Response:
        fields = await form_of(request, operator.csrf)
        force = fields.get("force") == "true"
        try:
            answer = await run_in_threadpool(
                replay_rejected, settings, sessions, request_id, queue=queue, force=force
            )
        except NotReplayable as exc:
            return page(
                request,
                "rejected_replayed.html",
                operator,
                409,
                nav="rejected",
                request_id=request_id,
                refused=str(exc),
                answer=None,
            )
        log.info(
            "console: operator %s replayed rejected request #%d: %d",
            operator.operator,
            request_id,
            answer.status,
        )
        return page(
            request,
            "rejected_replayed.html",
            operator,
            nav="rejected",
            request_id=request_id,
            refused=None,
            answer=answer,
        )

    return router


def _when(value: str | None) -> str:
    """An ISO timestamp as the page shows it: to the second, UTC."""
    if not value:
        return "-"
    return value[:19].replace("T", " ") + " UTC"


def _web_link(url: str | None) -> str | None:
    """``url`` when it is a web address a link may point to; never ``javascript:`` or the like,
    which escaping alone does not stop in an ``href``."""
    if url and urlsplit(url).scheme in ("http", "https"):
        return url
    return None
