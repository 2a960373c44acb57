"""A try-out's own Redis: where it listens, what it says, and that it is a Redis the gate and
Celery's transport can use (fakeredis's TCP server here; redis-server in the integration tests)."""

from __future__ import annotations

import socket
import sys
import threading

import fakeredis
import pytest
import redis

from worker.delivery.gate import Admission, DeliveryGate
from worker.errors import ServiceUnavailable
from worker.ops import tryout
from worker.ops.tryout import TryoutRedis, listen_port, notice, tryout_redis, tryout_url


def dead_url(database: int = 0) -> str:
    """A Redis URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/{database}"


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("redis://localhost:6379/0", 6379),
        ("redis://127.0.0.1:7000/2", 7000),
        ("redis://:secret@localhost/0", 6379),
        ("redis://[::1]:6390", 6390),
        ("redis://10.1.2.3:6379/0", None),  # another machine's: never impersonated
        ("rediss://localhost:6380/0", None),  # TLS: the try-out's Redis speaks none
    ],
)
def test_listens_on_the_configured_port_only_for_this_machine(url: str, port: int | None) -> None:
    assert listen_port(url) == port


def test_its_url_keeps_the_database_and_drops_the_credentials() -> None:
    assert tryout_url("redis://:secret@localhost:6379/5", 7001) == "redis://127.0.0.1:7001/5"
    assert tryout_url("redis://localhost", 7001) == "redis://127.0.0.1:7001/0"


def test_the_notice_says_try_out_not_durable_not_for_production_without_the_password() -> None:
    said = notice(
        "redis://:s3cret-pw@localhost:6379/0", TryoutRedis("redis://127.0.0.1:6379/0", "x")
    )
    assert "try-out mode" in said and "not durable" in said and "not for production" in said
    assert "redis://127.0.0.1:6379/0" in said and "PAGERBRIDGE_REDIS_URL" in said
    assert "s3cret-pw" not in said


def test_a_redis_that_answers_is_used_as_it_is() -> None:
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0))
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tryout_redis(f"redis://127.0.0.1:{port}/0") as started:
            assert started is None
    finally:
        server.shutdown()
        server.server_close()


def test_without_redis_server_fakeredis_serves_the_gate_and_the_queue_then_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tryout.shutil, "which", lambda name: None)
    url = dead_url(3)
    with tryout_redis(url) as started:
        assert started is not None and "fakeredis" in started.kind
        assert started.url == url  # the configured port was free: it listens there
        client = redis.Redis.from_url(started.url)
        # The gate's Lua scripts (EVALSHA, then EVAL on NOSCRIPT) run on it
        gate = DeliveryGate(client, "pd-token", failure_threshold=2, probe_interval=60)
        assert gate.admit().admission is Admission.GO
        gate.failed()
        assert gate.failed() is True
        assert gate.admit().admission is Admission.OUTAGE
        # A blocking pop is woken by a push from another connection, as kombu's consumer is
        other = redis.Redis.from_url(started.url)
        other.lpush("queue", b"message")
        assert client.brpop(["queue"], timeout=5) == (b"queue", b"message")
        client.close()
        other.close()
    assert not answers(url)


def test_nothing_to_start_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tryout.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # the extra not installed
    url = dead_url()
    with pytest.raises(tryout.NoTryoutRedis) as raised, tryout_redis(url):
        pass
    said = str(raised.value)
    assert url in said
    assert "apt-get install redis-server" in said and "pagerbridge[tryout]" in said


class RefusingRedis:
    """A Redis that answers every command with a refusal of the password (fakeredis's TCP
    server does not enforce ``requirepass``)."""

    def ping(self) -> bool:
        raise redis.AuthenticationError("invalid username-password pair")

    def close(self) -> None:
        pass


def test_a_redis_that_refuses_the_password_is_an_error_not_a_reason_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tryout.redis.Redis, "from_url", lambda *args, **kwargs: RefusingRedis())
    with (
        pytest.raises(ServiceUnavailable, match="refuses") as raised,
        tryout_redis("redis://:wrong-pw@127.0.0.1:6379/0"),
    ):
        pass
    assert "wrong-pw" not in str(raised.value)
