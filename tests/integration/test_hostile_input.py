"""Issue #6 against real processes: the api's refusal to start without a token, the body limit
on a real socket, and a rejected CoScale body kept, listed, shown and replayed into the queue.

Each test has its own database and namespace (no shared bridge): nothing here reaches a worker
or PagerDuty (the HTML-as-text rule is checked at the PagerDuty client, in the unit tests)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from models import InboxEvent, make_engine, make_session_factory
from tests.integration.conftest import (
    INGRESS_TOKEN,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_until_up,
)
from tests.integration.test_cli import pagerbridge
from worker.pipeline.message import REPAIRED

pytestmark = pytest.mark.integration


@pytest.fixture
def env(redis_url: str) -> Iterator[dict[str, str]]:
    """A migrated database and a queue of its own; no worker runs, no PagerDuty is called."""
    namespace = f"pagerbridge-hostile-{uuid.uuid4().hex[:8]}"
    with fresh_database() as database_url:
        yield bridge_env(database_url, redis_url, "http://127.0.0.1:9", namespace)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{namespace}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    service = start_service("api", ["api", "--port", str(port)], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(service, lambda: httpx.get(f"{url}/healthz").status_code == 200)
        yield url
    finally:
        service.stop()


def test_the_api_does_not_start_without_a_token(env: dict[str, str], tmp_path: Path) -> None:
    # Given no ingress token
    del env["PAGERBRIDGE_INGRESS_TOKENS"]
    # When the api starts
    done = pagerbridge("api", "--port", str(free_port()), env=env, cwd=tmp_path)
    # Then it stops at once, naming the setting and the explicit way round it
    assert done.returncode == 2
    assert "PAGERBRIDGE_INGRESS_TOKENS" in done.stderr
    assert "--insecure-no-auth" in done.stderr


def test_insecure_no_auth_is_refused_while_tokens_are_set(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = pagerbridge("api", "--insecure-no-auth", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "--insecure-no-auth" in done.stderr


def test_insecure_no_auth_serves_without_a_token_and_says_so_loudly(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given the api started without tokens, explicitly insecure
    del env["PAGERBRIDGE_INGRESS_TOKENS"]
    port = free_port()
    api = start_service("api", ["api", "--port", str(port), "--insecure-no-auth"], env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(api, lambda: httpx.get(f"{url}/healthz").status_code == 200)
        # When CoScale posts without a token
        answer = httpx.post(
            f"{url}/webhooks/coscale", json={"alert_id": "insecure-1", "action": "triggered"}
        )
        # Then it is taken, and the api's output says, at start, that it is open to anyone
        assert answer.status_code == 202
        assert "INSECURE" in api.output() and "--insecure-no-auth" in api.output()
    finally:
        api.stop()


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(api: str) -> None:
    # Given a request announcing 50 MB, of which the client sends nothing but the headers
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            (
                "POST /webhooks/coscale HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {INGRESS_TOKEN}\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 50000000\r\n\r\n"
            ).encode()
        )
        # Then the api answers 413 without waiting for the body, and closes the connection
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"over the limit of 262144 bytes" in body


def test_a_rejected_coscale_body_is_kept_listed_shown_and_replayed(
    api: str, env: dict[str, str], tmp_path: Path
) -> None:
    # Given a wrong-token request, which is refused and not kept
    message = '<b>disk</b> "full" on C:\\data'
    body = (
        '{"alert_id": "hostile-1", "action": "triggered", "message": "' + message + '", '
        '"app": "shop"}'
    )
    wrong_token = httpx.post(
        f"{api}/webhooks/coscale",
        content=body.encode(),
        headers={"Authorization": "Bearer rotated-away", "Content-Type": "application/json"},
    )
    assert wrong_token.status_code == 401
    # And CoScale's body with unescaped quotes, a backslash and markup, sent with a valid token
    # but a Content-Type the contact was misconfigured with
    refused = httpx.post(
        f"{api}/webhooks/coscale",
        content=body.encode(),
        headers={"Authorization": f"Bearer {INGRESS_TOKEN}", "Content-Type": "text/plain"},
    )
    assert refused.status_code == 415

    # When the operator lists the rejected requests and looks at the one refused
    listed = pagerbridge("rejected", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["status"], row["method"], row["path"]) == (415, "POST", "/webhooks/coscale")
    assert row["reason"].startswith("Content-Type 'text/plain' is not JSON")
    shown = pagerbridge("rejected", "--show", str(row["id"]), "--json", env=env, cwd=tmp_path)
    assert json.loads(shown.stdout)["body"] == body
    table = pagerbridge("rejected", env={**env, "COLUMNS": "250"}, cwd=tmp_path)
    assert "POST /webhooks/coscale" in table.stdout and "415" in table.stdout

    # And replays it (as JSON)
    replayed = pagerbridge("rejected", "--replay", str(row["id"]), env=env, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed #{row['id']}: 202" in replayed.stdout
    assert "body repaired" in replayed.stdout

    # Then the event is queued (database inbox and Redis) as CoScale meant it, marked repaired
    engine = make_engine(env["PAGERBRIDGE_DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            (queued,) = session.scalars(select(InboxEvent.message)).all()
    finally:
        engine.dispose()
    assert queued["alert_id"] == "hostile-1"
    assert queued["fields"]["message"] == message
    assert queued["fields"][REPAIRED] == "true"
    # And the row says so; a second replay is refused rather than queued twice
    again = pagerbridge("rejected", "--replay", str(row["id"]), env=env, cwd=tmp_path)
    assert again.returncode == 1 and "already replayed" in again.stderr
    listed_again = json.loads(pagerbridge("rejected", "--json", env=env, cwd=tmp_path).stdout)
    assert [r["replay_status"] for r in listed_again] == [202]


def test_rejected_show_escapes_what_a_terminal_would_obey(
    api: str, env: dict[str, str], tmp_path: Path
) -> None:
    # Given a refused body holding a terminal escape sequence (red text, clear screen)
    body = '{"alert_id": "esc-1", "action": "\x1b[31mexploded\x1b[2J"}'
    refused = httpx.post(
        f"{api}/webhooks/coscale",
        content=body.encode(),
        headers={"Authorization": f"Bearer {INGRESS_TOKEN}", "Content-Type": "application/json"},
    )
    assert refused.status_code in (400, 422)
    rows = json.loads(pagerbridge("rejected", "--json", env=env, cwd=tmp_path).stdout)
    (row,) = [r for r in rows if r["status"] == refused.status_code]
    # When the operator shows it
    shown = pagerbridge("rejected", "--show", str(row["id"]), env=env, cwd=tmp_path)
    raw = subprocess.run(
        [sys.executable, "-m", "worker.cli", "rejected", "--show", str(row["id"]), "--raw"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    # Then the escape character is written as text, and --raw gives the bytes as they came
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\\x1b[31mexploded" in shown.stdout
    assert raw.returncode == 0 and raw.stdout == body.encode()


def test_healthz_answers_while_bodies_built_to_stall_the_repair_are_read(api: str) -> None:
    # Given bodies at the size limit built to make the JSON repair branch and rescan
    size = 256 * 1024 - 64  # just under PAGERBRIDGE_MAX_BODY_BYTES
    half = size // 2
    hostile = [
        ('{"' + "a" * half + "\x01" + '"' * (size - half - 3)).encode(),
        ('{"m": "' + "a" * half + "\x01" + '"' * (size - half - 8) + "}").encode(),
        ("[" + '"\x01",' * ((size - 2) // 5) + "]").encode(),
    ] * 2
    headers = {"Authorization": f"Bearer {INGRESS_TOKEN}", "Content-Type": "application/json"}
    answers: list[int] = []

    def post(body: bytes) -> None:
        answers.append(
            httpx.post(
                f"{api}/webhooks/coscale", content=body, headers=headers, timeout=60
            ).status_code
        )

    # When they are sent at once, and /healthz is asked meanwhile
    threads = [threading.Thread(target=post, args=(body,)) for body in hostile]
    for thread in threads:
        thread.start()
    health: list[int] = []
    answered_while_pending = 0
    while any(thread.is_alive() for thread in threads):
        health.append(httpx.get(f"{api}/healthz", timeout=10).status_code)
        answered_while_pending += any(thread.is_alive() for thread in threads)
    for thread in threads:
        thread.join()
    # Then every hostile body is refused (400, or 422 for one read but missing its fields), and
    # /healthz answered throughout
    assert len(answers) == len(hostile) and set(answers) <= {400, 422}
    assert health and set(health) == {200}
    assert answered_while_pending >= 1
