"""The api's connections, below HTTP: how long one may stay idle or take to send its headers, and
how many may be open at once.

uvicorn closes a keep-alive connection idle between two requests (``timeout_keep_alive``), but
not one that never sends a request, nor one that sends its headers a byte at a time; and its
``limit_concurrency`` refuses requests only once their headers are read, counting the idle
connections it never closes. So the api's HTTP protocol is uvicorn's own (``http="auto"``,
``uvicorn.protocols.http.auto``) inside :class:`GuardedHTTPProtocol`, an asyncio protocol
(uvicorn's ``http`` option takes one) that:

- closes a connection that sends nothing for ``PAGERBRIDGE_HTTP_IDLE_TIMEOUT`` seconds, before
  its first request or after an answer;
- answers 408 and closes one whose request headers are not complete within
  ``PAGERBRIDGE_HTTP_REQUEST_TIMEOUT`` seconds of their first byte (the body's deadline is the
  ingress guard's, ``worker/ingress/middleware.py``, which can answer 408 in the one error shape);
- at ``PAGERBRIDGE_HTTP_MAX_CONNECTIONS`` open, makes room for a new connection by closing the
  one that has waited longest without a request in progress (idle, or its headers unfinished),
  so a flood of idle or slow connections does not keep webhooks out; when every one is serving
  a request, answers the new one 503 and closes it, before reading anything from it.

It sees only bytes: the end of the headers is the first blank line (RFC 9112 §2.1), and an
answer being written means the request was read.

The one uvicorn internal it names is ``uvicorn.protocols.http.auto.AutoHTTPProtocol`` (the class
``http="auto"`` stands for); pyproject.toml pins uvicorn to the versions its tests ran against.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from prometheus_client import Counter
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from worker.settings import Settings

log = logging.getLogger(__name__)

CONNECTIONS_CLOSED = Counter(
    "pagerbridge_connections_closed_total",
    "Connections the api closed on its own: idle, headers too slow, or refused past the cap",
    ["reason"],
)

# File descriptors kept for everything but client connections: the database pool, Redis,
# logs, the listening socket, the interpreter's own files.
RESERVED_FILES = 64
HEADERS_END = b"\r\n\r\n"
# Seconds a connection must have waited without a request before it may be closed to make room.
EVICTABLE_AFTER = 1.0
CONTINUE = b"HTTP/1.1 100"

_REFUSED_BODY = (
    b'{"error":{"message":"the bridge has too many open connections; retry shortly",'
    b'"field":null,"errors":["the bridge has too many open connections; retry shortly"]}}'
)
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_REFUSED_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSED_BODY
)
HEADERS_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    idle_timeout: float
    request_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            idle_timeout=settings.http_idle_timeout,
            request_timeout=settings.http_request_timeout,
            max_connections=connection_cap(settings.http_max_connections, open_file_limit()),
        )


def open_file_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(configured: int, file_limit: int | None) -> int:
    """The connections one api process may hold: the setting, lowered to leave
    :data:`RESERVED_FILES` of the open-file limit (past it, ``accept`` fails and every webhook
    with it)."""
    if file_limit is None:
        return configured
    return max(1, min(configured, file_limit - RESERVED_FILES))


class _WatchedTransport:
    """The connection's transport as the inner protocol sees it: every call passes through,
    and a write (an answer going out) tells the guard the request was read."""

    def __init__(self, transport: asyncio.Transport, guard: GuardedHTTPProtocol) -> None:
        self._transport = transport
        self._guard = guard

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not bytes(data[:12]).startswith(CONTINUE):  # an interim answer: the body follows
            self._guard.answering()
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self._guard.answering()
        self._transport.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHTTPProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol with the idle and header deadlines and the connection cap.

    ``limits`` is set by the ``api`` command; a process uvicorn spawned (``--workers``) reads
    them from its own settings.
    """

    limits: ClassVar[ConnectionLimits | None] = None
    open_connections: ClassVar[int] = 0
    # The connections without a request in progress, the longest waiting first (a dict keeps
    # insertion order): the first to close when a new one needs room.
    waiting: ClassVar[dict[GuardedHTTPProtocol, float]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._inner: asyncio.Protocol = AutoHTTPProtocol(*args, **kwargs)
        self._limits = self.current_limits()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._counted = False
        self._awaiting_headers = True  # between requests, or inside a request's headers
        self._headers_begun = False
        self._tail = b""  # the last bytes seen, for a blank line split between two reads

    @classmethod
    def current_limits(cls) -> ConnectionLimits:
        if cls.limits is None:
            from worker.settings import get_settings

            cls.limits = ConnectionLimits.of(get_settings())
        return cls.limits

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, hence no check).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        cls = type(self)
        if cls.open_connections >= self._limits.max_connections and not self._make_room():
            self._refused = True
            CONNECTIONS_CLOSED.labels("refused").inc()
            transport.write(REFUSED)
            transport.close()
            return
        cls.open_connections += 1
        self._counted = True
        self._inner.connection_made(_WatchedTransport(transport, self))  # type: ignore[arg-type]
        self._arm(self._limits.idle_timeout, "idle")
        cls.waiting[self] = asyncio.get_running_loop().time()

    @classmethod
    def _make_room(cls) -> bool:
        """Close the connection waiting longest without a request in progress, if it has
        waited :data:`EVICTABLE_AFTER` (not one whose answer is still being written)."""
        oldest = next(iter(cls.waiting), None)
        if oldest is None:
            return False
        if asyncio.get_running_loop().time() - cls.waiting[oldest] < EVICTABLE_AFTER:
            return False
        oldest._close("evicted")
        return True

    def _close(self, reason: str) -> None:
        """Close the connection now, and stop counting it (its ``connection_lost`` comes later)."""
        CONNECTIONS_CLOSED.labels(reason).inc()
        self._disarm()
        type(self).waiting.pop(self, None)
        if self._counted:
            type(self).open_connections -= 1
            self._counted = False
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_headers:
            if not self._headers_begun:
                self._headers_begun = True
                self._arm(self._limits.request_timeout, "headers")
            window = self._tail + data
            if HEADERS_END in window:
                self._awaiting_headers = False
                self._disarm()
                type(self).waiting.pop(self, None)
            else:
                self._tail = window[-(len(HEADERS_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        type(self).waiting.pop(self, None)
        if self._counted:
            type(self).open_connections -= 1
            self._counted = False
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the deadlines -------------------------------------------------------------------

    def answering(self) -> None:
        """An answer is going out: the next bytes begin a new request, within the idle time."""
        if not self._awaiting_headers or self._headers_begun:
            self._awaiting_headers = True
            self._headers_begun = False
            self._tail = b""
            self._arm(self._limits.idle_timeout, "idle")
            waiting = type(self).waiting
            waiting.pop(self, None)
            waiting[self] = asyncio.get_running_loop().time()  # the longest waiting are first

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._expire, reason, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str, seconds: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reason == "headers":
            log.info("closed a connection whose request headers took over %gs (408)", seconds)
            transport.write(HEADERS_TIMED_OUT)
        else:
            log.debug("closed a connection idle for %gs", seconds)
        self._close(reason)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the api: the guarded protocol, and TLS when a certificate is set."""
    limits = ConnectionLimits.of(settings)
    if limits.max_connections < settings.http_max_connections:
        log.warning(
            "PAGERBRIDGE_HTTP_MAX_CONNECTIONS lowered from %d to %d to fit the open-file limit "
            "(ulimit -n %s)",
            settings.http_max_connections,
            limits.max_connections,
            open_file_limit(),
        )
    GuardedHTTPProtocol.limits = limits
    options: dict[str, Any] = {
        "http": GuardedHTTPProtocol,
        "timeout_keep_alive": max(1, round(settings.http_idle_timeout)),
    }
    if settings.tls_certfile:
        options["ssl_certfile"] = settings.tls_certfile
        options["ssl_keyfile"] = settings.tls_keyfile
    return options
