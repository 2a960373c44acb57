"""The connection pool both PagerDuty clients send through (worker/pagerduty/pool.py)."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trustme

from worker.pagerduty import pool as pool_module
from worker.pagerduty.classify import classify_transport_failure
from worker.pagerduty.pool import HttpPool, _merged, environment_proxy, open_pool, tls_context


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


# -- the default pool: http.client, against a real server on loopback --------------------


class _Server:
    """A loopback HTTP/1.1 server whose answer each test chooses; it records what it got."""

    def __init__(
        self,
        answer: Any,
        *,
        idle_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as PagerDuty's API
            timeout = idle_timeout  # the server closes a connection idle this long

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
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}/prefix"
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
def _serving(
    answer: Any, read_timeout: float = 3, **server_options: Any
) -> Iterator[tuple[_Server, HttpPool]]:
    """A loopback server answering with ``answer`` and a default pool in front of it."""
    server = _Server(answer, **server_options)
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
        assert isinstance(pool._sender, pool_module._KeepAliveSender)
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
def test_a_request_goes_out_in_one_write_head_and_body_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Head and body in two writes would be two system calls, two TCP segments and two reads
    at the far end per PagerDuty call (http.client's way): the pool writes each request once."""
    writes: list[bytes] = []
    client = threading.get_ident()  # the test server answers from threads of its own
    socket_sendall, socket_send = socket.socket.sendall, socket.socket.send

    def sendall(sock: socket.socket, data: Any, *args: Any) -> None:
        if threading.get_ident() == client:
            writes.append(bytes(data))
        socket_sendall(sock, data, *args)

    def send(sock: socket.socket, data: Any, *args: Any) -> int:
        if threading.get_ident() == client:
            writes.append(bytes(data))
        return socket_send(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    monkeypatch.setattr(socket.socket, "send", send)
    with _serving(_reply(201, b"{}")) as (server, pool):
        pool.send("POST", pool.url("/incidents"), content=b'{"a":1}')
        pool.send("GET", pool.url("/incidents"))
        pool.send("PUT", pool.url("/incidents"), content=b"")
        pool.send("PUT", pool.url("/incidents"), content=b'{"b":2}')
    assert len(writes) == 4, writes
    assert writes[0].startswith(b"POST /prefix/incidents HTTP/1.1\r\n")
    assert writes[0].endswith(b'\r\n\r\n{"a":1}')
    assert writes[1].startswith(b"GET ") and writes[1].endswith(b"\r\n\r\n")
    assert writes[2].startswith(b"PUT ") and writes[2].endswith(b"\r\n\r\n")
    assert writes[3].startswith(b"PUT ") and writes[3].endswith(b'\r\n\r\n{"b":2}')
    assert [body for *_, body in server.requests] == [b'{"a":1}', b"", b"", b'{"b":2}']


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


@pytest.mark.usefixtures("no_proxy")
def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    # The far end drops the kept connection after 0.1 s idle: the next request goes out on a
    # new connection instead of failing on the dead one.
    with _serving(_reply(200, b"ok"), idle_timeout=0.1) as (server, pool):
        assert pool.send("GET", pool.url("/a")).content == b"ok"
        time.sleep(0.5)
        assert pool.send("GET", pool.url("/b")).content == b"ok"
    assert server.connections == 2 and len(server.requests) == 2


@pytest.mark.usefixtures("no_proxy")
def test_an_answer_that_closes_its_connection_leaves_it_out_of_the_pool() -> None:
    def closing(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        _reply(200, b"bye", {"Connection": "close"})(handler)

    with _serving(closing) as (server, pool):
        assert [pool.send("GET", pool.url("/x")).content for _ in range(3)] == [b"bye"] * 3
        assert isinstance(pool._sender, pool_module._KeepAliveSender)
        assert not any(pool._sender._idle.values())
    assert server.connections == 3


@pytest.mark.usefixtures("no_proxy")
def test_an_idle_connection_past_its_expiry_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "KEEPALIVE_EXPIRY_S", 0.0)
    with _serving(_reply(200)) as (server, pool):
        for _ in range(3):
            assert pool.send("GET", pool.url("/x")).status_code == 200
    assert server.connections == 3


@pytest.mark.usefixtures("no_proxy")
def test_concurrent_requests_get_connections_of_their_own_and_few_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "MAX_CONNECTIONS", 1)
    both_in = threading.Barrier(2, timeout=5)

    def together(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.endswith("/together"):
            both_in.wait()  # only answers once both requests are in: two connections
        _reply(200, handler.path.encode())(handler)

    with _serving(together) as (server, pool):
        answers: list[bytes] = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(pool.send("GET", pool.url("/together")).content)
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert answers == [b"/prefix/together"] * 2
        # One of the two is kept (MAX_CONNECTIONS): the next requests reuse it
        assert pool.send("GET", pool.url("/after")).content == b"/prefix/after"
        assert pool.send("GET", pool.url("/after")).content == b"/prefix/after"
    assert server.connections == 2


@pytest.mark.usefixtures("no_proxy")
def test_a_requests_own_header_replaces_the_pools_whatever_its_case() -> None:
    assert _merged({"From": "a@x.test", "Accept": "*/*"}, {"from": "b@x.test"}) == {
        "Accept": "*/*",
        "from": "b@x.test",
    }
    with _serving(_reply(200)) as (server, pool):
        pool.send("GET", pool.url("/x"), headers={"authorization": "Token token=other"})
    ((_, _, headers, _),) = server.requests
    assert [value for name, value in headers.items() if name.lower() == "authorization"] == [
        "Token token=other"
    ]


@pytest.mark.usefixtures("no_proxy")
def test_extra_headers_are_merged_per_request_unless_read_only_and_the_same() -> None:
    from types import MappingProxyType

    own = MappingProxyType({"From": "a@x.test"})
    changing = {"From": "b@x.test"}
    with _serving(_reply(200)) as (server, pool):
        pool.send("PUT", pool.url("/x"), headers=own)
        pool.send("PUT", pool.url("/x"), headers=own)
        pool.send("PUT", pool.url("/x"), headers=changing)
        changing["From"] = "c@x.test"  # a plain dict may change between requests
        pool.send("PUT", pool.url("/x"), headers=changing)
        pool.send("PUT", pool.url("/x"), headers=own)
        pool.send("GET", pool.url("/x"))
    sent = [headers.get("From") for _, _, headers, _ in server.requests]
    assert sent == ["a@x.test", "a@x.test", "b@x.test", "c@x.test", "a@x.test", None]
    assert all(headers["Authorization"] == "Token token=t" for *_, headers, _ in server.requests)


@pytest.mark.usefixtures("no_proxy")
def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    def garbage(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.wfile.write(b"SPEAKING SOMETHING ELSE\r\n\r\n")

    with _serving(garbage) as (_, pool), pytest.raises(httpx.RemoteProtocolError):
        pool.send("GET", pool.url("/x"))


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.mark.usefixtures("no_proxy")
def test_https_is_verified_against_the_trusted_authorities(
    certificate_authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1").configure_cert(server_tls)

    # Not trusted (the default authorities): refused during the handshake, a TLS error.
    with _serving(_reply(200, b"secret"), tls=server_tls) as (server, pool):
        assert server.url.startswith("https://")
        with pytest.raises(httpx.ConnectError) as refused:
            pool.send("GET", pool.url("/x"))
    assert classify_transport_failure(refused.value).message.startswith("TLS error")
    assert server.requests == []

    # Trusted (as with SSL_CERT_FILE naming the authority): answered, the connection kept.
    def trusting() -> ssl.SSLContext:
        context = ssl.create_default_context()
        certificate_authority.configure_trust(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", trusting)
    tls_context.cache_clear()  # loaded once per process: load it again, trusting
    try:
        with _serving(_reply(200, b"secret"), tls=server_tls) as (server, pool):
            assert [pool.send("GET", pool.url("/x")).content for _ in range(2)] == [b"secret"] * 2
    finally:
        tls_context.cache_clear()
    assert server.connections == 1


# -- answers as the wire carries them: a raw loopback server --------------------------------


@contextlib.contextmanager
def _raw_server(*answers: bytes, close_after: bool = False) -> Iterator[tuple[str, list[int]]]:
    """A server that reads each request (head, and a body of its Content-Length) and writes the
    next of ``answers`` as given, byte for byte; yields its URL and a count of connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    connections: list[int] = []
    pending = list(answers)
    stopped = threading.Event()

    def serve() -> None:
        while pending and not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            connections.append(1)
            with conn:
                data = b""
                while pending:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if b"\r\n\r\n" not in data:
                        break
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                    conn.sendall(pending.pop(0))
                    if close_after:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    finally:
        stopped.set()
        thread.join(2)
        listener.close()


@pytest.mark.usefixtures("no_proxy")
def test_chunked_and_interim_answers_are_read_whole_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
    )
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 201 Created\r\n"
    interim += b"Content-Length: 2\r\nX-Final: yes\r\n\r\n{}"
    with _raw_server(chunked, interim) as (url, connections):
        pool = _real_pool(url)
        first = pool.send("GET", pool.url("/x"))
        second = pool.send("POST", pool.url("/x"), content=b"{}")
        pool.close()
    assert (first.status_code, first.content) == (200, b'{"a": 1}')
    assert first.headers["content-type"] == "application/json"
    assert (second.status_code, second.content) == (201, b"{}")
    assert second.headers["x-final"] == "yes" and "link" not in second.headers
    assert len(connections) == 1


@pytest.mark.usefixtures("no_proxy")
def test_an_answer_ending_with_its_connection_is_read_whole_and_not_kept() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with _raw_server(until_close, http10, close_after=True) as (url, connections):
        pool = _real_pool(url)
        assert pool.send("GET", pool.url("/x")).content == b"all of it"
        assert pool.send("GET", pool.url("/x")).content == b"ok"  # HTTP/1.0: closed after
        assert isinstance(pool._sender, pool_module._KeepAliveSender)
        assert not any(pool._sender._idle.values())
        pool.close()
    assert len(connections) == 2


@pytest.mark.usefixtures("no_proxy")
def test_an_answer_cut_off_mid_body_is_a_protocol_error() -> None:
    cut = b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"incident":'
    with _raw_server(cut, close_after=True) as (url, _):
        pool = _real_pool(url)
        with pytest.raises(httpx.RemoteProtocolError, match="before the answer was complete"):
            pool.send("POST", pool.url("/incidents"), content=b"{}")
        pool.close()


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize(
    ("name", "value"),
    [("From", "a@x.test\r\nX-Evil: 1"), ("From", "a@x.test\n"), ("Bad Name", "v"), ("X", "\x00")],
)
def test_a_header_that_could_smuggle_a_line_is_refused_before_anything_is_sent(
    name: str, value: str
) -> None:
    with _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as (url, connections):
        pool = _real_pool(url)
        with pytest.raises(ValueError, match="invalid"):
            pool.send("GET", pool.url("/x"), headers={name: value})
        pool.close()
    assert connections == []  # refused before a connection was even made


@pytest.mark.usefixtures("no_proxy")
def test_a_head_request_is_refused_its_answer_would_be_misread() -> None:
    with _raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n") as (url, connections):
        pool = _real_pool(url)
        with pytest.raises(ValueError, match="unsupported method"):
            pool.send("HEAD", pool.url("/x"))
        pool.close()
    assert connections == []


@pytest.mark.usefixtures("no_proxy")
def test_bytes_after_the_answer_are_not_taken_for_it_and_the_connection_is_dropped() -> None:
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Extra: 1\r\n\r\n{}HTTP/1.1 500 Oops\r\n"
    extra += b"Content-Length: 4\r\nX-Second: 1\r\n\r\nnope"
    with _raw_server(extra, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as (url, conns):
        pool = _real_pool(url)
        first = pool.send("GET", pool.url("/x"))
        assert (first.status_code, first.content) == (200, b"{}")
        assert "x-second" not in first.headers and first.headers["x-extra"] == "1"
        assert pool.send("GET", pool.url("/x")).content == b"ok"  # on a new connection
        pool.close()
    assert len(conns) == 2


# -- several requests in flight at once (Settings.pagerduty_calls_in_flight) -----------------


@pytest.mark.usefixtures("no_proxy")
def test_requests_sent_together_are_all_in_flight_before_any_answer_is_read() -> None:
    all_in = threading.Barrier(3, timeout=5)

    def together(handler: http.server.BaseHTTPRequestHandler) -> None:
        # Answers only once all three requests are in: a pool that waited for each answer
        # before sending the next would break the barrier and get no answer.
        all_in.wait()
        _reply(201, handler.path.encode())(handler)

    with _serving(together) as (server, pool):
        replies = pool.send_together(
            [
                pool_module.Outgoing("POST", pool.url(f"/incidents/{n}"), b"{}", {"From": "a@b"})
                for n in range(3)
            ]
        )
        assert [(reply.status_code, reply.content) for reply in replies] == [  # type: ignore[union-attr]
            (201, f"/prefix/incidents/{n}".encode()) for n in range(3)
        ]
        assert all(request[2]["From"] == "a@b" for request in server.requests)
        assert server.connections == 3
        # The three connections are kept: the next requests open none
        all_in = threading.Barrier(1)
        for _ in range(3):
            assert pool.send("GET", pool.url("/after")).status_code == 201
        assert server.connections == 3


@pytest.mark.usefixtures("no_proxy")
def test_one_request_failing_among_several_leaves_the_others_answered() -> None:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path.endswith("/cut"):
            handler.close_connection = True  # no answer at all: the connection just ends
            return
        _reply(201, handler.path.encode())(handler)

    with _serving(answer) as (_, pool):
        first, cut, last = pool.send_together(
            [pool_module.Outgoing("POST", pool.url(path), b"{}") for path in ("/a", "/cut", "/b")]
        )
    assert isinstance(first, pool_module.Reply) and first.content == b"/prefix/a"
    assert isinstance(cut, httpx.RemoteProtocolError)
    assert classify_transport_failure(cut).status is None
    assert isinstance(last, pool_module.Reply) and last.content == b"/prefix/b"


@pytest.mark.usefixtures("no_proxy")
def test_a_request_that_cannot_be_made_stops_the_group_before_anything_is_sent() -> None:
    with (
        _serving(_reply(201)) as (server, pool),
        pytest.raises(ValueError, match="invalid value for header"),
    ):
        pool.send_together(
            [
                pool_module.Outgoing("POST", pool.url("/a"), b"{}"),
                pool_module.Outgoing("POST", pool.url("/b"), b"{}", {"From": "x\r\nEvil: 1"}),
            ]
        )
    assert server.requests == [] and server.connections == 0


def test_through_a_transport_requests_go_one_by_one_each_failure_in_its_place() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/down"):
            raise httpx.ConnectError("refused")
        return httpx.Response(201, content=request.url.path.encode())

    pool = _pool(handler)
    replies = pool.send_together(
        [pool_module.Outgoing("POST", pool.url(path), b"{}") for path in ("/a", "/down", "/b")]
    )
    assert seen == ["/prefix/a", "/prefix/down", "/prefix/b"]
    assert isinstance(replies[1], httpx.ConnectError)
    assert [reply.content for reply in (replies[0], replies[2])] == [b"/prefix/a", b"/prefix/b"]  # type: ignore[union-attr]


@pytest.mark.usefixtures("no_proxy")
def test_a_group_that_gets_no_answer_waits_one_read_timeout_not_one_each() -> None:
    release = threading.Event()

    def never(handler: http.server.BaseHTTPRequestHandler) -> None:
        release.wait(10)  # takes the request, never answers while the client waits

    with _serving(never, read_timeout=0.5) as (_, pool):
        started = time.monotonic()
        replies = pool.send_together(
            [pool_module.Outgoing("POST", pool.url(f"/{n}"), b"{}") for n in range(4)]
        )
        waited = time.monotonic() - started
        release.set()
    assert all(isinstance(reply, httpx.ReadTimeout) for reply in replies)
    # Each answer had the read timeout from when its request went out: about 0.5 s for the
    # four, where reading them one timeout after another would take 2 s.
    assert waited < 1.5, waited


def test_a_group_with_its_connect_time_spent_makes_no_further_attempt() -> None:
    sender = pool_module._KeepAliveSender(tls_context())
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nobody listens: an attempt would be refused at once
    timeout: dict[str, float | None] = {"connect": 2.0, "read": 2.0}
    with pytest.raises(httpx.ConnectTimeout, match="connect time is spent"):
        sender._connect(("http", "127.0.0.1", port), timeout, within=0.0)
    with pytest.raises(httpx.ConnectError):  # with time left, it tries, and is refused
        sender._connect(("http", "127.0.0.1", port), timeout, within=1.0)
