"""What both PagerDuty clients share: one httpx connection pool per client, opened with checked
settings and closed with it."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self

import httpx

# PagerDuty advises serial requests per credential (PAGERDUTY.md), and one client serves one
# worker process: it never needs many sockets. Idle connections are dropped after 30 s, below
# the 60 s idle timeout common to load balancers, so a reused connection is rarely one the far
# end has already closed (that shows up as RetryableError "connection closed by server").
MAX_CONNECTIONS = 4
KEEPALIVE_EXPIRY_S = 30.0


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
) -> httpx.Client:
    """One client's connection pool. A redirect is not part of PagerDuty's APIs: it is
    classified, never followed (with a credential attached)."""
    for name, seconds in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not seconds > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    return httpx.Client(
        base_url=base_url,
        headers=dict(headers),
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        ),
        transport=transport,
        follow_redirects=False,
    )


class PooledClient:
    """Owns an ``httpx.Client`` (one connection pool per process and API, made at start):
    ``close()`` it at shutdown, or use the client as a context manager."""

    _http: httpx.Client

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
