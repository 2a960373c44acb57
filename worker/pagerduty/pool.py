"""What both PagerDuty clients share: one connection pool per client, opened with checked
settings and closed with it, and sent to without httpx.Client's per-request overhead.

Requests go out on kept-alive sockets, their answers parsed by httptools (:class:`_Connection`);
failures are raised as the ``httpx`` exceptions httpx would raise, so the clients classify them
as before. Behind a proxy, and in tests (``httpx.MockTransport``), requests go through an httpx
transport instead.
"""

from __future__ import annotations

import functools
import json
import re
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Self

import httptools
import httpx

# PagerDuty advises serial requests per credential (PAGERDUTY.md), and one client serves one
# worker process: it needs a socket per request it has in flight at once (at most this many;
# ``Settings.pagerduty_calls_in_flight``), never more. Idle connections are dropped after 30 s,
# below the 60 s idle timeout common to load balancers, so a reused connection is rarely one the
# far end has already closed (that shows up as RetryableError "connection closed by server").
MAX_CONNECTIONS = 8
KEEPALIVE_EXPIRY_S = 30.0
MAX_CACHED_URLS = 16  # paths whose URL a pool keeps made: /incidents and a few more


def json_content(body: Mapping[str, Any]) -> bytes:
    """A JSON request body, encoded as httpx encodes ``json=``: UTF-8, compact, no NaN."""
    return _JSON.encode(body).encode()


# One encoder: json.dumps with options makes a new one per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def http_url(value: str, name: str) -> httpx.URL:
    """``value`` as an http(s) URL with a host, or ValueError naming ``name``.

    Checked here so httpx.UnsupportedProtocol (a configuration error that retrying cannot fix)
    never reaches classify_transport_failure as a "retryable" failure.
    """
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{name} is not a valid URL: {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return url


def open_pool(
    *,
    headers: Mapping[str, str],
    connect_timeout: float,
    read_timeout: float,
    transport: httpx.BaseTransport | None,
    base_url: httpx.URL | str = "",
) -> HttpPool:
    """One client's connection pool. A redirect is not part of PagerDuty's APIs: it is
    classified, never followed (with a credential attached)."""
    for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not seconds > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    base = httpx.URL(base_url)
    if transport is None:
        proxy = environment_proxy(base)
        if proxy is None:
            # httpx.HTTPTransport's TLS context (certifi, SSL_CERT_FILE) and keep-alive
            # limits, no retries.
            sender: _Sender = _KeepAliveSender(
                tls_context(),
                max_idle=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            )
        else:
            limits = httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            )
            sender = _TransportSender(httpx.HTTPTransport(limits=limits, proxy=proxy))
    else:
        sender = _TransportSender(transport)
    return HttpPool(
        base_url=base,
        headers=headers,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        sender=sender,
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx.HTTPTransport's TLS context (certifi's authorities, or SSL_CERT_FILE/SSL_CERT_DIR),
    one per process. Loading the authorities is 20-25 ms of CPU (profiled in a pool process's
    first task): once, not per client, and a worker loads it before its pool forks, so every
    pool process starts with it (worker/tasks.py). A context is safe to share between threads
    and, holding no connection, across a fork."""
    return httpx.create_ssl_context()


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, minus
    NO_PROXY), as httpx.Client would have used it: a bridge behind a proxy keeps working."""
    if not url.host or urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer, read whole."""

    status_code: int
    content: bytes
    header_pairs: Sequence[tuple[str, str]]

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(list(self.header_pairs))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One of the requests :meth:`HttpPool.send_together` sends at once."""

    method: str
    url: httpx.URL
    content: bytes | None = None
    headers: Mapping[str, str] | None = None


_Parts = tuple[str, httpx.URL, Mapping[str, str], bytes | None]  # method, URL, headers, body


class HttpPool:
    """Requests with the headers and timeouts every request of one API carries, straight to a
    connection pool.

    Not ``httpx.Client``, nor even an httpx transport: their per-request machinery (cookies,
    auth flows, redirect handling, URL merging, then the request and response models) does
    nothing for these APIs and was most of a call's CPU in an alert storm. Measured per create
    against the simulator: 700-800 us through the client, 490-570 us through the transport,
    about 100 us less again straight to httpcore, and less again on our own connections
    (:class:`_KeepAliveSender`). What the client did that matters is done
    here: the timeouts travel with the request, the answer is read whole and its connection
    released, failures are ``httpx`` exceptions, and a redirect is an answer like any other,
    never followed.
    """

    def __init__(
        self,
        *,
        base_url: httpx.URL,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        sender: _Sender,
    ) -> None:
        # httpx.Client's rule: a base URL's path is a prefix that request paths are added to.
        raw_path = base_url.raw_path
        self._base_url = base_url.copy_with(
            raw_path=raw_path if raw_path.endswith(b"/") else raw_path + b"/"
        )
        self._headers = dict(headers)
        self._urls: dict[str, httpx.URL] = {}
        self._timeout = timeout.as_dict()
        self._sender = sender
        # The extra headers of the latest request, and the pool's merged with them.
        self._last_merge: tuple[Mapping[str, str] | None, dict[str, str]] = (None, {})

    def url(self, path: str, params: Sequence[tuple[str, Any]] | None = None) -> httpx.URL:
        """``path`` under the base URL, with ``params`` as its query."""
        url = self._urls.get(path)
        if url is None:
            # Parsing a URL costs more than the rest of building a request, and a storm's
            # creates all go to one path: the latest paths' URLs are kept (the oldest goes).
            url = self._base_url.copy_with(
                raw_path=self._base_url.raw_path + path.lstrip("/").encode()
            )
            if len(self._urls) >= MAX_CACHED_URLS:
                del self._urls[next(iter(self._urls))]
            self._urls[path] = url
        return url.copy_merge_params(list(params)) if params else url

    def send(
        self,
        method: str,
        url: httpx.URL,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request; the answer comes back read, its connection back in the pool."""
        return self._sender.send(method, url, self._headers_with(headers), content, self._timeout)

    def send_together(self, requests: Sequence[Outgoing]) -> list[Reply | httpx.HTTPError]:
        """Several requests at once, each on a connection of its own: all are written before
        any answer is read. Each gets its answer or the ``httpx`` error that befell it, in
        order; one failing does not stop the others, which were already sent."""
        return self._sender.send_together(
            [
                (request.method, request.url, self._headers_with(request.headers), request.content)
                for request in requests
            ],
            self._timeout,
        )

    def _headers_with(self, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        if not headers:
            return self._headers
        extra, merged = self._last_merge  # one read: threads may share the pool
        if headers is not extra:
            merged = _merged(self._headers, headers)
            if isinstance(headers, MappingProxyType):
                # Read-only: a client's own headers, the same mapping with every request
                # (PagerDuty's From): merged once, not per request.
                self._last_merge = (headers, merged)
        return merged

    def close(self) -> None:
        self._sender.close()


def _merged(headers: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with ``extra`` added, an extra header replacing one of the same name in any
    case; names keep the spelling they were given."""
    replaced = {name.lower() for name in extra}
    merged = {name: value for name, value in headers.items() if name.lower() not in replaced}
    merged.update(extra)
    return merged


class _Sender:
    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        raise NotImplementedError

    def send_together(
        self, requests: Sequence[_Parts], timeout: dict[str, float | None]
    ) -> list[Reply | httpx.HTTPError]:
        """One after the other, each failure kept as its answer: a sender that cannot have
        several requests in flight still answers for each."""
        replies: list[Reply | httpx.HTTPError] = []
        for method, url, headers, content in requests:
            try:
                replies.append(self.send(method, url, headers, content, timeout))
            except httpx.HTTPError as exc:
                replies.append(exc)
        return replies

    def close(self) -> None:
        raise NotImplementedError


class _TransportSender(_Sender):
    """Through an httpx transport: a proxy's, or a test's ``httpx.MockTransport``."""

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self._transport = transport

    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions={"timeout": timeout}
        )
        response = self._transport.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        return Reply(response.status_code, body, response.headers.multi_items())

    def close(self) -> None:
        self._transport.close()


class _Connection:
    """One kept-alive HTTP/1.1 connection: a request written in one ``sendall``, its answer
    parsed by httptools (uvicorn's parser, llhttp underneath).

    Not ``http.client``: its request is built header by header (each validated with a regular
    expression, then encoded) and its answer's headers are parsed by the ``email`` package.
    Measured on loopback against the simulator, CPU per create through :class:`HttpPool`: 127 us
    with http.client, 77 us with this (the request's bytes made at once, header lines cached,
    the answer fed to llhttp). What http.client did that matters is done here too: header names
    and values are checked (no CR/LF smuggled into a request), ``Content-Length`` and chunked
    answers are read whole, a 1xx interim answer is skipped, ``Connection: close`` and HTTP/1.0
    end the connection, and malformed or cut-off answers are errors. No HEAD (its answer's
    length would be misread as a body to wait for): the PagerDuty APIs take none.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock

    def exchange(self, request: bytes) -> _Answer:
        """Send ``request`` (made by :func:`_request`) and read its answer whole."""
        self.write(request)
        return self.read_answer()

    def write(self, request: bytes) -> None:
        sock = self.sock
        assert sock is not None
        try:
            sock.sendall(request)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out writing the request") from exc
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    def read_answer(self, first_wait: float | None = None) -> _Answer:
        """The answer, read whole; its first bytes waited for ``first_wait`` seconds if given
        (what is left of the read timeout since the request went out), then each read as long
        as the socket's timeout."""
        sock = self.sock
        assert sock is not None
        answer = _AnswerParts()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        received = False
        per_read = sock.gettimeout()
        if first_wait is not None:
            sock.settimeout(first_wait)
        while not answer.complete:
            try:
                data = sock.recv(_READ_SIZE)
            except TimeoutError as exc:
                raise httpx.ReadTimeout(str(exc) or "timed out reading the answer") from exc
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            finally:
                if first_wait is not None:
                    sock.settimeout(per_read)
                    first_wait = None
            if not data:
                if answer.headers_complete and answer.until_close:
                    break  # neither a length nor chunks: the answer ends with the connection
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."
                    if not received
                    else "Server disconnected before the answer was complete."
                )
            received = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from exc
        keep_alive = answer.complete and answer.keep_alive and not answer.trailing
        return _Answer(answer.status, b"".join(answer.body), answer.headers, not keep_alive)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class _AnswerParts:
    """httptools' callbacks: an answer's status, headers and body as they are parsed."""

    parser: Any = None  # httptools.HttpResponseParser: the status is asked of it

    def __init__(self) -> None:
        self.interim()

    def interim(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.headers_complete = self.complete = self.until_close = self.keep_alive = False
        self.trailing = False

    def on_message_begin(self) -> None:
        # Bytes after the answer, in the read that ended it: nothing was asked for them, and
        # the connection is not to be trusted with another request.
        self.trailing = self.complete

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self.parser.get_status_code()
        self.headers_complete = True
        names = {name.lower() for name, _ in self.headers}
        self.until_close = "content-length" not in names and "transfer-encoding" not in names

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.status < 200:
            self.interim()  # 1xx (e.g. 103 Early Hints): the answer is still to come
            return
        # Asked now: once the callback returns, llhttp resets for the next message.
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True


# Requests that carry a body, and so a Content-Length even when it is empty (as http.client).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHODS = _BODY_METHODS | {"GET", "DELETE"}
_READ_SIZE = 65536
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's header name
_UNSAFE_VALUE = re.compile(r"[\x00\r\n]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")


def _request(
    method: str,
    origin: tuple[str, str, int | None],
    target: str,
    headers: Mapping[str, str],
    content: bytes | None,
) -> bytes:
    """A request's bytes, head and body, checked before any connection is made."""
    if method not in _METHODS:
        raise ValueError(f"unsupported method {method!r}")
    scheme, host, port = origin
    authority = f"[{host}]" if ":" in host else host  # an IPv6 literal, as a URL writes it
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    head = [
        f"{method} {_checked_target(target)} HTTP/1.1\r\n".encode(),
        _header_line("Host", authority),
    ]
    head += [_header_line(name, value) for name, value in headers.items()]
    if content is not None or method in _BODY_METHODS:
        head.append(b"Content-Length: %d\r\n" % len(content or b""))
    head.append(b"\r\n")
    if content:
        head.append(content)
    return b"".join(head)


@functools.lru_cache(maxsize=256)
def _header_line(name: str, value: str) -> bytes:
    """One header line, checked (no CR, LF or NUL smuggled in) and encoded as http.client
    would (latin-1). Cached: a client sends the same few headers with every request."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if _UNSAFE_VALUE.search(value):
        raise ValueError(f"invalid value for header {name}")
    return f"{name}: {value}\r\n".encode("latin-1")


def _checked_target(target: str) -> str:
    if not target or _UNSAFE_TARGET.search(target):
        raise ValueError(f"invalid request target {target[:100]!r}")
    return target


class _KeepAliveSender(_Sender):
    """Kept-alive :class:`_Connection` s, each reused for the next request to the same origin.

    Not httpcore's pool: its HTTP/1.1 machinery (h11, a pure-Python state machine) was over half
    of a create's CPU in an alert storm (about 250 us per create-sized exchange, urllib3's pool
    200 us, http.client 115-127 us, :class:`_Connection` 77 us; loopback). What httpcore did
    that matters is done here as well: connect, read and write timeouts; a kept connection
    reused only while fresh (idle under ``keepalive_expiry`` and not closed by the far end,
    checked before reuse, as urllib3 does); the answer read whole before the connection is kept
    again; any failure closes its connection; failures raised as the httpx exceptions
    ``httpx.HTTPTransport`` raises. One request at a time per connection: concurrent requests
    each get a connection of their own, and at most ``max_idle`` per origin are kept.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        max_idle: int = MAX_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int | None], list[tuple[float, _Connection]]] = {}
        self._lock = threading.Lock()

    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        origin = (url.scheme, url.raw_host.decode("ascii"), url.port)
        request = _request(method, origin, url.raw_path.decode("ascii"), headers, content)
        connection = self._kept(origin) or self._connect(origin, timeout)
        try:
            answer = connection.exchange(request)
        except BaseException:
            connection.close()
            raise
        return self._done(origin, connection, answer)

    def send_together(
        self, requests: Sequence[_Parts], timeout: dict[str, float | None]
    ) -> list[Reply | httpx.HTTPError]:
        """Every request written on its own connection, then every answer read: the far end
        works on them together, and this process waits for them once rather than once each
        (a wake-up per answer was most of what a create cost beyond its bytes)."""
        # One read timeout and one connect timeout for the group, not one per request: a
        # PagerDuty that stops answering costs the group what it costs one call, not 4 times.
        started = time.monotonic()
        made = []
        for method, url, headers, content in requests:  # all checked before any is sent
            origin = (url.scheme, url.raw_host.decode("ascii"), url.port)
            made.append(
                (origin, _request(method, origin, url.raw_path.decode("ascii"), headers, content))
            )
        replies: list[Reply | httpx.HTTPError | None] = [None] * len(made)
        sent: list[tuple[int, tuple[str, str, int | None], _Connection, float]] = []
        try:
            for index, (origin, request) in enumerate(made):
                connection = None
                try:
                    connection = self._kept(origin) or self._connect(
                        origin, timeout, _left(timeout["connect"], started)
                    )
                    connection.write(request)
                except httpx.HTTPError as exc:
                    if connection is not None:
                        connection.close()
                    replies[index] = exc
                    continue
                sent.append((index, origin, connection, time.monotonic()))
            while sent:
                index, origin, connection, sent_at = sent[0]
                try:
                    # At least a moment: a timeout of 0 would make the socket non-blocking.
                    first_wait = _left(timeout["read"], sent_at)
                    answer = connection.read_answer(
                        None if first_wait is None else max(first_wait, 0.001)
                    )
                    replies[index] = self._done(origin, connection, answer)
                except httpx.HTTPError as exc:
                    connection.close()
                    replies[index] = exc
                sent.pop(0)
        finally:
            for _, _, connection, _ in sent:  # interrupted: their answers will never be read
                connection.close()
        answered = [reply for reply in replies if reply is not None]
        assert len(answered) == len(made)  # each request was answered or failed
        return answered

    def _done(
        self, origin: tuple[str, str, int | None], connection: _Connection, answer: _Answer
    ) -> Reply:
        if answer.will_close:
            connection.close()
        else:
            self._keep(origin, connection)
        return Reply(answer.status, answer.content, answer.header_pairs)

    def _connect(
        self,
        origin: tuple[str, str, int | None],
        timeout: dict[str, float | None],
        within: float | None = None,
    ) -> _Connection:
        """A new connection to ``origin``, made within the connect timeout (or ``within``
        seconds, what a group has left of it: 0 means none left, and no attempt)."""
        scheme, host, port = origin
        limit = timeout["connect"] if within is None else within
        if limit is not None and limit <= 0:
            raise httpx.ConnectTimeout("timed out connecting (the group's connect time is spent)")
        try:
            sock = socket.create_connection((host, port or _DEFAULT_PORTS[scheme]), limit)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:  # refused, DNS, unreachable
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        try:
            # A request is one write: sent at once, not held back by Nagle for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                # The handshake within the connect timeout, the name checked (SNI).
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except TimeoutError as exc:
            sock.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:  # TLS handshake refused (ssl.SSLError is an OSError)
            sock.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        sock.settimeout(timeout["read"])  # then each read and write has its own
        return _Connection(sock)

    def _kept(self, origin: tuple[str, str, int | None]) -> _Connection | None:
        """The most recently used kept connection to ``origin`` still fit for a request."""
        now = time.monotonic()
        while True:
            with self._lock:
                kept = self._idle.get(origin)
                if not kept:
                    return None
                since, connection = kept.pop()
            if now - since < self._keepalive_expiry and not _closed_by_peer(connection):
                return connection
            connection.close()

    def _keep(self, origin: tuple[str, str, int | None], connection: _Connection) -> None:
        with self._lock:
            kept = self._idle.setdefault(origin, [])
            if len(kept) < self._max_idle:
                kept.append((time.monotonic(), connection))
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            kept = [connection for idle in self._idle.values() for _, connection in idle]
            self._idle.clear()
        for connection in kept:
            connection.close()


def _left(seconds: float | None, since: float) -> float | None:
    """What is left of ``seconds`` counted from ``since`` (monotonic); None: no limit."""
    if seconds is None:
        return None
    return max(0.0, seconds - (time.monotonic() - since))


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    content: bytes
    header_pairs: list[tuple[str, str]]
    will_close: bool


def _closed_by_peer(connection: _Connection) -> bool:
    """Whether an idle connection has something to read: the far end's close (or data nobody
    asked for), either way not a connection to send a request on."""
    sock = connection.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class PooledClient:
    """Owns an :class:`HttpPool` (one connection pool per process and API, made at start):
    ``close()`` it at shutdown, or use the client as a context manager."""

    _http: HttpPool

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
