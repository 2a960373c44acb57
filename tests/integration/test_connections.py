"""The api's connections against a real server: idle and slow clients cut off, the connection cap,
an abandoned upload, and HTTPS from a certificate of the settings (a loopback one, trustme)."""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import trustme

from tests.integration.conftest import (
    INGRESS_TOKEN,
    Service,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_until_up,
)

pytestmark = pytest.mark.integration

IDLE = 3.0  # seconds: PAGERBRIDGE_HTTP_IDLE_TIMEOUT of these tests
REQUEST = 2.0  # seconds: PAGERBRIDGE_HTTP_REQUEST_TIMEOUT
CAP = 12  # PAGERBRIDGE_HTTP_MAX_CONNECTIONS
AUTH = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
WEBHOOK = {"alert_id": "conn-1", "action": "triggered", "message": "disk full"}


@pytest.fixture
def env(redis_url: str) -> Iterator[dict[str, str]]:
    namespace = f"pagerbridge-conn-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url:
        env = bridge_env(database_url, redis_url, "http://127.0.0.1:9", namespace)
        env.update(
            {
                "PAGERBRIDGE_HTTP_IDLE_TIMEOUT": str(IDLE),
                "PAGERBRIDGE_HTTP_REQUEST_TIMEOUT": str(REQUEST),
                "PAGERBRIDGE_HTTP_MAX_CONNECTIONS": str(CAP),
            }
        )
        yield env
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{namespace}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, int, Service]]:
    port = free_port()
    service = start_service("api", ["api", "--port", str(port)], env, tmp_path)
    try:
        wait_until_up(service, lambda: _webhook(port).status_code == 202)
        yield "127.0.0.1", port, service
    finally:
        service.stop()


def _webhook(port: int) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/webhooks/coscale", json=WEBHOOK, headers=AUTH, timeout=5
    )


def _read_to_close(connection: socket.socket) -> bytes:
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_a_connection_that_sends_nothing_is_closed(api: tuple[str, int, Service]) -> None:
    host, port, _ = api
    with socket.create_connection((host, port), timeout=IDLE * 10) as connection:
        # When the client sends nothing, the server closes the connection (recv sees the end;
        # the socket timeout, far longer, would raise instead)
        started = time.monotonic()
        assert _read_to_close(connection) == b""
        print(f"idle connection closed after {time.monotonic() - started:.2f}s")


def test_headers_sent_a_byte_at_a_time_are_answered_408_and_closed(
    api: tuple[str, int, Service],
) -> None:
    host, port, _ = api
    request = (
        f"POST /webhooks/coscale HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {INGRESS_TOKEN}\r\n" + "X-Padding: " + "a" * 200 + "\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=IDLE * 10) as connection:
        started = time.monotonic()
        sent = 0
        for byte in request:
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            # Then, while the slow client trickles, a webhook is answered at once
            if sent == 3:
                assert _webhook(port).status_code == 202
            connection.settimeout(0.25)
            try:
                if connection.recv(1, socket.MSG_PEEK):
                    break  # the server answered
            except TimeoutError:
                continue
        connection.settimeout(IDLE * 10)
        answer = _read_to_close(connection)
    # Then the server answered 408 and closed before the headers were whole
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert sent < len(request)
    print(f"slow headers cut after {time.monotonic() - started:.2f}s, {sent} bytes sent")


def test_a_body_sent_a_byte_at_a_time_is_answered_408_in_the_one_shape(
    api: tuple[str, int, Service],
) -> None:
    host, port, _ = api
    body = json.dumps(WEBHOOK).encode()
    head = (
        f"POST /webhooks/coscale HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {INGRESS_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=IDLE * 10) as connection:
        connection.sendall(head)
        started = time.monotonic()
        sent = 0
        for byte in body:
            connection.settimeout(0.25)
            try:
                if connection.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        connection.settimeout(IDLE * 10)
        answer = _read_to_close(connection)
    head_out, _, payload = answer.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 408"), answer[:100]
    assert json.loads(payload)["error"]["field"] == "body"
    assert sent < len(body)
    print(f"slow body cut after {time.monotonic() - started:.2f}s, {sent} bytes sent")


def _closed_now(connection: socket.socket) -> bool:
    connection.settimeout(0.01)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_at_the_cap_the_longest_idle_connection_makes_room(
    api: tuple[str, int, Service],
) -> None:
    host, port, _ = api
    # Given the cap's worth of connections open and idle
    idle = [socket.create_connection((host, port), timeout=IDLE * 10) for _ in range(CAP)]
    try:
        time.sleep(1.2)  # past EVICTABLE_AFTER: they have waited without a request
        # When a webhook comes, it is taken at once
        assert _webhook(port).status_code == 202
        # Then the oldest idle connection was closed for it, and only that one
        time.sleep(0.1)  # its end on its way through loopback
        assert [_closed_now(connection) for connection in idle] == [True] + [False] * (CAP - 1)
    finally:
        for connection in idle:
            connection.close()


def test_past_the_cap_of_requests_in_progress_a_new_connection_is_refused_503(
    api: tuple[str, int, Service],
) -> None:
    host, port, _ = api
    # Given the cap's worth of requests in progress (headers sent, the body on its way)
    head = (
        f"POST /webhooks/coscale HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {INGRESS_TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{"
    ).encode()
    busy = [socket.create_connection((host, port), timeout=IDLE * 10) for _ in range(CAP)]
    try:
        for connection in busy:
            connection.sendall(head)
        time.sleep(0.3)  # the api has read their headers
        # When one more comes, it is answered 503 at once, without sending anything
        with socket.create_connection((host, port), timeout=IDLE * 10) as extra:
            answer = _read_to_close(extra)
        status, _, payload = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 503")
        assert "too many open connections" in json.loads(payload)["error"]["message"]
        # Then, their bodies late, they are answered 408, and webhooks are taken again
        assert all(_read_to_close(c).startswith(b"HTTP/1.1 408") for c in busy)
        assert _webhook(port).status_code == 202
    finally:
        for connection in busy:
            connection.close()


def test_an_abandoned_upload_is_one_log_line(api: tuple[str, int, Service]) -> None:
    host, port, service = api
    # Given a client that sends half its body and leaves
    with socket.create_connection((host, port), timeout=IDLE * 10) as connection:
        connection.sendall(
            (
                f"POST /webhooks/coscale HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {INGRESS_TOKEN}\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n" + '{"alert_id": "half'
            ).encode()
        )
    # Then the api logs one line, no traceback, and goes on answering
    assert _webhook(port).status_code == 202
    deadline = time.monotonic() + 20
    while "abandoned by the client" not in service.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    output = service.output()
    assert output.count("abandoned by the client") == 1
    assert "Traceback" not in output


def test_the_api_serves_https_with_the_certificate_of_its_settings(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given a certificate for 127.0.0.1 from a test CA (trustme), in the api's settings
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    env = {
        **env,
        "PAGERBRIDGE_TLS_CERTFILE": str(certfile),
        "PAGERBRIDGE_TLS_KEYFILE": str(keyfile),
    }
    trust = ssl.create_default_context()
    authority.configure_trust(trust)
    port = free_port()
    service = start_service("api", ["api", "--port", str(port)], env, tmp_path)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_until_up(service, lambda: httpx.get(f"{url}/healthz", verify=trust).status_code == 200)
        # When CoScale posts over HTTPS, checking the certificate
        answer = httpx.post(f"{url}/webhooks/coscale", json=WEBHOOK, headers=AUTH, verify=trust)
        # Then it is taken; plain HTTP on that port is not served
        assert answer.status_code == 202
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert "serving HTTPS" in service.output()
    finally:
        service.stop()
