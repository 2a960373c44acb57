"""The PagerDuty clients over real sockets on loopback: keep-alive, calls in flight together,
timeouts, refused connections, redirects, HTTPS verified against SSL_CERT_FILE, and a proxy
named by HTTPS_PROXY, all as httpx does them."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from worker.pagerduty import NewIncident, PagerDutyClient, RetryableError
from worker.pagerduty.events import EventsClient, build_event
from worker.pagerduty.http_client import tls_context

TOKEN = "loopback-token"
FROM = "bridge@example.com"
ROUTING_KEY = "R0UTINGKEY0000000000000000000001"
ROOT = Path(__file__).resolve().parents[3]


class _Server:
    """A loopback HTTP/1.1 server (TLS if given a context) answering with ``answer``; it records
    every request and counts connections."""

    def __init__(self, answer: Any, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as PagerDuty's API

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append((self.command, self.path, dict(self.headers), body))
                answer(self, body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    content = json.dumps(body).encode() if body is not None else b""

    def answer(handler: http.server.BaseHTTPRequestHandler, body: bytes = b"") -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)

    return answer


@contextlib.contextmanager
def _serving(answer: Any, tls: ssl.SSLContext | None = None) -> Iterator[_Server]:
    server = _Server(answer, tls)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _client(url: str, read_timeout: float = 5.0) -> PagerDutyClient:
    return PagerDutyClient(url, TOKEN, FROM, connect_timeout=2, read_timeout=read_timeout)


def _incident_answer(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    key = json.loads(body)["incident"]["incident_key"]
    _reply(201, {"incident": {"id": f"P-{key}", "status": "triggered", "incident_key": key}})(
        handler, body
    )


def test_a_call_goes_out_as_pagerduty_asks_and_its_connection_is_kept() -> None:
    answer = _incident_answer

    with _serving(answer) as server, _client(server.url + "/prefix") as client:
        first = client.create_incident(title="t", service_id="S1", incident_key="k1")
        second = client.create_incident(title="t", service_id="S1", incident_key="k2")
    assert (first.id, second.id) == ("P-k1", "P-k2")
    (method, path, headers, body), *_ = server.requests
    assert (method, path) == ("POST", "/prefix/incidents")
    assert headers["Authorization"] == f"Token token={TOKEN}" and headers["From"] == FROM
    assert headers["Content-Length"] == str(len(body))
    assert server.connections == 1  # the second call reused the first one's connection


def test_creates_sent_together_are_all_in_flight_before_any_is_answered() -> None:
    all_in = threading.Barrier(4, timeout=10)

    def answer(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        # Answers only once all four requests are in: a client that waited for each answer
        # before sending the next would break the barrier and get no answer.
        all_in.wait()
        _incident_answer(handler, body)

    with _serving(answer) as server, _client(server.url) as client:
        made = client.create_incidents([NewIncident("t", "S1", f"k{n}") for n in range(4)])
        assert [getattr(incident, "id", incident) for incident in made] == [
            f"P-k{n}" for n in range(4)
        ]
        assert server.connections == 4
        # The four connections are kept: the next group opens none
        all_in = threading.Barrier(4, timeout=10)
        client.create_incidents([NewIncident("t", "S1", f"j{n}") for n in range(4)])
        assert server.connections == 4


def test_a_group_that_gets_no_answer_fails_each_call_with_a_read_timeout() -> None:
    all_in, release = threading.Barrier(5, timeout=10), threading.Event()

    def never(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        all_in.wait()
        release.wait(10)  # takes the request, never answers while the client waits

    with _serving(never) as server:
        events = EventsClient(ROUTING_KEY, url=server.url + "/v2/enqueue", read_timeout=0.5)
        sent = threading.Thread(
            target=lambda: results.extend(
                events.send_together(
                    [build_event("resolve", f"pagerbridge/coscale/{n}/1") for n in range(4)]
                )
            )
        )
        results: list[Any] = []
        sent.start()
        all_in.wait()  # all four are at the server at once
        sent.join(10)
        release.set()
        events.close()
    assert len(results) == 4
    assert all(isinstance(error, RetryableError) for error in results)
    assert all("read timeout" in str(error) for error in results)


def test_a_refused_connection_is_retryable_and_says_so() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nobody listens
    with _client(f"http://127.0.0.1:{port}") as client, pytest.raises(RetryableError) as caught:
        client.find_incidents("k")
    assert "connection refused" in str(caught.value) and TOKEN not in str(caught.value)


def test_a_redirect_is_an_answer_never_followed() -> None:
    answer = _reply(302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    with (
        _serving(answer) as server,
        _client(server.url) as client,
        pytest.raises(RetryableError) as caught,
    ):
        client.update_incident("P1", "resolved")
    assert caught.value.status == 302
    assert len(server.requests) == 1


# -- HTTPS: verified as httpx verifies (certifi, or SSL_CERT_FILE) ----------------------------


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusting(
    authority: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """SSL_CERT_FILE names the test's authority, as an operator's private CA would be."""
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    tls_context.cache_clear()  # loaded once per process: load it again, trusting
    yield
    tls_context.cache_clear()


def _server_tls(authority: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(*names).configure_cert(context)
    return context


@pytest.mark.usefixtures("trusting")
def test_https_to_a_trusted_name_is_answered(authority: trustme.CA) -> None:
    answer = _reply(200, {"incidents": []})
    with _serving(answer, _server_tls(authority, "127.0.0.1")) as server:
        assert server.url.startswith("https://")
        with _client(server.url) as client:
            assert client.find_incidents("k") == []
            assert client.find_incidents("k") == []
    assert server.connections == 1


@pytest.mark.usefixtures("trusting")
def test_https_to_a_certificate_for_another_name_is_refused(authority: trustme.CA) -> None:
    answer = _reply(200, {"incidents": []})
    with (
        _serving(answer, _server_tls(authority, "api.pagerduty.test")) as server,
        _client(server.url) as client,
        pytest.raises(RetryableError) as caught,
    ):
        client.find_incidents("k")
    assert str(caught.value).startswith("PagerDuty: TLS error"), str(caught.value)
    assert "mismatch" in str(caught.value)  # the name, not the authority, was refused
    assert server.requests == []


def test_https_signed_by_an_authority_nobody_trusts_is_refused(authority: trustme.CA) -> None:
    tls_context.cache_clear()  # certifi's authorities only
    answer = _reply(200, {"incidents": []})
    try:
        with (
            _serving(answer, _server_tls(authority, "127.0.0.1")) as server,
            _client(server.url) as client,
            pytest.raises(RetryableError) as caught,
        ):
            client.find_incidents("k")
    finally:
        tls_context.cache_clear()
    assert "TLS error" in str(caught.value)
    assert server.requests == []


# -- a proxy named by HTTPS_PROXY ----------------------------------------------------------------


class _TunnelProxy:
    """A CONNECT proxy on loopback: it records each tunnel's target and sends every one to
    ``port`` on 127.0.0.1, so a name nobody can resolve reaches the test's server."""

    def __init__(self, port: int) -> None:
        self.targets: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                proxy.targets.append(self.path)
                upstream = socket.create_connection(("127.0.0.1", port))
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                _pipe(self.connection, upstream)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Bytes both ways until either side closes."""
    with upstream:
        sockets = [client, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)


@pytest.mark.usefixtures("trusting")
def test_https_goes_through_the_proxy_the_environment_names(
    authority: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = _reply(200, {"incidents": []})
    with _serving(answer, _server_tls(authority, "api.pagerduty.test")) as server:
        proxy = _TunnelProxy(server.port)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        try:
            # api.pagerduty.test resolves nowhere: only the proxy can reach it, and the
            # certificate is still checked against that name through the tunnel.
            with _client("https://api.pagerduty.test") as client:
                assert client.find_incidents("k") == []
        finally:
            proxy.close()
    assert proxy.targets == ["api.pagerduty.test:443"]
    ((method, path, headers, _),) = server.requests
    assert (method, headers["Authorization"]) == ("GET", f"Token token={TOKEN}")
    assert path.startswith("/incidents?incident_key=k")


# -- one client per process ----------------------------------------------------------------------

PREFORK = """
import os, sys
from worker.pipeline import runtime
from worker.pagerduty.http_client import tls_context

parent = runtime.current_runtime()
parents_http = parent.pagerduty._http
context = tls_context()  # as the worker loads it before its pool forks
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a pool process
    child = runtime.current_runtime()
    verdict = (
        child is not parent
        and child.pagerduty is not parent.pagerduty
        and child.pagerduty._http is not parents_http
        and tls_context() is context
    )
    os.write(write, b"own" if verdict else b"inherited")
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.write(os.read(read, 100).decode())
"""


def test_a_forked_pool_process_makes_its_own_http_client() -> None:
    env = {
        **os.environ,
        "PAGERBRIDGE_PAGERDUTY_TOKEN": TOKEN,
        "PAGERBRIDGE_PAGERDUTY_FROM": FROM,
        "PAGERBRIDGE_PAGERDUTY_URL": "http://127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-c", PREFORK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "own"
