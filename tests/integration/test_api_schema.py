"""The running api against its own OpenAPI schema, fuzzed by schemathesis: whatever it is sent,
no answer is a 5xx, and every answer matches the schema (status, content type, body)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import (
    INGRESS_TOKEN,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_until_up,
)

pytestmark = pytest.mark.integration

# Test cases per operation and phase: about 1,500 requests over the api's 8 operations, in well
# under a minute on the 2-CPU machine.
MAX_EXAMPLES = 100
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


def schemathesis_command() -> list[str]:
    """The schemathesis CLI installed beside this interpreter (the test extras)."""
    beside = Path(sys.executable).with_name("st")
    found = str(beside) if beside.exists() else shutil.which("st")
    assert found, "schemathesis is not installed: pip install -e '.[test]'"
    return [found]


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """An api of its own (database, queue): the fuzzing queues events nobody applies."""
    namespace = f"pagerbridge-schema-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url:
        env = bridge_env(database_url, redis_url, "http://127.0.0.1:9", namespace)
        port = free_port()
        service = start_service("api", ["api", "--port", str(port)], env, tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(service, lambda: httpx.get(f"{url}/healthz").status_code == 200)
            yield url
        finally:
            service.stop()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"*{namespace}*"):
                client.delete(key)
            client.close()


def test_no_answer_is_a_server_error_and_every_answer_matches_the_schema(
    api: str, tmp_path: Path
) -> None:
    # When schemathesis sends what the schema allows and what it does not (all its phases)
    done = subprocess.run(
        [
            *schemathesis_command(),
            "run",
            f"{api}/openapi.json",
            "--header",
            f"Authorization: Bearer {INGRESS_TOKEN}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Then it found nothing (a 5xx or an answer off the schema fails the run)
    api_log = "\n".join(p.read_text(errors="replace")[-4000:] for p in tmp_path.glob("*.log"))
    report = done.stdout[-8000:] + done.stderr[-2000:] + "\n--- api log\n" + api_log
    assert done.returncode == 0, report
    assert " passed" in done.stdout and "Operations:" in done.stdout, report
