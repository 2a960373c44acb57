"""`pagerbridge run --simulate` on the default SQLite database, several worker processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    Service,
    bridge_env,
    free_port,
    wait_for,
    wait_until_up,
)
from worker.simulator.control import SimulatorControl

pytestmark = pytest.mark.integration

ALERTS = 40


def test_run_simulate_on_sqlite_with_three_workers(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    api_port, sim_port = free_port(), free_port()
    database = f"sqlite:///{tmp_path / 'pagerbridge.db'}"
    env = bridge_env(database, redis_url, "unused", f"{namespace}-run")
    env["PAGERBRIDGE_BEAT_SCHEDULE_PATH"] = str(tmp_path / "beat-schedule")
    del env["PAGERBRIDGE_INGRESS_TOKENS"]  # run --simulate makes one, and says how to use it
    assert (
        subprocess.run(
            [sys.executable, "-m", "worker.cli", "migrate"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
        ).returncode
        == 0
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "run",
                "--simulate",
                "--port",
                str(api_port),
                "--simulator-port",
                str(sim_port),
                "--concurrency",
                "3",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    run = Service("run", process, log)
    simulator = SimulatorControl(f"http://127.0.0.1:{sim_port}")
    try:
        wait_until_up(run, lambda: "ready." in run.output())
        exports = dict(re.findall(r"export (PAGERBRIDGE_\w+)=(\S+)", run.output()))
        assert {"PAGERBRIDGE_INGRESS_TOKENS", "PAGERBRIDGE_DATABASE_URL"} <= set(exports)
        headers = {"Authorization": f"Bearer {exports['PAGERBRIDGE_INGRESS_TOKENS']}"}
        # A second terminal, elsewhere, with the exports it printed: test-trigger and status work
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        terminal = {"PATH": env["PATH"], "HOME": str(elsewhere), **exports}
        me = [sys.executable, "-m", "worker.cli"]
        checked = subprocess.run(
            [*me, "test-trigger", "--api-url", f"http://127.0.0.1:{api_port}"],
            env=terminal,
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "test trigger ok" in checked.stdout
        status = subprocess.run(
            [*me, "status"], env=terminal, cwd=elsewhere, capture_output=True, text=True
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert not (elsewhere / "pagerbridge.db").exists()
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers) as api:
            wait_until_up(run, lambda: api.get("/healthz").status_code == 200)
            # When a burst of triggers, then their resolves, arrive
            for action in ("triggered", "resolved"):
                for n in range(ALERTS):
                    answer = api.post(
                        "/webhooks/coscale", json={"alert_id": f"s{n}", "action": action}
                    )
                    assert answer.status_code == 202, answer.text
                time.sleep(0.5)

            # Then every alert has one incident, resolved (or none: resolved before delivery)
            def settled() -> bool:
                counts = simulator.state()["counts"]["incidents_by_status"]
                views = [api.get(f"/alerts/s{n}").json() for n in range(ALERTS)]
                return counts["triggered"] == counts["acknowledged"] == 0 and all(
                    v.get("delivery_state") == "delivered" for v in views
                )

            wait_for(settled, timeout=60, what=f"all alerts delivered\n{run.output()[-3000:]}")
            state = simulator.state()
            keys = [i["incident_key"] for i in state["incidents"]]
            assert len(keys) == len(set(keys)), "an alert was paged twice"
            assert "database is locked" not in run.output()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        simulator.close()
    assert process.returncode is not None
