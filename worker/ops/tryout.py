"""A Redis of its own for a try-out: `pagerbridge run --simulate` and `pagerbridge demo` on a
machine that has none.

When no Redis answers at PAGERBRIDGE_REDIS_URL, those two start one for as long as they run: a
``redis-server`` found on the PATH, as a child process in a temporary directory with persistence
off, or, where there is none, fakeredis's Redis-compatible TCP server in this process (the
``tryout`` extra: fakeredis with Lua, which the delivery gate's scripts need). Either keeps
everything in memory: not durable, not for production. ``api``, ``worker`` and ``beat`` never
start one: for them a Redis that does not answer stays an error naming the URL.

It listens on the configured port when the URL names this machine and the port is free, so the
other commands run in another shell (`pagerbridge status`, `rejected --replay`) find it with the
same settings; otherwise on a free port, which the started processes are told.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from worker.errors import ServiceUnavailable

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
LISTEN_HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds for a redis-server child to answer PING

INSTALL_HINT = (
    "install Redis (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`) "
    'or the try-out extra (`pip install -e ".[tryout]"` in a checkout, '
    '`pip install "pagerbridge[tryout]"` otherwise), or point PAGERBRIDGE_REDIS_URL at a Redis'
)


class NoTryoutRedis(ServiceUnavailable):
    """No Redis answers, and neither redis-server nor fakeredis is there to start one."""


@dataclass(frozen=True, slots=True)
class TryoutRedis:
    """The Redis a try-out started: where it listens, and what it is."""

    url: str
    kind: str  # "redis-server (/usr/bin/redis-server)" or "fakeredis, in this process"


def listen_port(configured_url: str) -> int | None:
    """The configured URL's port when it names this machine; None for another host (a
    try-out's own Redis never pretends to be a remote one)."""
    parts = urlsplit(configured_url)
    if parts.scheme != "redis" or (parts.hostname or "localhost") not in LOOPBACK_HOSTS:
        return None
    return parts.port or 6379


def tryout_url(configured_url: str, port: int) -> str:
    """The URL of the try-out's Redis: the configured database number, no credentials (the
    try-out's Redis asks for none)."""
    database = urlsplit(configured_url).path.strip("/") or "0"
    return f"redis://{LISTEN_HOST}:{port}/{database}"


def notice(configured_url: str, started: TryoutRedis) -> str:
    """What a try-out says, once, when it started its own Redis."""
    configured = _without_credentials(configured_url)
    where = "there" if started.url == configured else f"on {started.url}"
    return (
        f"try-out mode: no Redis answers at {configured}, so this run started its own {where}: "
        f"{started.kind}. It keeps everything in memory: "
        "not durable (stopping loses the queue and the delivery gate's state), not for "
        "production. In production, run a Redis server and set PAGERBRIDGE_REDIS_URL."
    )


@contextmanager
def tryout_redis(configured_url: str) -> Iterator[TryoutRedis | None]:
    """None when a Redis answers at ``configured_url``; otherwise one started for the block.

    Raises :class:`NoTryoutRedis` when there is nothing to start.
    """
    if _answers(configured_url):
        yield None
        return
    port = _port_for(configured_url)
    url = tryout_url(configured_url, port)
    server = shutil.which("redis-server")
    if server is not None:
        with _redis_server(server, port):
            yield TryoutRedis(url, f"redis-server ({server}), persistence off")
        return
    try:  # the `tryout` extra: fakeredis, and lupa for the gate's Lua scripts
        import fakeredis
        import lupa  # noqa: F401
    except ImportError as exc:
        raise NoTryoutRedis(
            f"no Redis answers at {_without_credentials(configured_url)}, and there is none to "
            f"start for a try-out: {INSTALL_HINT}"
        ) from exc
    fake = fakeredis.TcpFakeServer((LISTEN_HOST, port))
    thread = threading.Thread(target=fake.serve_forever, name="tryout-redis", daemon=True)
    thread.start()
    try:
        yield TryoutRedis(url, "fakeredis's Redis-compatible server, in this process")
    finally:
        fake.shutdown()
        fake.server_close()
        thread.join(timeout=5)


@contextmanager
def _redis_server(executable: str, port: int) -> Iterator[None]:
    """``redis-server`` on ``port`` in a temporary directory, stopped at the end of the block.

    In a process group of its own: Ctrl-C in the terminal reaches the bridge's processes, which
    stop first, and this one is stopped after them, so none sees its Redis go away mid-stop.
    """
    with tempfile.TemporaryDirectory(prefix="pagerbridge-tryout-redis-") as workdir:
        log = Path(workdir) / "redis.log"
        process = subprocess.Popen(
            [
                executable,
                "--port",
                str(port),
                "--bind",
                LISTEN_HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_until_answers(process, port, log)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_answers(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    client = redis.Redis(host=LISTEN_HOST, port=port, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                said = log.read_text(errors="replace").strip()[-2000:] if log.exists() else ""
                raise ServiceUnavailable(
                    f"the try-out's redis-server exited with code {process.returncode} on port "
                    f"{port}: {said or 'no output'}"
                )
            try:
                client.ping()
                return
            except (redis.RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    process.kill()
                    raise ServiceUnavailable(
                        f"the try-out's redis-server does not answer on port {port} ({exc})"
                    ) from exc
            time.sleep(0.05)
    finally:
        client.close()


def _answers(url: str) -> bool:
    """Whether a Redis answers at ``url``. One that answers with a refusal (a wrong password)
    is there: a misconfiguration to fix, not a reason to start another."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        raise ServiceUnavailable(
            f"Redis at {_without_credentials(url)} refuses pagerbridge ({exc}); "
            "fix PAGERBRIDGE_REDIS_URL"
        ) from exc
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
    return True


def _port_for(configured_url: str) -> int:
    wanted = listen_port(configured_url)
    if wanted is not None and _can_listen(wanted):
        return wanted
    return _free_port()


def _can_listen(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server binds
        try:
            sock.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LISTEN_HOST, 0))
        return int(sock.getsockname()[1])


def _without_credentials(url: str) -> str:
    return url.split("@")[-1] if "@" in url else url
