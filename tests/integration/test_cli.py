"""The commands fail fast and clearly, and `status` reports what the database holds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import bridge_env, free_port
from worker.ops.migrate import upgrade

pytestmark = pytest.mark.integration


def pagerbridge(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def env(tmp_path: Path, redis_url: str, namespace: str) -> dict[str, str]:
    return bridge_env(
        f"sqlite:///{tmp_path / 'cli.db'}", redis_url, "http://127.0.0.1:9", namespace
    )


def test_worker_without_pagerduty_token_names_the_variable(
    env: dict[str, str], tmp_path: Path
) -> None:
    del env["PAGERBRIDGE_PAGERDUTY_TOKEN"]
    result = pagerbridge("worker", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "PAGERBRIDGE_PAGERDUTY_TOKEN" in result.stderr


def test_api_without_ingress_tokens_names_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    del env["PAGERBRIDGE_INGRESS_TOKENS"]
    result = pagerbridge("api", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "PAGERBRIDGE_INGRESS_TOKENS" in result.stderr


def test_unreachable_redis_is_said_at_start(env: dict[str, str], tmp_path: Path) -> None:
    env["PAGERBRIDGE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = pagerbridge("worker", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Redis" in result.stderr and "does not answer" in result.stderr


def test_unmigrated_database_is_said_at_start(env: dict[str, str], tmp_path: Path) -> None:
    result = pagerbridge("api", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "pagerbridge migrate" in result.stderr


def test_run_lists_every_missing_setting_before_starting_anything(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given three things wrong at once: two settings unset and a database not migrated
    del env["PAGERBRIDGE_PAGERDUTY_TOKEN"], env["PAGERBRIDGE_INGRESS_TOKENS"]
    result = pagerbridge("run", "--port", str(free_port()), env=env, cwd=tmp_path)
    # Then run starts nothing and names each of them, not whichever child died first
    assert result.returncode == 2
    for problem in (
        "PAGERBRIDGE_PAGERDUTY_TOKEN",
        "PAGERBRIDGE_INGRESS_TOKENS",
        "pagerbridge migrate",
    ):
        assert problem in result.stderr, result.stderr
    assert "nothing started" in result.stderr and "running" not in result.stdout


def test_status_reports_counts(env: dict[str, str], tmp_path: Path) -> None:
    upgrade(env["PAGERBRIDGE_DATABASE_URL"])
    result = pagerbridge("status", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["by_state"] == {"pending": 0, "delivered": 0, "parked": 0, "failed": 0}
    assert report["oldest_pending"] is None
    assert report["pagerduty"]["breaker"] == "closed"
    assert report["pagerduty"]["credentials"] == "ok"
    assert env["PAGERBRIDGE_PAGERDUTY_TOKEN"] not in result.stdout
    table = pagerbridge("status", env=env, cwd=tmp_path)
    assert "delivered" in table.stdout and "nothing pending" in table.stdout
    assert re.search(r"breaker\s+│\s+closed", table.stdout), table.stdout
