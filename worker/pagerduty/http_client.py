"""What both PagerDuty clients share: an ``httpx.Client`` made with checked settings, and a
group of requests in flight at once over it.

One client object per process and API (worker/pipeline/runtime.py builds them in each pool process,
after the fork): its connection pool is never inherited across ``fork()``.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self

import httpx

# PagerDuty advises serial requests per credential (docs/pagerduty.md), and one client serves one
# worker process: it needs a connection per request it has in flight at once (at most this
# many; ``Settings.pagerduty_calls_in_flight``), never more. Idle connections are dropped after
# 30 s, below the 60 s idle timeout common to load balancers, so a reused connection is rarely
# one the far end has already closed.
MAX_CONNECTIONS = 8
KEEPALIVE_EXPIRY_S = 30.0


def json_content(body: Mapping[str, Any]) -> bytes:
    """A JSON request body, encoded as httpx encodes ``json=``: UTF-8, compact, no NaN. Made
    here because the Events API's size limit is measured on these bytes."""
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


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's own TLS context (certifi's authorities, or SSL_CERT_FILE / SSL_CERT_DIR), one per
    process, handed to every client as ``verify=``. Loading the authorities costs tens of ms of
    CPU: a worker loads it before its pool forks (worker/pipeline/tasks.py), so every pool process
    starts with it. A context holds no connection, so it is safe to share across a fork and
    threads."""
    return httpx.create_ssl_context()


def open_client(
    *,
    base_url: httpx.URL | str,
    headers: Mapping[str, str],
    connect_timeout: float,
    read_timeout: float,
    transport: httpx.BaseTransport | None,
) -> httpx.Client:
    """An ``httpx.Client`` for one PagerDuty API.

    Explicit timeouts (the pool's wait is the connect timeout, a write the read timeout), at
    most ``MAX_CONNECTIONS`` kept alive, redirects returned as answers (a redirect is not part
    of PagerDuty's APIs, and is never followed with a credential attached), and no retries
    (httpx.HTTPTransport's default, ``retries=0``): the bridge's own policy decides. Proxies
    (HTTPS_PROXY, NO_PROXY, ...) come from the environment as httpx reads them, unless a
    ``transport`` (a test's ``httpx.MockTransport``) replaces the network.
    """
    for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not seconds > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        ),
        follow_redirects=False,
        verify=tls_context(),
        transport=transport,
        trust_env=True,
    )


class HttpClient:
    """Owns an ``httpx.Client`` (made at start, in the process that uses it): ``close()`` it at
    shutdown, or use the client as a context manager."""

    _http: httpx.Client
    _helpers: ThreadPoolExecutor | None = None

    def _send_together(
        self, requests: Sequence[httpx.Request]
    ) -> list[httpx.Response | httpx.HTTPError]:
        """Send ``requests`` at once, each on a connection of its own: the first from this
        thread, the others from helper threads over the same client (httpx.Client can be
        shared between threads). Each gets its answer, read whole, or the ``httpx`` error that
        befell it, in order; one failing does not stop the others. Each request carries the
        client's timeouts, and they wait side by side: a PagerDuty that stops answering costs
        the group one read timeout, not one per request."""
        if len(requests) < 2:
            return [self._send(request) for request in requests]
        if self._helpers is None:
            # Made on the first group, so in the process that sends it; threads do not
            # survive a fork, and a client is never used across one.
            self._helpers = ThreadPoolExecutor(
                MAX_CONNECTIONS - 1, thread_name_prefix="pagerduty-call"
            )
        others: list[Future[httpx.Response | httpx.HTTPError]] = [
            self._helpers.submit(self._send, request) for request in requests[1:]
        ]
        first = self._send(requests[0])
        return [first, *(future.result() for future in others)]

    def _send(self, request: httpx.Request) -> httpx.Response | httpx.HTTPError:
        """One request; its answer read whole and its connection back in the pool, or the
        ``httpx`` error (returned, not raised: the caller classifies it)."""
        try:
            return self._http.send(request)
        except httpx.HTTPError as exc:
            return exc

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        if self._helpers is not None:
            self._helpers.shutdown()
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
