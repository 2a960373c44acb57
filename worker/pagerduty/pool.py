"""What both PagerDuty clients share: one connection pool per client, opened with checked
settings and closed with it, and sent to without httpx.Client's per-request overhead.

The pool is httpcore's (the engine under httpx), spoken to directly; failures are raised as
the ``httpx`` exceptions httpx would raise, so the clients classify them as before. Behind a
proxy, and in tests (``httpx.MockTransport``), requests go through an httpx transport instead.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpcore
import httpx

# PagerDuty advises serial requests per credential (PAGERDUTY.md), and one client serves one
# worker process: it never needs many sockets. Idle connections are dropped after 30 s, below
# the 60 s idle timeout common to load balancers, so a reused connection is rarely one the far
# end has already closed (that shows up as RetryableError "connection closed by server").
MAX_CONNECTIONS = 4
KEEPALIVE_EXPIRY_S = 30.0
MAX_CACHED_URLS = 16  # paths whose URL a pool keeps made: /incidents and a few more


def json_content(body: Mapping[str, Any]) -> bytes:
    """A JSON request body, encoded as httpx encodes ``json=``: UTF-8, compact, no NaN."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


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
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        proxy = environment_proxy(base)
        if proxy is None:
            # The pool httpx.HTTPTransport would make, without a proxy: same TLS context
            # (certifi, SSL_CERT_FILE), same limits, no retries.
            sender: _Sender = _CoreSender(
                httpcore.ConnectionPool(
                    ssl_context=httpx.create_ssl_context(),
                    max_connections=limits.max_connections,
                    max_keepalive_connections=limits.max_keepalive_connections,
                    keepalive_expiry=limits.keepalive_expiry,
                )
            )
        else:
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
    raw_headers: Sequence[tuple[bytes, bytes]]

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(list(self.raw_headers))


class HttpPool:
    """Requests with the headers and timeouts every request of one API carries, straight to a
    connection pool.

    Not ``httpx.Client``, nor even an httpx transport: their per-request machinery (cookies,
    auth flows, redirect handling, URL merging, then the request and response models) does
    nothing for these APIs and was most of a call's CPU in an alert storm. Measured per create
    against the simulator: 700-800 us through the client, 490-570 us through the transport,
    about 100 us less again straight to httpcore. What the client did that matters is done
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
        self._headers = httpx.Headers(headers)
        self._urls: dict[str, httpx.URL] = {}
        self._timeout = timeout.as_dict()
        self._sender = sender

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
        request_headers = self._headers
        if headers:
            request_headers = request_headers.copy()
            request_headers.update(headers)
        return self._sender.send(method, url, request_headers, content, self._timeout)

    def close(self) -> None:
        self._sender.close()


class _Sender:
    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: httpx.Headers,
        content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        raise NotImplementedError

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
        headers: httpx.Headers,
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
        return Reply(response.status_code, body, response.headers.raw)

    def close(self) -> None:
        self._transport.close()


class _CoreSender(_Sender):
    """Straight to an httpcore connection pool, as httpx.HTTPTransport does after building its
    own request and response models around it."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self._pool = pool

    def send(
        self,
        method: str,
        url: httpx.URL,
        headers: httpx.Headers,
        content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        raw = [(b"Host", _host_header(url)), *headers.raw]
        if content is not None:
            raw.append((b"Content-Length", str(len(content)).encode()))
        request = httpcore.Request(
            method.encode(),
            httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=raw,
            content=content,
            extensions={"timeout": timeout},
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(request)
            try:
                body = response.read()
            finally:
                response.close()
        return Reply(response.status, body, response.headers)

    def close(self) -> None:
        self._pool.close()


def _host_header(url: httpx.URL) -> bytes:
    # As httpx.Request writes it: the port only when it is not the scheme's default.
    return url.raw_host if url.port is None else url.raw_host + b":%d" % url.port


# httpcore's failures and the httpx exceptions httpx.HTTPTransport raises for them, most
# specific first (a ConnectTimeout is a TimeoutException too).
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


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
