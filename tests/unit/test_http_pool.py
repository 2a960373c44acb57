"""The connection pool both PagerDuty clients send through (worker/pagerduty/pool.py)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
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
    assert (response.status_code, json.loads(response.content)) == (201, {"ok": True})
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


# -- the default pool: httpcore, against a real server on loopback ------------------------


class _Server:
    """A loopback HTTP/1.1 server whose answer each test chooses; it records what it got."""

    def __init__(self, answer: Any) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as PagerDuty's API

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                server.requests.append((self.command, self.path, dict(self.headers), body))
                answer(self)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/prefix"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _real_pool(url: str, read_timeout: float = 3) -> HttpPool:
    return open_pool(
        base_url=url,
        headers={"Authorization": "Token token=t", "Accept": "application/json"},
        connect_timeout=2,
        read_timeout=read_timeout,
        transport=None,
    )


@contextlib.contextmanager
def _serving(answer: Any, read_timeout: float = 3) -> Iterator[tuple[_Server, HttpPool]]:
    """A loopback server answering with ``answer`` and a default pool in front of it."""
    server = _Server(answer)
    pool = _real_pool(server.url, read_timeout=read_timeout)
    try:
        yield server, pool
    finally:
        pool.close()
        server.close()


@pytest.mark.usefixtures("no_proxy")
def test_the_default_pool_sends_as_httpx_would_and_keeps_the_connection() -> None:
    answer = _reply(201, b'{"ok":true}', {"Retry-After": "7", "X-Thing": "a"})
    with _serving(answer) as (server, pool):
        assert isinstance(pool._sender, pool_module._CoreSender)
        first = pool.send(
            "POST", pool.url("/incidents"), content=b'{"a":1}', headers={"From": "me@x.test"}
        )
        second = pool.send("GET", pool.url("/incidents", [("statuses[]", "triggered")]))
    assert (first.status_code, first.content) == (201, b'{"ok":true}')
    assert first.headers["retry-after"] == "7" and first.headers.get("x-thing") == "a"
    assert second.status_code == 201
    (method, path, headers, body), (method2, path2, headers2, body2) = server.requests
    port = server.url.split(":")[2].split("/")[0]
    assert (method, path, body) == ("POST", "/prefix/incidents", b'{"a":1}')
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Authorization"] == "Token token=t" and headers["From"] == "me@x.test"
    assert headers["Content-Length"] == "7"
    assert (method2, path2, body2) == ("GET", "/prefix/incidents?statuses%5B%5D=triggered", b"")
    assert "From" not in headers2 and "Content-Length" not in headers2
    assert server.connections == 1  # the second request reused the first one's connection


@pytest.mark.usefixtures("no_proxy")
def test_the_default_pool_returns_a_redirect_without_following_it() -> None:
    with _serving(_reply(302, headers={"Location": "http://elsewhere.test/"})) as (server, pool):
        assert pool.send("POST", pool.url("/incidents"), content=b"{}").status_code == 302
    assert len(server.requests) == 1


@pytest.mark.usefixtures("no_proxy")
def test_the_default_pools_failures_are_httpx_errors() -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    pool = _real_pool(f"http://127.0.0.1:{port}")
    with pytest.raises(httpx.ConnectError):
        pool.send("GET", pool.url("/x"))
    pool.close()

    def too_slow(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(1.0)
        _reply(200)(handler)

    with _serving(too_slow, read_timeout=0.2) as (_, pool), pytest.raises(httpx.ReadTimeout):
        pool.send("GET", pool.url("/x"))

    def hang_up(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    with _serving(hang_up) as (_, pool), pytest.raises(httpx.RemoteProtocolError):
        pool.send("GET", pool.url("/x"))
