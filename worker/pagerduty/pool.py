"""What both PagerDuty clients share: one httpx connection pool per client, opened with checked
settings and closed with it, and sent to without httpx.Client's per-request overhead."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

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
    return HttpPool(
        base_url=httpx.URL(base_url),
        headers=headers,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        transport=transport
        or httpx.HTTPTransport(
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
            proxy=environment_proxy(httpx.URL(base_url)),
        ),
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


class HttpPool:
    """Requests straight to an httpx transport (the connection pool, or a test's
    ``httpx.MockTransport``), with the headers and timeouts every request of one API carries.

    Not ``httpx.Client``: its per-request machinery (cookies, auth flows, redirect handling,
    event hooks, URL merging) does nothing for these APIs and cost about 250 us of CPU per
    call, a third of a call's cost in an alert storm (measured against the simulator: 700-800
    us per call through the client, 490-570 us through the transport). What the client did
    that matters is done here: the timeouts travel with the request, the answer is read whole
    and its connection released, transport failures stay ``httpx`` exceptions, and a redirect
    is an answer like any other, never followed.
    """

    def __init__(
        self,
        *,
        base_url: httpx.URL,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        transport: httpx.BaseTransport,
    ) -> None:
        # httpx.Client's rule: a base URL's path is a prefix that request paths are added to.
        raw_path = base_url.raw_path
        self._base_url = base_url.copy_with(
            raw_path=raw_path if raw_path.endswith(b"/") else raw_path + b"/"
        )
        self._headers = httpx.Headers(headers)
        self._urls: dict[str, httpx.URL] = {}
        self._extensions = {"timeout": timeout.as_dict()}
        self._transport = transport

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
    ) -> httpx.Response:
        """One request; the answer comes back read, its connection back in the pool."""
        request_headers = self._headers
        if headers:
            request_headers = request_headers.copy()
            request_headers.update(headers)
        request = httpx.Request(
            method, url, headers=request_headers, content=content, extensions=self._extensions
        )
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response

    def close(self) -> None:
        self._transport.close()


class PooledClient:
    """Owns an ``httpx.Client`` (one connection pool per process and API, made at start):
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
