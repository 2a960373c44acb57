"""Durability beyond PagerDuty: Redis going away under the api, and giving up then replaying.

These run their own stack (a private redis-server, simulator, api, worker, beat) because they
stop Redis and use settings the shared bridge does not have.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import service_missing
from tests.integration.conftest import (
    INGRESS_TOKEN,
    PAGERDUTY_TOKEN,
    Service,
    as_default_key,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_for,
    wait_until_up,
)
from worker.simulator.control import SimulatorControl

pytestmark = pytest.mark.integration

GIVE_UP_AFTER = 3  # seconds: an alert fails fast here, to be replayed


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, in its own directory: one the test may stop, kill or
    flush without touching the shared one."""

    port: int
    workdir: Path
    appendonly: bool = False
    appendfsync: str = "everysec"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                self.appendfsync,
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _redis_answers(self.port), timeout=10, what="private redis-server")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no shutdown, no final fsync
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _redis_answers(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class Stack:
    redis: PrivateRedis
    api: httpx.Client
    simulator: SimulatorControl
    env: dict[str, str]
    services: dict[str, Service]

    def alert(self, alert_id: str) -> dict[str, Any]:
        answer = self.api.get(f"/alerts/{alert_id}")
        return dict(answer.json()) if answer.status_code == 200 else {}

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{s.output()[-3000:]}" for n, s in self.services.items())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fresh_database() as database_url:
        yield from _stack(database_url, tmp_path_factory)


def _stack(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("redis-server") is None:
        service_missing(
            "the redis-server binary, to run a private Redis: install the Debian package "
            "redis-server (`apt-get install redis-server`)"
        )
    workdir = tmp_path_factory.mktemp("private-stack")
    private = PrivateRedis(free_port(), workdir)
    private.start()
    sim_port, api_port = free_port(), free_port()
    env = bridge_env(
        postgres_url,
        private.url,
        f"http://127.0.0.1:{sim_port}",
        f"durability-{uuid.uuid4().hex[:6]}",
    )
    env.update(
        {
            "PAGERBRIDGE_GIVE_UP_AFTER": str(GIVE_UP_AFTER),
            "PAGERBRIDGE_BREAKER_THRESHOLD": "1000",  # this stack tests giving up, not the breaker
            "PAGERBRIDGE_BEAT_SCHEDULE_PATH": str(workdir / "beat-schedule"),
        }
    )
    services: dict[str, Service] = {}
    simulator = SimulatorControl(f"http://127.0.0.1:{sim_port}")
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {INGRESS_TOKEN}"},
        timeout=10,
    )
    try:
        services["simulator"] = start_service(
            "simulator",
            ["simulate", "--port", str(sim_port), "--token", PAGERDUTY_TOKEN],
            env,
            workdir,
        )
        wait_until_up(services["simulator"], lambda: simulator.state() is not None)
        services["api"] = start_service("api", ["api", "--port", str(api_port)], env, workdir)
        wait_until_up(services["api"], lambda: api.get("/healthz").status_code == 200)
        services["worker"] = start_service("worker", ["worker", "--concurrency", "1"], env, workdir)
        wait_until_up(services["worker"], lambda: " ready." in services["worker"].output())
        services["beat"] = start_service("beat", ["beat"], env, workdir)
        # Up once it has sent its first sweep: a test that stops Redis at once must not catch
        # beat in its start-up check (it refuses to start without Redis).
        wait_until_up(services["beat"], lambda: "Sending due task" in services["beat"].output())
        yield Stack(private, api, simulator, env, services)
    finally:
        for service in reversed(list(services.values())):
            service.stop()
        api.close()
        simulator.close()
        private.stop()


def test_event_taken_while_redis_is_down_is_delivered_after(stack: Stack) -> None:
    alert_id = f"d{uuid.uuid4().hex[:8]}"
    # Given Redis goes away under a running api
    stack.redis.stop()
    try:
        # When CoScale sends a trigger
        answer = stack.api.post(
            "/webhooks/coscale", json={"alert_id": alert_id, "action": "triggered"}
        )
        # Then it is accepted, kept in the database
        assert answer.status_code == 202, answer.text
        assert answer.json()["queued_in"] == "database"
    finally:
        stack.redis.start()
    # And once Redis is back the sweeper applies it and PagerDuty gets the incident
    wait_for(
        lambda: stack.alert(alert_id).get("delivery_state") == "delivered",
        timeout=60,
        what=f"the stored event delivered\n{stack.logs()}",
    )
    keys = [as_default_key(i["incident_key"]) for i in stack.simulator.state()["incidents"]]
    assert keys.count(f"pagerbridge/coscale/{alert_id}/1") == 1


def test_gives_up_after_the_give_up_age_then_replay_delivers(stack: Stack) -> None:
    alert_id = f"g{uuid.uuid4().hex[:8]}"
    stack.simulator.set_faults(down=True)
    try:
        stack.api.post("/webhooks/coscale", json={"alert_id": alert_id, "action": "triggered"})
        failed = wait_for(
            lambda: (lambda a: a if a.get("delivery_state") == "failed" else None)(
                stack.alert(alert_id)
            ),
            timeout=30,
            what=f"the alert to fail\n{stack.logs()}",
        )
        assert "gave up" in failed["last_error"] and "503" in failed["last_error"]
        assert failed["attempts"] >= 2
    finally:
        stack.simulator.clear_faults()
    # When the operator replays the failed alerts
    replayed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "replay", "--failed"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed coscale:{alert_id}" in replayed.stdout
    # Then the sweeper delivers it
    wait_for(
        lambda: stack.alert(alert_id).get("delivery_state") == "delivered",
        timeout=30,
        what=f"the replayed alert delivered\n{stack.logs()}",
    )
    assert stack.alert(alert_id)["pagerduty_incident_id"]
