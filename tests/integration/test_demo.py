"""`pagerbridge demo` runs its storyline to the end on a machine with no Redis running (it
starts its own), and says what to install when there is nothing to start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import (
    TRYOUT_NOTICE,
    WITHOUT_FAKEREDIS,
    free_port,
    nothing_listens,
    path_without_redis_server,
)

pytestmark = pytest.mark.integration


def run_demo(
    env: dict[str, str], cwd: Path, command: tuple[str, ...] = ("-m", "worker.cli")
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            *command,
            "demo",
            "--port",
            str(free_port()),
            "--simulator-port",
            str(free_port()),
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_demo_plays_the_storyline_without_a_redis_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env["PAGERBRIDGE_REDIS_URL"] = nothing_listens()
    result = run_demo(env, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # It started a Redis of its own, and said so once
    assert result.stdout.count(TRYOUT_NOTICE) == 1
    assert "demo done" in result.stdout
    # Every alert of the storyline ends where CoScale left it
    for line in ("cpu-1", "cpu-2", "cpu-3"):
        assert line in result.stdout
    assert "'triggered': 2, 'acknowledged': 1, 'resolved': 42" in result.stdout


def test_demo_leaves_nothing_in_a_redis_it_shares(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env["PAGERBRIDGE_REDIS_URL"] = redis_url
    result = run_demo(env, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert TRYOUT_NOTICE not in result.stdout  # the Redis that answered was used
    # No gate, no queue, no kombu binding of its namespace is left
    namespace = re.search(r"namespace (pagerbridge-demo-\w+)", result.stdout)
    assert namespace is not None
    client = redis.Redis.from_url(redis_url)
    try:
        left = [key for key in client.scan_iter() if namespace.group(1).encode() in key]
    finally:
        client.close()
    assert left == []


def test_demo_with_nothing_to_start_says_what_to_install(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env["PAGERBRIDGE_REDIS_URL"] = nothing_listens()
    env["PATH"] = path_without_redis_server(tmp_path)
    result = run_demo(env, tmp_path, ("-c", WITHOUT_FAKEREDIS))
    said = " ".join(result.stdout.split())
    assert result.returncode == 2, said
    assert "apt-get install redis-server" in said and "pagerbridge[tryout]" in said
