"""Integration fixtures: a real PostgreSQL database, a real Redis, and pagerbridge's own
processes (simulator, api, Celery worker) started as a user would start them."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from tests.conftest import POSTGRES_HOWTO, REDIS_HOWTO, secrets_in, service_missing
from worker.ops.migrate import upgrade
from worker.simulator.control import SimulatorControl

POSTGRES_ADMIN_URL = os.environ.get(
    "PAGERBRIDGE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("PAGERBRIDGE_TEST_REDIS", "redis://127.0.0.1:6379/13")
INGRESS_TOKEN = "integration-ingress-token-0123456789"
PAGERDUTY_TOKEN = "integration-pagerduty-token"
SERVICE_ID = "PINTEGR"

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 20.0, what: str = "condition") -> T:
    """Poll until ``condition()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
        last = condition()
    return last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: What `run --simulate` and `demo` say when they start a Redis of their own (worker/ops/tryout.py).
TRYOUT_NOTICE = "try-out mode"
#: Runs the command with fakeredis unimportable: an install without the `tryout` extra.
WITHOUT_FAKEREDIS = (
    "import sys; sys.modules['fakeredis'] = None; from worker.cli import main; main()"
)


def nothing_listens() -> str:
    """A Redis URL on a loopback port where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def path_without_redis_server(tmp_path: Path) -> str:
    """A PATH on which no redis-server is found (the interpreter needs none)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards.

    Bridges with different namespaces may share one (test_namespaces.py shows that they do);
    a test gets its own so that what it counts in the tables is its own bridge's doing.
    """
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        service_missing(f"PostgreSQL at {POSTGRES_ADMIN_URL} ({reason}): {POSTGRES_HOWTO}")
        raise AssertionError("unreachable") from exc
    name = f"pagerbridge_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The shared bridge's database for this test session."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        service_missing(f"Redis at {REDIS_TEST_URL} ({exc}): {REDIS_HOWTO}")
    client.close()
    return REDIS_TEST_URL


@pytest.fixture(scope="session")
def namespace() -> str:
    """This test session's Celery queue and Redis key prefix: sessions never share work."""
    return f"pagerbridge-test-{uuid.uuid4().hex[:8]}"


@dataclass
class Service:
    """A pagerbridge process started with ``python -m worker.cli``; its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


#: The log file of every pagerbridge process the tests started: none may hold a token. (The
#: simulator's are left out: it is PagerDuty's stand-in, and is told the token it accepts.)
SERVICE_LOGS: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_service_logs() -> Iterator[None]:
    yield
    leaked = {
        str(path): found[:3]
        for path in SERVICE_LOGS
        if path.exists() and (found := secrets_in(path.read_text(errors="replace").splitlines()))
    }
    if leaked:
        pytest.fail(f"pagerbridge processes logged a token: {leaked}", pytrace=False)


def start_service(name: str, args: list[str], env: dict[str, str], logs: Path) -> Service:
    log = logs / f"{name}.log"
    if name != "simulator":
        SERVICE_LOGS.append(log)
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Service(name, process, log)


def wait_until_up(service: Service, ready: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(
                f"{service.name} exited with {service.process.returncode}:\n"
                f"{service.output()[-3000:]}"
            )
        with contextlib.suppress(Exception):  # not listening yet
            if ready():
                return
        time.sleep(0.1)
    pytest.fail(f"{service.name} did not become ready in {timeout}s:\n{service.output()[-3000:]}")


_NAMESPACE_ROOT = re.compile(r"^pagerbridge@[A-Za-z0-9_.-]+/")


def as_default_key(key: str) -> str:
    """An incident key (or dedup_key) as the default namespace spells it: another namespace's
    ``pagerbridge@<namespace>/`` root (worker.pagerduty.events.dedup_key) read as
    ``pagerbridge/``. Each test bridge has a namespace of its own."""
    return _NAMESPACE_ROOT.sub("pagerbridge/", key)


@dataclass
class Bridge:
    """A running bridge: api, worker, simulator, and the database they share."""

    api_url: str
    simulator: SimulatorControl
    sessions: sessionmaker[Session]
    services: dict[str, Service] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    headers: dict[str, str] = field(
        default_factory=lambda: {"Authorization": f"Token token={INGRESS_TOKEN}"}
    )

    def incidents(self, key_prefix: str = "") -> list[dict[str, Any]]:
        """The simulator's incidents whose key starts with ``key_prefix``, spelled as in the
        default namespace (``pagerbridge/coscale/...``) whatever the bridge's namespace."""
        return [
            incident
            for incident in self.simulator.state()["incidents"]
            if as_default_key(str(incident.get("incident_key") or "")).startswith(key_prefix)
        ]

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{svc.output()[-4000:]}" for name, svc in self.services.items()
        )


def bridge_env(
    database_url: str, redis_url: str, pagerduty_url: str, namespace: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env.update(
        {
            "PAGERBRIDGE_DATABASE_URL": database_url,
            "PAGERBRIDGE_REDIS_URL": redis_url,
            "PAGERBRIDGE_NAMESPACE": namespace,
            "PAGERBRIDGE_PAGERDUTY_URL": pagerduty_url,
            "PAGERBRIDGE_PAGERDUTY_TOKEN": PAGERDUTY_TOKEN,
            "PAGERBRIDGE_PAGERDUTY_FROM": "bridge@example.com",
            "PAGERBRIDGE_PAGERDUTY_SERVICE_ID": SERVICE_ID,
            "PAGERBRIDGE_INGRESS_TOKENS": INGRESS_TOKEN,
            "PAGERBRIDGE_SWEEP_INTERVAL": "1",
            # Resolves go at once; tests of the flap window set it.
            "PAGERBRIDGE_FLAP_WINDOW": "0",
            "PAGERBRIDGE_RETRY_MIN_BACKOFF": "0.5",
            "PAGERBRIDGE_RETRY_MAX_BACKOFF": "2",
            "PAGERBRIDGE_LOG_LEVEL": "INFO",
            # A port of its own per bridge: several run at once, and the default would clash.
            "PAGERBRIDGE_WORKER_METRICS_PORT": str(free_port()),
        }
    )
    return env


@contextlib.contextmanager
def running_bridge(
    database_url: str,
    redis_url: str,
    namespace: str,
    logs: Path,
    *,
    settings: Callable[[str], dict[str, str]] | None = None,
    simulator_args: tuple[str, ...] = ("--token", PAGERDUTY_TOKEN),
) -> Iterator[Bridge]:
    """Simulator + api + Celery workers (delivery, 2 processes; intake, 1) + beat, on loopback,
    as a user starts them; stopped at the end. ``settings(simulator_url)`` adds to the
    environment."""
    sim_port, api_port = free_port(), free_port()
    simulator_url = f"http://127.0.0.1:{sim_port}"
    env = bridge_env(database_url, redis_url, simulator_url, namespace)
    env.update(settings(simulator_url) if settings else {})
    simulator = SimulatorControl(simulator_url)
    engine = make_engine(database_url)
    bridge = Bridge(
        f"http://127.0.0.1:{api_port}",
        simulator,
        make_session_factory(engine, namespace),
        env=env,
    )
    try:
        sim = start_service(
            "simulator", ["simulate", "--port", str(sim_port), *simulator_args], env, logs
        )
        bridge.services["simulator"] = sim
        wait_until_up(sim, lambda: bool(simulator.state() is not None))
        api = start_service("api", ["api", "--port", str(api_port)], env, logs)
        bridge.services["api"] = api
        wait_until_up(api, lambda: _http_ok(f"{bridge.api_url}/healthz"))
        # As docker-compose.yml runs them: the delivery workers, and an intake worker of its
        # own (its metrics on a port of its own, the host being shared).
        worker = start_service(
            "worker", ["worker", "--queues", "delivery", "--concurrency", "2"], env, logs
        )
        bridge.services["worker"] = worker
        intake = start_service(
            "intake",
            ["worker", "--queues", "intake", "--concurrency", "1"],
            {**env, "PAGERBRIDGE_WORKER_METRICS_PORT": str(free_port())},
            logs,
        )
        bridge.services["intake"] = intake
        for started in (worker, intake):
            wait_until_up(started, lambda started=started: " ready." in started.output())
        beat = start_service(
            "beat",
            ["beat"],
            {**env, "PAGERBRIDGE_BEAT_SCHEDULE_PATH": str(logs / "beat-schedule")},
            logs,
        )
        bridge.services["beat"] = beat
        # Up once it has sent its first sweep (it refuses to start without Redis).
        wait_until_up(beat, lambda: "Sending due task" in beat.output())
        yield bridge
    finally:
        for service in reversed(list(bridge.services.values())):
            service.stop()
        simulator.close()
        engine.dispose()


@pytest.fixture(scope="session")
def bridge(
    postgres_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """The shared bridge of the test session, against PostgreSQL."""
    with running_bridge(
        postgres_url, redis_url, namespace, tmp_path_factory.mktemp("bridge-logs")
    ) as bridge:
        yield bridge


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310  (loopback only)
        return bool(answer.status == 200)
