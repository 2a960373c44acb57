"""The ingress while PostgreSQL is frozen or down, against real processes: a PostgreSQL cluster and
a redis-server of the test's own (never the shared ones), the api, worker, beat and simulator.

- frozen (SIGSTOP, connected and silent): every webhook is answered, from the queue alone past
  the store deadline, and every alert answered 2xx is delivered once it thaws;
- down, then Redis killed (SIGKILL) and restarted from its AOF: what was answered 2xx meanwhile
  is still queued, and delivered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import service_missing
from tests.integration.conftest import (
    INGRESS_TOKEN,
    PAGERDUTY_TOKEN,
    Bridge,
    as_default_key,
    bridge_env,
    free_port,
    running_bridge,
    start_service,
    wait_for,
    wait_until_up,
)
from tests.integration.test_durability import PrivateRedis
from worker.ops.migrate import upgrade
from worker.simulator.control import SimulatorControl

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
CLIENTS = 16  # concurrent senders during the freeze
FREEZE_SECONDS = 10
PAUSE_SECONDS = 0.05  # between one sender's webhooks


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        service_missing("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster in a directory of its own, as the ``postgres`` user when run as root
    (the server refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pagerbridge-pg-"))
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute("CREATE DATABASE pagerbridge")
        upgrade(self.url)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/pagerbridge"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        data = str(self.dir / "data")
        self._run("pg_ctl", "-D", data, "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def _processes(self) -> list[int]:
        """The postmaster and its children (the backends, checkpointer, ...)."""
        postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    pids.append(int(stat.parent.name))
        return pids

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the cluster stopped (SIGSTOP): connections stay open, and silent."""
        pids = self._processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _fsync_policy() -> str:
    """`everysec` where WAITAOF confirms the fsync (7.2 and later), `always` before it."""
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=True
    ).stdout
    number = version.split("v=", 1)[1].split()[0]
    major, minor = (int(part) for part in number.split(".")[:2])
    return "everysec" if (major, minor) >= (7, 2) else "always"


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    if shutil.which("redis-server") is None:
        service_missing("redis-server binary (apt-get install redis-server)")
    cluster = PrivatePostgres()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(
        free_port(), tmp_path / "redis", appendonly=True, appendfsync=_fsync_policy()
    )
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _delivered(bridge: Bridge, alert_ids: set[str]) -> bool:
    keys = {
        as_default_key(str(i.get("incident_key"))) for i in bridge.simulator.state()["incidents"]
    }
    return all(f"pagerbridge/coscale/{alert_id}/1" in keys for alert_id in alert_ids)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_a_frozen_database_never_stalls_the_ingress_and_loses_nothing(
    postgres: PrivatePostgres, aof_redis: PrivateRedis, tmp_path: Path
) -> None:
    namespace = f"freeze-{uuid.uuid4().hex[:6]}"
    # PagerDuty's rate budget out of the way: the test counts what is lost, not how fast the
    # backlog drains.
    with (
        running_bridge(
            postgres.url,
            aof_redis.url,
            namespace,
            tmp_path,
            settings=lambda _url: {"PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE": "1000000"},
        ) as bridge,
        httpx.Client(base_url=bridge.api_url, headers=AUTH, timeout=10) as api,
    ):
        ready = api.get("/readyz").json()
        assert ready["checks"]["redis_durability"]["status"] == "ok", ready
        answers: list[tuple[str, int | None, float]] = []
        lock = threading.Lock()

        def send(client_number: int, stop: threading.Event) -> None:
            with httpx.Client(base_url=bridge.api_url, headers=AUTH, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    alert_id = f"fz-{client_number}-{n}-{uuid.uuid4().hex[:4]}"
                    started = time.monotonic()
                    try:
                        status: int | None = client.post(
                            "/webhooks/coscale", json={"alert_id": alert_id, "action": "triggered"}
                        ).status_code
                    except httpx.HTTPError:
                        status = None  # not answered within the client's 10 s
                    with lock:
                        answers.append((alert_id, status, time.monotonic() - started))
                    n += 1
                    stop.wait(PAUSE_SECONDS)

        # Given PostgreSQL frozen while CoScale keeps sending
        stop = threading.Event()
        with postgres.frozen():
            senders = [
                threading.Thread(target=send, args=(n, stop), daemon=True) for n in range(CLIENTS)
            ]
            for sender in senders:
                sender.start()
            time.sleep(FREEZE_SECONDS)
            stop.set()
            for sender in senders:
                sender.join(timeout=30)
        # Then every webhook was answered, and 202 (the queue confirmed it on disk)
        statuses = [status for _, status, _ in answers]
        assert answers and statuses.count(202) == len(answers), {
            s: statuses.count(s) for s in set(statuses)
        }
        times = [seconds for _, _, seconds in answers]
        print(
            f"\nfrozen {FREEZE_SECONDS}s: {len(answers)} webhooks from {CLIENTS} clients, "
            f"answer p50 {statistics.median(times) * 1000:.0f} ms, "
            f"p99 {_percentile(times, 0.99) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )
        # And, thawed, every one of them reaches PagerDuty: none lost
        accepted = {alert_id for alert_id, status, _ in answers if status == 202}
        wait_for(
            lambda: _delivered(bridge, accepted),
            timeout=180,
            what=f"every accepted alert delivered after the thaw\n{bridge.logs()}",
        )
        print(f"alerts lost: 0 of {len(accepted)}")


def test_database_down_then_redis_killed_and_restarted_loses_nothing(
    postgres: PrivatePostgres, aof_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Given the api alone (no worker yet: what it accepts stays on the queue) and PostgreSQL down
    sim_port, api_port = free_port(), free_port()
    simulator_url = f"http://127.0.0.1:{sim_port}"
    env = bridge_env(postgres.url, aof_redis.url, simulator_url, f"aof-{uuid.uuid4().hex[:6]}")
    env["PAGERBRIDGE_BEAT_SCHEDULE_PATH"] = str(tmp_path / "beat-schedule")
    services = {}
    simulator = SimulatorControl(simulator_url)
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=AUTH, timeout=10)
    try:
        services["simulator"] = start_service(
            "simulator",
            ["simulate", "--port", str(sim_port), "--token", PAGERDUTY_TOKEN],
            env,
            tmp_path,
        )
        wait_until_up(services["simulator"], lambda: simulator.state() is not None)
        services["api"] = start_service("api", ["api", "--port", str(api_port)], env, tmp_path)
        wait_until_up(services["api"], lambda: api.get("/healthz").status_code == 200)
        postgres.stop()

        # When 100 webhooks come, then Redis is killed outright and restarted from its AOF
        alert_ids = [f"aof-{n}-{uuid.uuid4().hex[:4]}" for n in range(100)]
        answers = [
            api.post("/webhooks/coscale", json={"alert_id": a, "action": "triggered"})
            for a in alert_ids
        ]
        assert [a.status_code for a in answers] == [202] * 100, answers[0].text
        assert {a.json()["queued_in"] for a in answers} == {"queue"}
        aof_redis.kill()
        aof_redis.start()
        postgres.start()

        # Then, a worker and beat started, every one of them reaches PagerDuty
        services["worker"] = start_service(
            "worker", ["worker", "--concurrency", "2"], env, tmp_path
        )
        services["beat"] = start_service("beat", ["beat"], env, tmp_path)
        wait_for(
            lambda: all(
                f"pagerbridge/coscale/{a}/1"
                in {
                    as_default_key(str(i.get("incident_key")))
                    for i in simulator.state()["incidents"]
                }
                for a in alert_ids
            ),
            timeout=120,
            what="the 100 alerts delivered\n"
            + "\n".join(f"--- {n}\n{s.output()[-3000:]}" for n, s in services.items()),
        )
        print("\nPostgreSQL down, Redis killed and restarted: 100 of 100 delivered, 0 lost")
    finally:
        api.close()
        for service in reversed(list(services.values())):
            service.stop()
        simulator.close()


def test_without_a_durable_redis_the_database_outage_is_503_with_the_reason(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    # Given a Redis without an AOF and PostgreSQL down
    plain = PrivateRedis(free_port(), tmp_path / "redis", appendfsync=_fsync_policy())
    plain.workdir.mkdir()
    plain.start()
    env = bridge_env(postgres.url, plain.url, "http://127.0.0.1:9", f"noaof-{uuid.uuid4().hex[:6]}")
    port = free_port()
    service = start_service("api", ["api", "--port", str(port)], env, tmp_path)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10)
    try:
        wait_until_up(service, lambda: api.get("/healthz").status_code == 200)
        # Then /readyz and the start say Redis cannot confirm durability
        durability = api.get("/readyz").json()["checks"]["redis_durability"]
        assert durability["status"] == "degraded"
        assert "without an AOF" in durability["reason"]
        assert "queue durability" in service.output()
        postgres.stop()
        # When a webhook comes, it is refused saying why: it could be lost
        answer = api.post("/webhooks/coscale", json={"alert_id": "n1", "action": "triggered"})
        assert answer.status_code == 503
        assert "cannot keep events safely" in answer.json()["error"]["message"]
    finally:
        api.close()
        service.stop()
        plain.stop()
