"""The ingress's outer layer, a pure ASGI middleware: the body size limit, and the quarantine of
every event-carrying request the ingress rejects.

The limit: a request whose ``Content-Length`` is over ``PAGERBRIDGE_MAX_BODY_BYTES`` is answered
413 at once, its body never read; one without (chunked) is counted as its bytes arrive and
answered 413 as soon as the count passes the limit, so at most the limit is ever held in
memory, and nothing over it is parsed.

The quarantine: when the ingress answers a POST or PUT of an event-carrying endpoint with a 4xx
(413, 415, 400, 422, ...), the answer is held back while the body (up to the limit) is read
to its end, if the endpoint had not read it, and handed to the quarantine with the answer's
message; then the answer goes out. The happy path pays one wrapped ``receive`` and ``send`` per
request, nothing else.

The body's deadline: a request whose body has not arrived whole within
``PAGERBRIDGE_HTTP_REQUEST_TIMEOUT`` seconds of its headers is answered 408 and its connection
closed (the headers' own deadline is the protocol's, ``worker/ingress/connections.py``). A
client that goes away in the middle of its body is one log line.

A request without a valid token (401, or the 429 of an address past its failed
authentications) is not kept: the quarantine holds what a legitimate sender got wrong, and
anyone could otherwise flush those rows out with refused requests. Such requests are counted
(``pagerbridge_requests_unauthenticated_total``) and logged at most once per
:data:`UNAUTHENTICATED_LOG_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.ingress.schemas import ErrorAnswer
from worker.ops.rejected import Rejection

log = logging.getLogger(__name__)

REQUESTS_REJECTED = Counter(
    "pagerbridge_requests_rejected_total",
    "Event-carrying requests the ingress answered 4xx (each kept in the quarantine)",
    ["status"],
)

REQUESTS_UNAUTHENTICATED = Counter(
    "pagerbridge_requests_unauthenticated_total",
    "Event-carrying requests refused for a missing or invalid ingress token (never kept)",
)
# Seconds between two log lines about refused tokens: a flood of them is one line a minute.
UNAUTHENTICATED_LOG_INTERVAL = 60.0
#: The request-state key (``request.state``) the token check sets on a request it refuses.
UNAUTHENTICATED = "unauthenticated"

RejectionSink = Callable[[Rejection], Awaitable[None]]
# Which requests carry events (and are kept when rejected): (method, path) → bool.
EventRequest = Callable[[str, str], bool]

# Seconds the guard waits for the rest of a rejected request's body (a client that stops
# sending must not hold the answer for ever).
DRAIN_TIMEOUT = 10.0


class RefusalLog:
    """Refused requests, one log line per interval at most: the first at once, then the count
    of those the interval held back."""

    def __init__(
        self,
        interval: float = UNAUTHENTICATED_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held_back = 0

    def refused(self, method: str, path: str, status: int) -> bool:
        """Count one refusal; log it when the interval allows, and say whether it did."""
        REQUESTS_UNAUTHENTICATED.inc()
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._held_back += 1
            return False
        more = f" (and {self._held_back} more since the last line)" if self._held_back else ""
        log.warning(
            "refused %s %s (%d): no valid ingress token; not kept%s",
            method,
            path,
            status,
            more,
        )
        self._last, self._held_back = now, 0
        return True


class BodyTooLarge(Exception):
    """Raised into the application by ``receive`` when the body passes the limit."""


class BodyTimedOut(Exception):
    """Raised into the application by ``receive`` when the body is late."""


class ClientGone(Exception):
    """Raised into the application by ``receive`` when the client left before its body ended."""


class IngressGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        keep: RejectionSink,
        carries_events: EventRequest,
        request_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.keep = keep
        self.carries_events = carries_events
        self.refusals = RefusalLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, receive, send).run()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class _Exchange:
    """One request and its answer, as the guard sees them."""

    def __init__(self, guard: IngressGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard = guard
        self.scope = scope
        self._receive = receive
        self._send = send
        self.kept = guard.carries_events(scope["method"], scope["path"])
        self.chunks: list[bytes] = []  # the body, up to the limit (only for kept requests)
        self.received = 0  # bytes of body received
        self.more_body = True
        self.over_limit = False
        self.answering = False  # the answer has started going out
        self.held: Message | None = None  # a 4xx answer's start, held until the body is kept
        self.held_body: list[bytes] = []
        self.deadline = asyncio.get_running_loop().time() + guard.request_timeout

    async def run(self) -> None:
        declared = _content_length(self.scope)
        if declared is not None and declared > self.guard.max_body_bytes:
            self.more_body = False  # not one byte of it is read
            await self._too_large(declared)
            return
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except BodyTooLarge:
            if self.answering:
                raise
        except BodyTimedOut:
            self._log_cut("arrived too slowly", f"408 after {self.guard.request_timeout:g}s")
            if not self.answering:
                await self._timed_out()
            return
        except ClientGone:
            self._log_cut("was abandoned by the client", "no answer")
            return
        if self.over_limit and not self.answering:
            await self._too_large(self.received)

    async def receive(self) -> Message:
        if self.more_body:
            try:
                # asyncio.timeout_at: no task of its own, unlike wait_for (the hot path).
                async with asyncio.timeout_at(self.deadline):
                    message = await self._receive()
            except TimeoutError:
                self.more_body = False
                raise BodyTimedOut from None
        else:  # the body is whole: the application waits for a disconnect, for ever is fine
            message = await self._receive()
        if message["type"] == "http.request":
            self._count(message)
            if self.over_limit:
                raise BodyTooLarge
        elif message["type"] == "http.disconnect" and self.more_body:
            self.more_body = False
            raise ClientGone
        return message

    def _log_cut(self, what: str, outcome: str) -> None:
        log.info(
            "the body of %s %s %s (%d bytes received): %s",
            self.scope["method"],
            _raw_path(self.scope)[:200],
            what,
            self.received,
            outcome,
        )

    async def _timed_out(self) -> None:
        message = (
            f"the request body did not arrive within {self.guard.request_timeout:g} s "
            "(PAGERBRIDGE_HTTP_REQUEST_TIMEOUT)"
        )
        body = ErrorAnswer.of(message, field="body").model_dump_json().encode()
        self.answering = True
        await self._send(
            {
                "type": "http.response.start",
                "status": 408,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})

    def _count(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        room = self.guard.max_body_bytes - self.received
        self.received += len(chunk)
        if self.kept and room > 0 and chunk:
            self.chunks.append(chunk[:room])
        self.more_body = bool(message.get("more_body", False))
        if self.received > self.guard.max_body_bytes:
            self.over_limit = True

    async def send(self, message: Message) -> None:
        if self.over_limit:
            return  # whatever the application answers, the answer is the guard's 413
        if message["type"] == "http.response.start":
            if self.kept and self._unauthenticated():
                self.kept = False
                path = _raw_path(self.scope)[:200]
                self.guard.refusals.refused(self.scope["method"], path, message["status"])
            if self.kept and 400 <= message["status"] < 500:
                self.held = message
                return
            self.answering = True
        elif message["type"] == "http.response.body" and self.held is not None:
            self.held_body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.held_body)
            await self._keep(self.held["status"], *_reason(self.held["status"], body))
            self.answering = True
            await self._send(self.held)
            await self._send({"type": "http.response.body", "body": body})
            return
        await self._send(message)

    def _unauthenticated(self) -> bool:
        state = self.scope.get("state")
        return isinstance(state, dict) and bool(state.get(UNAUTHENTICATED))

    async def _too_large(self, size: int) -> None:
        limit = self.guard.max_body_bytes
        message = f"the request body is over the limit of {limit} bytes (it has {size} or more)"
        if self.kept:
            await self._keep(413, message, "body")
        body = ErrorAnswer.of(message, field="body").model_dump_json().encode()
        self.answering = True
        await self._send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # The rest of the body is not wanted: no keep-alive behind it.
                    (b"connection", b"close"),
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": body})

    async def _keep(self, status: int, reason: str, field: str | None) -> None:
        REQUESTS_REJECTED.labels(str(status)).inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), DRAIN_TIMEOUT)
        client = self.scope.get("client")
        await self.guard.keep(
            Rejection(
                method=self.scope["method"],
                path=_raw_path(self.scope),
                status=status,
                reason=reason,
                field=field,
                body=b"".join(self.chunks),
                size=max(self.received, _content_length(self.scope) or 0),
                content_type=_header(self.scope, b"content-type"),
                client=str(client[0]) if client else None,
            )
        )

    async def _drain(self) -> None:
        """Read the rest of the body the application left unread, up to the limit."""
        while self.more_body and not self.over_limit:
            message = await self._receive()
            if message["type"] != "http.request":
                self.more_body = False
                break
            self._count(message)


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None or not value.strip().isdigit():
        return None  # absent, or malformed (the HTTP server refuses those itself)
    return int(value)


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded, so that a replay asks for the same one."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else str(scope["path"])


def _reason(status: int, body: bytes) -> tuple[str, str | None]:
    """The message and field of one of the ingress's error answers."""
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
        errors = error.get("errors") or []
        if error.get("code") is not None and errors and errors[0] != message:
            # PagerDuty's shape: a generic message ("Invalid Input Provided"), what is wrong
            # in errors.
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            message = f"{message}: {str(errors[0])[:500]}{more}"
        return message, error.get("field")
    except (ValueError, KeyError, TypeError):
        try:
            return HTTPStatus(status).phrase, None
        except ValueError:
            return f"HTTP {status}", None
