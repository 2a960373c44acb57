"""`pagerbridge demo` runs its storyline to the end, and says how to get Redis without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def run_demo(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
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


def test_demo_plays_the_storyline(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env["PAGERBRIDGE_REDIS_URL"] = redis_url
    result = run_demo(env, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo done" in result.stdout
    # Every alert of the storyline ends where CoScale left it
    for line in ("cpu-1", "cpu-2", "cpu-3"):
        assert line in result.stdout
    assert "'triggered': 2, 'acknowledged': 1, 'resolved': 42" in result.stdout
    # And it leaves nothing behind in the Redis it used: no gate, no queue, no kombu binding
    namespace = re.search(r"namespace (pagerbridge-demo-\w+)", result.stdout)
    assert namespace is not None
    client = redis.Redis.from_url(redis_url)
    try:
        left = [key for key in client.scan_iter() if namespace.group(1).encode() in key]
    finally:
        client.close()
    assert left == []


def test_demo_without_redis_says_how_to_get_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGERBRIDGE_")}
    env["PAGERBRIDGE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = run_demo(env, tmp_path)
    assert result.returncode == 2
    assert "needs Redis" in result.stdout and "apt-get install redis-server" in result.stdout
