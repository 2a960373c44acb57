"""A machine with no Redis and no PostgreSQL running: `run --simulate` starts a Redis of its own
and delivers; `api`, `worker` and `beat` refuse to start, naming the URL.

Nothing here needs a running service: these tests run on a bare machine too.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import service_missing
from tests.integration.conftest import (
    INGRESS_TOKEN,
    TRYOUT_NOTICE,
    WITHOUT_FAKEREDIS,
    Service,
    answers,
    bridge_env,
    free_port,
    nothing_listens,
    path_without_redis_server,
    wait_for,
    wait_until_up,
)
from worker.simulator.control import SimulatorControl

pytestmark = pytest.mark.integration


def bare_env(tmp_path: Path, redis_url: str, namespace: str) -> dict[str, str]:
    """The suite's settings on SQLite, with Redis at ``redis_url``."""
    env = bridge_env(f"sqlite:///{tmp_path / 'bridge.db'}", redis_url, "unused", namespace)
    env["PAGERBRIDGE_BEAT_SCHEDULE_PATH"] = str(tmp_path / "beat-schedule")
    return env


@pytest.mark.parametrize("broker", ["redis-server", "fakeredis"])
def test_run_simulate_without_redis_starts_its_own_and_delivers(
    broker: str, namespace: str, tmp_path: Path
) -> None:
    if broker == "redis-server" and shutil.which("redis-server") is None:
        service_missing(
            "the redis-server binary: install the Debian package redis-server "
            "(`apt-get install redis-server`)"
        )
    configured = nothing_listens()
    env = bare_env(tmp_path, configured, f"{namespace}-tryout")
    if broker == "fakeredis":
        env["PATH"] = path_without_redis_server(tmp_path)
    me = [sys.executable, "-m", "worker.cli"]
    migrated = subprocess.run([*me, "migrate"], env=env, cwd=tmp_path, capture_output=True)
    assert migrated.returncode == 0, migrated.stderr
    api_port, sim_port = free_port(), free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *me,
                "run",
                "--simulate",
                "--port",
                str(api_port),
                "--simulator-port",
                str(sim_port),
                "--concurrency",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    run = Service("run", process, log)
    simulator = SimulatorControl(f"http://127.0.0.1:{sim_port}")
    headers = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as api:
            wait_until_up(run, lambda: api.get("/healthz").status_code == 200)
            wait_until_up(run, lambda: "ready." in run.output())
            # Its Redis listens on the configured port: other commands find it as configured
            assert answers(configured)
            answer = api.post(
                "/webhooks/coscale",
                json={"alert_id": "bare-1", "action": "triggered", "message": "CPU > 90%"},
            )
            assert answer.status_code == 202, answer.text
            wait_for(
                lambda: api.get("/alerts/bare-1").json().get("delivery_state") == "delivered",
                timeout=60,
                what=f"the alert delivered\n{run.output()[-3000:]}",
            )
            incidents = simulator.state()["incidents"]
            assert [i["status"] for i in incidents] == ["triggered"]
            assert str(incidents[0]["incident_key"]).endswith("/bare-1/1")
            # The delivery went through the gate: its Lua scripts ran on the try-out's Redis
            gate_keys = redis.Redis.from_url(configured).keys(
                f"{env['PAGERBRIDGE_NAMESPACE']}:gate:*"
            )
            assert gate_keys, "the gate's scripts wrote nothing"
    finally:
        process.send_signal(signal.SIGTERM)  # stops as Ctrl-C does, its Redis last
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        simulator.close()
    said = run.output()
    # Said once, plainly; and which Redis it started
    assert said.count(TRYOUT_NOTICE) == 1, said[-3000:]
    assert "not durable" in said and "not for production" in said
    assert broker in said
    assert "stopping" in said
    assert "delivery gate unavailable" not in said
    assert not answers(configured), "the try-out's Redis outlived the run"


@pytest.mark.parametrize("command", ["worker", "api", "beat"])
def test_production_commands_never_start_a_redis_and_name_the_url(
    command: str, namespace: str, tmp_path: Path
) -> None:
    configured = nothing_listens()
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", command],
        env=bare_env(tmp_path, configured, namespace),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join(result.stderr.split())  # rich folds long lines
    assert result.returncode != 0
    assert configured in said and "does not answer" in said, said
    assert TRYOUT_NOTICE not in said
    assert not answers(configured)


def test_run_simulate_with_nothing_to_start_says_what_to_install(
    namespace: str, tmp_path: Path
) -> None:
    configured = nothing_listens()
    env = {**bare_env(tmp_path, configured, namespace), "PATH": path_without_redis_server(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_FAKEREDIS, "run", "--simulate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, said
    assert configured in said
    assert "apt-get install redis-server" in said and "pagerbridge[tryout]" in said
    # Nothing was started
    assert "pagerbridge running" not in said and not answers(configured)
