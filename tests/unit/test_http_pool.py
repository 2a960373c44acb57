"""The connection pool both PagerDuty clients send through (worker/pagerduty/pool.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from worker.pagerduty import pool as pool_module
from worker.pagerduty.pool import HttpPool, environment_proxy, open_pool


def _pool(handler: Any, base_url: str = "http://pd.test/prefix") -> HttpPool:
    return open_pool(
        base_url=base_url,
        headers={"Authorization": "Token token=t", "User-Agent": "pagerbridge/test"},
        connect_timeout=2,
        read_timeout=3,
        transport=httpx.MockTransport(handler),
    )


def test_paths_go_under_the_base_urls_path_with_their_query() -> None:
    pool = _pool(lambda request: httpx.Response(200))
    assert str(pool.url("/incidents")) == "http://pd.test/prefix/incidents"
    assert str(pool.url("incidents/P1", [("statuses[]", "triggered"), ("limit", 5)])) == (
        "http://pd.test/prefix/incidents/P1?statuses%5B%5D=triggered&limit=5"
    )
    assert str(_pool(None, "http://pd.test").url("/incidents")) == "http://pd.test/incidents"


def test_a_request_carries_the_pools_headers_its_own_and_the_timeouts() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True})

    pool = _pool(handler)
    response = pool.send(
        "POST", pool.url("/incidents"), content=b'{"a":1}', headers={"From": "me@example.com"}
    )
    assert (response.status_code, response.json()) == (201, {"ok": True})
    (request,) = seen
    assert request.headers["Authorization"] == "Token token=t"
    assert request.headers["From"] == "me@example.com"
    assert request.headers["Host"] == "pd.test"
    assert request.headers["Content-Length"] == "7" and request.content == b'{"a":1}'
    assert request.extensions["timeout"] == {"connect": 2, "read": 3, "write": 3, "pool": 2}
    # One request's own headers do not stay in the pool's
    pool.send("GET", pool.url("/x"))
    assert "From" not in seen[-1].headers


def test_a_redirect_is_an_answer_never_followed() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(301, headers={"Location": "http://elsewhere.test/"})

    pool = _pool(handler)
    assert pool.send("POST", pool.url("/incidents"), content=b"{}").status_code == 301
    assert calls == ["http://pd.test/prefix/incidents"]


def test_transport_failures_stay_httpx_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    pool = _pool(handler)
    with pytest.raises(httpx.ConnectError):
        pool.send("GET", pool.url("/x"))


def test_the_environments_proxy_is_used_as_httpx_client_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    api = httpx.URL("https://api.pagerduty.com")
    assert environment_proxy(api) is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert environment_proxy(api) == "http://proxy.internal:3128"
    assert environment_proxy(httpx.URL("http://api.pagerduty.com")) is None  # no HTTP_PROXY
    assert environment_proxy(httpx.URL("https://pd.corp.example")) is None
    # And the pool's transport is made with it
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(
        pool_module.httpx, "HTTPTransport", lambda **kwargs: made.append(kwargs) or object()
    )
    open_pool(base_url=api, headers={}, connect_timeout=1, read_timeout=1, transport=None)
    assert made[0]["proxy"] == "http://proxy.internal:3128"


def test_urls_are_made_once_per_recent_path() -> None:
    from worker.pagerduty.pool import MAX_CACHED_URLS

    pool = _pool(lambda request: httpx.Response(200))
    assert pool.url("/incidents") is pool.url("/incidents")
    for n in range(MAX_CACHED_URLS * 3):  # single updates, each its own path
        assert str(pool.url(f"/incidents/P{n}")) == f"http://pd.test/prefix/incidents/P{n}"
    assert len(pool._urls) == MAX_CACHED_URLS
    assert str(pool.url("/incidents")) == "http://pd.test/prefix/incidents"
