"""Issue #6: hostile and malformed input at the ingress. One test (at least) per rule, each
failing if its rule breaks; then properties over any input (README, "Hostile input")."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, QuarantinedRequest, make_engine, make_session_factory, utcnow
from tests.fakes import ListQueue
from worker.ingress import auth
from worker.ingress.app import create_app
from worker.ingress.middleware import RefusalLog
from worker.ingress.replay_rejected import NotReplayable, replay_rejected
from worker.ingress.schemas import ErrorAnswer
from worker.ops.rejected import QuarantineBounds, Rejection, keep
from worker.pagerduty import PagerDutyClient
from worker.pipeline.intake import apply_event
from worker.pipeline.message import REPAIRED
from worker.pipeline.queue import CeleryEventQueue
from worker.settings import Settings
from worker.title import TITLE_LIMIT

TOKEN = "hostile-ingress-token-7f3a9c-012345"
ROTATED = "hostile-rotated-token-91c2e4-0123456"
PAGERDUTY_TOKEN = "hostile-pagerduty-token-5d8b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 16 * 1024  # bytes: PAGERBRIDGE_MAX_BODY_BYTES in these tests
WEBHOOK = {"alert_id": "1234", "action": "triggered", "message": "CPU > 90%", "app": "shop"}


def bridge_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ingress_tokens": f"{TOKEN},{ROTATED}",
        "pagerduty_token": PAGERDUTY_TOKEN,
        "pagerduty_service_id": "PDEFAULT",
        "max_body_bytes": LIMIT,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def queue() -> ListQueue:
    return ListQueue()


@pytest.fixture
def app(queue: ListQueue, sqlite_sessions: sessionmaker[Session]) -> FastAPI:
    return create_app(
        bridge_settings(), queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def quarantined(sessions: sessionmaker[Session]) -> list[QuarantinedRequest]:
    with sessions() as session:
        return list(session.scalars(select(QuarantinedRequest).order_by(QuarantinedRequest.id)))


def coscale_body(message: str) -> bytes:
    """A webhook as CoScale builds it: the message pasted in without escaping."""
    return (
        '{"alert_id": "77", "action": "triggered", "message": "' + message + '", "app": "shop"}'
    ).encode()


# -- tokens -----------------------------------------------------------------------------------


def _example_path(path: str) -> str:
    return (
        path.replace("{alert_id}", "1234")
        .replace("{incident_id}", "PB1")
        .replace("{route_name}", "web-team")
    )


def test_every_endpoint_but_healthz_needs_a_token(client: TestClient, app: FastAPI) -> None:
    # Given every operation the api serves: those its schema lists, and the schema itself
    operations = [
        (method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item
    ] + [("GET", "/openapi.json")]
    paths = {path for _, path in operations}
    assert {"/webhooks/coscale", "/alerts/{alert_id}", "/openapi.json", "/metrics"} <= paths
    for method, path in operations:
        # When it is called without a token
        answer = client.request(method, _example_path(path), json={})
        # Then only /healthz and /readyz answer (/readyz without its details); every other
        # one is 401 with WWW-Authenticate
        if path == "/healthz":
            assert answer.status_code == 200
            continue
        if path == "/readyz":
            assert answer.status_code in (200, 503)
            assert set(answer.json()) == {"ready"}, "a probe without a token sees no details"
            continue
        assert answer.status_code == 401, (method, path)
        if path.startswith("/webhooks/pagerduty"):
            # PagerDuty's webhooks: its signature, not a token (no token scheme to announce)
            assert answer.json()["error"]["field"] == "X-PagerDuty-Signature"
            continue
        assert answer.headers["WWW-Authenticate"].startswith("Token realm=")
    assert client.get("/docs").status_code == 404  # no schema fetched without a token


def test_refusals_give_no_hint_of_the_valid_tokens(client: TestClient) -> None:
    # Given no token, a wrong one, the valid one cut short, and the valid one with a suffix
    answers = [
        client.post("/webhooks/coscale", json=WEBHOOK, headers=headers)
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Token token={TOKEN}x"},
        )
    ]
    # Then every answer is the same 401, word for word, and names no token
    assert {answer.status_code for answer in answers} == {401}
    assert len({answer.text for answer in answers}) == 1
    assert TOKEN not in answers[0].text and ROTATED not in answers[0].text


def test_every_configured_token_is_valid_at_once(client: TestClient) -> None:
    for token in (TOKEN, ROTATED):
        answer = client.post(
            "/webhooks/coscale", json=WEBHOOK, headers={"Authorization": f"Token token={token}"}
        )
        assert answer.status_code == 202


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a comparison that records what it compares
    compared: list[bytes] = []

    def compare_digest(given: bytes, valid: bytes) -> bool:
        compared.append(valid)
        return given == valid

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    valid = ("first-token", "second-token", "third-token")

    # When the first token, the last one, or none matches
    for presented in ("first-token", "third-token", "wrong"):
        compared.clear()
        auth.token_is_valid(presented, valid)
        # Then every token is compared each time, with hmac.compare_digest: no early exit
        assert compared == [token.encode() for token in valid]


# -- limits -----------------------------------------------------------------------------------


def _asgi_call(
    app: FastAPI, headers: list[tuple[bytes, bytes]], receive: Callable[[], Any]
) -> list[dict[str, Any]]:
    """One POST /webhooks/coscale through the ASGI interface, with ``receive`` as given."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/coscale",
        "raw_path": b"/webhooks/coscale",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), *headers],
        "client": ("203.0.113.9", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_declared_body_over_the_limit_is_413_without_reading_a_byte(
    app: FastAPI, sqlite_sessions: sessionmaker[Session]
) -> None:
    # Given a request announcing a gigabyte, whose body must never be asked for
    async def receive() -> dict[str, Any]:
        raise AssertionError("the body of an oversized request was read")

    # When it arrives
    sent = _asgi_call(
        app,
        [(b"content-type", b"application/json"), (b"content-length", b"1000000000")],
        receive,
    )

    # Then the answer is 413 in the error shape, closing the connection
    start, body = sent
    assert start["status"] == 413
    assert (b"connection", b"close") in start["headers"]
    error = ErrorAnswer.model_validate_json(body["body"]).error
    assert f"limit of {LIMIT} bytes" in error.message and error.field == "body"
    # And the quarantine keeps the request's size and why, with no body
    (row,) = quarantined(sqlite_sessions)
    assert (row.status, row.size, row.body, row.complete) == (413, 1_000_000_000, b"", False)


def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit(
    app: FastAPI, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    # Given a chunked body that never ends, 1,000 bytes at a time
    chunks_read = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    # When it arrives
    sent = _asgi_call(app, [(b"content-type", b"application/json")], receive)

    # Then it is 413 once the bytes pass the limit: no more was read, nothing parsed or queued
    assert sent[0]["status"] == 413
    assert chunks_read == LIMIT // 1000 + 1
    assert queue.events == []
    (row,) = quarantined(sqlite_sessions)
    assert (row.status, len(row.body)) == (413, LIMIT)  # kept up to the limit


def test_a_body_at_the_limit_is_read(client: TestClient) -> None:
    body = json.dumps(WEBHOOK).encode()
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(body) == LIMIT
    answer = client.post(
        "/webhooks/coscale", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 202


@pytest.mark.parametrize(
    "alert_id",
    ["", "a\x00b", "\x1b[31mred", "tab\there", "new\nline", "del\x7f", "c1\x85control", "x" * 201],
)
def test_alert_id_length_and_characters_are_422_naming_it(
    client: TestClient, queue: ListQueue, alert_id: str
) -> None:
    answer = client.post("/webhooks/coscale", json={**WEBHOOK, "alert_id": alert_id}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "alert_id"
    assert queue.events == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message", "x" * 8193),
        ("message", "NUL \x00 in text"),
        ("title", "t" * 8193),
        ("action", "triggered" * 5),
        ("service_id", "P 1"),
        ("service_id", "P" * 65),
        ("host", "\ud800"),  # a lone surrogate: UTF-8 cannot hold it
    ],
)
def test_field_lengths_and_characters_are_bounded(
    client: TestClient, queue: ListQueue, field: str, value: str
) -> None:
    body = json.dumps({**WEBHOOK, field: value})  # ensure_ascii: the surrogate as \ud800
    answer = client.post(
        "/webhooks/coscale", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field
    assert queue.events == []


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("message", "x" * 8193, "message: String should have at most 8192 characters"),
        ("alert_id", "", "alert_id: String should have at least 1 character"),
        ("alert_id", 7 * 10**200, "alert_id: String should have at most 200 characters"),
    ],
    ids=["long-message", "empty-alert-id", "201-digit-alert-id"],
)
def test_a_length_refusal_names_the_limit_in_characters(
    client: TestClient, field: str, value: object, says: str
) -> None:
    """Also for a number where text is expected (made text first, then measured)."""
    answer = client.post("/webhooks/coscale", json={**WEBHOOK, field: value}, headers=AUTH)
    assert answer.status_code == 422
    assert says in answer.json()["error"]["message"]


def test_the_title_is_cut_to_pagerdutys_limit(client: TestClient, queue: ListQueue) -> None:
    # Given a long message (the template's title), a long title field, a long API-contact title
    client.post("/webhooks/coscale", json={**WEBHOOK, "message": "m" * 8000}, headers=AUTH)
    client.post("/webhooks/coscale", json={**WEBHOOK, "title": "t" * 8000}, headers=AUTH)
    client.post(
        "/incidents",
        json={"incident": {"type": "incident", "title": "i" * 8000, "service": {"id": "P1"}}},
        headers=AUTH,
    )
    # Then each incident title is at most PagerDuty's 1,024 characters
    assert len(queue.events) == 3
    assert all(event.title and len(event.title) == TITLE_LIMIT for event in queue.events)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "xml"],
)
def test_a_content_type_other_than_json_is_415(
    client: TestClient, queue: ListQueue, content_type: str
) -> None:
    answer = client.post(
        "/webhooks/coscale",
        content=json.dumps(WEBHOOK),
        headers={**AUTH, "Content-Type": content_type},
    )
    assert answer.status_code == 415
    assert answer.json()["error"]["field"] == "Content-Type"
    assert queue.events == []


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8"])
def test_json_or_no_content_type_is_taken(
    client: TestClient, queue: ListQueue, content_type: str | None
) -> None:
    headers = {**AUTH} | ({"Content-Type": content_type} if content_type else {})
    answer = client.post("/webhooks/coscale", content=json.dumps(WEBHOOK), headers=headers)
    assert answer.status_code == 202


def test_pagerdutys_own_json_type_is_taken_by_the_api_contact(client: TestClient) -> None:
    answer = client.post(
        "/incidents",
        content=json.dumps({"incident": {"title": "t", "service": {"id": "P1"}}}),
        headers={**AUTH, "Content-Type": "application/vnd.pagerduty+json;version=2"},
    )
    assert answer.status_code == 201


# -- CoScale's unescaped JSON -------------------------------------------------------------------


def test_an_unescaped_body_is_repaired_queued_and_says_so(
    client: TestClient, queue: ListQueue
) -> None:
    # Given CoScale's body with a message holding a quote, a backslash and a newline
    message = 'disk "C:\\data" is\nfull'
    answer = client.post(
        "/webhooks/coscale",
        content=coscale_body(message),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    # Then it is accepted as CoScale meant it, the answer and the event saying it was repaired
    assert answer.status_code == 202
    assert answer.json()["repaired"] is True
    (event,) = queue.events
    assert event.fields["message"] == message
    assert event.fields[REPAIRED] == "true"
    assert event.title is not None and message in event.title


def test_a_valid_body_is_not_marked_repaired(client: TestClient, queue: ListQueue) -> None:
    answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.json()["repaired"] is False
    assert REPAIRED not in queue.events[0].fields


def test_the_repair_shows_in_the_alerts_timeline(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    queue.on_publish = lambda event: apply_event(sqlite_sessions, event, event.received_at)
    client.post(
        "/webhooks/coscale",
        content=coscale_body('a "quoted" word'),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    (entry,) = client.get("/alerts/77", headers=AUTH).json()["timeline"]
    assert "repaired" in entry["detail"]


def test_the_api_contacts_title_is_repaired_too(client: TestClient, queue: ListQueue) -> None:
    body = (
        b'{"incident": {"type": "incident", "title": "Alert for "cpu"", "service": {"id": "P1"}}}'
    )
    answer = client.post(
        "/incidents", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 201
    assert queue.events[0].title == 'Alert for "cpu"'
    assert queue.events[0].fields == {REPAIRED: "true"}


@pytest.mark.parametrize(
    "body",
    [b'{"alert_id": "1", "action": "triggered"', b"alert_id=1&action=triggered", b"\xff\xfe{"],
)
def test_anything_else_is_400_saying_what_and_where(
    client: TestClient, queue: ListQueue, body: bytes
) -> None:
    answer = client.post(
        "/webhooks/coscale", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == "body"
    assert "line 1, column" in error["message"] or "not UTF-8" in error["message"]
    assert queue.events == []


# -- nothing lost: the quarantine -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "status", "field"),
    [
        ({**AUTH, "Content-Type": "text/plain"}, json.dumps(WEBHOOK).encode(), 415, "Content-Type"),
        ({**AUTH}, b'{"alert_id": "1", "action": tri', 400, "body"),
        ({**AUTH}, json.dumps({"alert_id": "1", "action": "boom"}).encode(), 422, "action"),
        ({**AUTH}, b'{"alert_id": "' + b"x" * LIMIT + b'"}', 413, "body"),
    ],
)
def test_every_rejected_body_is_kept_with_why_and_when(
    client: TestClient,
    sqlite_sessions: sessionmaker[Session],
    headers: dict[str, str],
    body: bytes,
    status: int,
    field: str | None,
) -> None:
    # Given a request the ingress rejects
    before = utcnow()
    headers = {"Content-Type": "application/json"} | headers
    answer = client.post("/webhooks/coscale", content=body, headers=headers)
    assert answer.status_code == status

    # Then it is in the quarantine: what came, what was answered, why, when
    (row,) = quarantined(sqlite_sessions)
    assert (row.method, row.path, row.status, row.field) == (
        "POST",
        "/webhooks/coscale",
        status,
        field,
    )
    assert row.reason == answer.json()["error"]["message"]
    assert row.received_at >= before - timedelta(seconds=1)
    assert row.content_type == headers["Content-Type"]
    # (all of it; a body announced over the limit is not read at all, only its size kept)
    assert (row.body, row.size) == (b"" if status == 413 else body, len(body))
    # And never the token it carried
    stored = json.dumps({c.key: str(getattr(row, c.key)) for c in inspect(row).mapper.columns})
    assert TOKEN not in stored and TOKEN.encode() not in row.body


def test_a_request_without_a_valid_token_is_counted_and_logged_but_not_kept(
    client: TestClient, sqlite_sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a flood of webhooks with a wrong token, up to the failed-authentication limit and
    # past it (429)
    before = _sample("pagerbridge_requests_unauthenticated_total")
    with caplog.at_level(logging.WARNING):
        statuses = {
            client.post(
                "/webhooks/coscale",
                json=WEBHOOK,
                headers={"Authorization": f"Bearer wrong-{n}"},
            ).status_code
            for n in range(30)
        }
    assert statuses == {401, 429}
    # Then none of them is in the quarantine, every one is counted, and the log has one line
    assert quarantined(sqlite_sessions) == []
    assert _sample("pagerbridge_requests_unauthenticated_total") == before + 30
    lines = [r.getMessage() for r in caplog.records if "no valid ingress token" in r.getMessage()]
    assert len(lines) == 1 and "not kept" in lines[0]


def test_the_refusal_log_says_how_many_it_held_back() -> None:
    now = [0.0]
    refusals = RefusalLog(interval=60.0, clock=lambda: now[0])
    logged = [refusals.refused("POST", "/webhooks/coscale", 401) for _ in range(5)]
    now[0] = 61.0
    logged.append(refusals.refused("POST", "/webhooks/coscale", 401))
    assert logged == [True, False, False, False, False, True]


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_only_event_carrying_requests_are_kept(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    client.get("/alerts/1", headers={"Authorization": "Bearer wrong"})  # a 401 GET
    client.post("/nowhere", json={}, headers=AUTH)  # a 404
    client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)  # accepted
    assert quarantined(sqlite_sessions) == []


def test_the_quarantine_is_bounded_by_count_and_age(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given rows of which two are past the age bound
    now = utcnow()
    bounds = QuarantineBounds(max_rows=3, max_age_days=1)

    def rejection(name: str, age: timedelta) -> Rejection:
        return Rejection("POST", "/webhooks/coscale", 400, name, b"{", 1, received_at=now - age)

    with sqlite_sessions.begin() as session:
        keep(
            session,
            [rejection("old-1", timedelta(days=3)), rejection("old-2", timedelta(days=2))],
            bounds,
            now,
        )
    # When five more are kept
    with sqlite_sessions.begin() as session:
        keep(session, [rejection(f"new-{n}", timedelta(0)) for n in range(5)], bounds, now)
    # Then only the newest three are left: the old ones by age, two new ones by count
    assert [row.reason for row in quarantined(sqlite_sessions)] == ["new-2", "new-3", "new-4"]


def test_a_rejection_is_answered_even_when_the_database_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an api whose database is gone (a file in a directory that does not exist)
    broken = make_session_factory(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    app = create_app(bridge_settings(), queue=ListQueue(), sessions=broken, redis_ping=lambda: None)
    secret_in_body = b'{"alert_id": "1", "message": "customer-password-in-body"'

    # When a request is rejected
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        answer = client.post(
            "/webhooks/coscale",
            content=secret_in_body,
            headers={**AUTH, "Content-Type": "application/json"},
        )

    # Then it is still answered 400, and the log says it was not kept, without the body
    assert answer.status_code == 400
    (line,) = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    assert "answered 400" in line and "OperationalError" in line
    assert "customer-password-in-body" not in caplog.text


# -- replay -------------------------------------------------------------------------------------


def _reject(
    client: TestClient, sessions: sessionmaker[Session], body: bytes, headers: dict[str, str]
) -> int:
    """Post a request the ingress refuses; the id of its quarantine row."""
    assert client.post("/webhooks/coscale", content=body, headers=headers).status_code >= 400
    return quarantined(sessions)[-1].id


def test_a_request_refused_for_its_content_type_is_replayed_once_fixed(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    # Given an unescaped CoScale body refused for the Content-Type the contact was set up with
    body = coscale_body('disk "full"')
    row_id = _reject(
        client,
        sqlite_sessions,
        body,
        {**AUTH, "Content-Type": "text/plain"},
    )

    # When the operator replays it
    queue = ListQueue()
    answer = replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=queue)

    # Then it went through the same reading and repair and is queued
    assert answer.accepted and answer.status == 202
    (event,) = queue.events
    assert (event.alert_id, event.fields["message"], event.fields[REPAIRED]) == (
        "77",
        'disk "full"',
        "true",
    )
    (row,) = quarantined(sqlite_sessions)
    assert row.replay_status == 202 and "queued event" in (row.replay_outcome or "")
    # And it is not replayed twice by mistake, only with force
    with pytest.raises(NotReplayable, match="already replayed"):
        replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=queue)
    replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=queue, force=True)
    assert len(queue.events) == 2


def test_a_replay_that_is_refused_again_is_recorded_and_adds_no_row(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    row_id = _reject(
        client,
        sqlite_sessions,
        b'{"alert_id": "1", "action": tri',
        {**AUTH, "Content-Type": "application/json"},
    )
    answer = replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=ListQueue())
    assert (answer.accepted, answer.status) == (False, 400)
    (row,) = quarantined(sqlite_sessions)
    assert row.replay_status == 400 and "invalid JSON" in (row.replay_outcome or "")


def test_a_replay_is_sent_as_json_whatever_content_type_was_refused(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    row_id = _reject(
        client,
        sqlite_sessions,
        json.dumps(WEBHOOK).encode(),
        {**AUTH, "Content-Type": "text/plain"},
    )
    assert replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=ListQueue()).accepted


def test_a_cut_or_unknown_body_is_not_replayed(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    row_id = _reject(
        client, sqlite_sessions, b"x" * (LIMIT + 1), {**AUTH, "Content-Type": "application/json"}
    )
    with pytest.raises(NotReplayable, match="over the size limit"):
        replay_rejected(bridge_settings(), sqlite_sessions, row_id, queue=ListQueue())
    with pytest.raises(NotReplayable, match="no rejected request #999"):
        replay_rejected(bridge_settings(), sqlite_sessions, 999, queue=ListQueue())


# -- no injection -------------------------------------------------------------------------------


def test_values_are_never_format_strings_or_templates(
    client: TestClient, queue: ListQueue, caplog: pytest.LogCaptureFixture
) -> None:
    tricky = "{0.__class__} %s %(x)s %n {MSG} {{ ${jndi:x} {{7*7}}"
    with caplog.at_level(logging.INFO):
        answer = client.post(
            "/webhooks/coscale",
            json={**WEBHOOK, "alert_id": "%s%n{0}", "message": tricky, "app": "{MSG}"},
            headers=AUTH,
        )
    assert answer.status_code == 202
    (event,) = queue.events
    assert event.title is not None and tricky in event.title and "{MSG}." in event.title
    assert any('alert=coscale:"%s%n{0}"' in r.getMessage() for r in caplog.records)


def test_values_are_never_sql(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    # Given an alert id and message written as SQL
    alert_id = "1'; DROP TABLE alerts; --"
    queue.on_publish = lambda event: apply_event(sqlite_sessions, event, event.received_at)
    answer = client.post(
        "/webhooks/coscale",
        json={**WEBHOOK, "alert_id": alert_id, "message": "x' OR '1'='1"},
        headers=AUTH,
    )
    assert answer.status_code == 202
    # Then they are stored as they are, and the table is still there
    with sqlite_sessions() as session:
        (alert,) = session.scalars(select(Alert)).all()
    assert alert.source_alert_id == alert_id
    assert alert.details is not None and "x' OR '1'='1" in alert.details


def test_html_reaches_pagerduty_as_text(client: TestClient, queue: ListQueue) -> None:
    # Given a message with markup, taken by the ingress
    markup = '<script>alert("x")</script><b>bold</b>&amp;'
    client.post("/webhooks/coscale", json={**WEBHOOK, "message": markup}, headers=AUTH)
    (event,) = queue.events
    # When the worker's PagerDuty client creates the incident
    sent: list[bytes] = []

    def pagerduty(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(
            201, json={"incident": {"id": "P1", "status": "triggered", "incident_number": 1}}
        )

    PagerDutyClient(
        "https://pagerduty.test",
        PAGERDUTY_TOKEN,
        "bridge@example.com",
        transport=httpx.MockTransport(pagerduty),
    ).create_incident(
        title=event.title or "", service_id="P1", incident_key="k", details=event.details
    )
    # Then the markup is in the JSON strings as it was written: not escaped, not stripped
    incident = json.loads(sent[0])["incident"]
    assert markup in incident["title"] and markup in incident["body"]["details"]


# -- secrets ------------------------------------------------------------------------------------

SECRETS = (TOKEN, ROTATED, PAGERDUTY_TOKEN)


def test_no_secret_in_answers_alerts_or_queue_messages(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    # Given events accepted and applied, and a few refused
    queue.on_publish = lambda event: apply_event(sqlite_sessions, event, event.received_at)
    answers = [
        client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH),
        client.post(
            "/webhooks/coscale", json=WEBHOOK, headers={"Authorization": f"Token token={TOKEN}!"}
        ),
        client.post("/webhooks/coscale", content=b"{", headers=AUTH),
        client.get("/alerts/1234", headers=AUTH),
        client.get("/readyz", headers=AUTH),
        client.get("/metrics", headers=AUTH),
        client.get("/openapi.json", headers=AUTH),
    ]
    # Then no answer holds a token
    for answer in answers:
        for secret in SECRETS:
            assert secret not in answer.text
    # And neither do the Celery messages the events become
    published: list[Any] = []

    class Celery:
        def send_task(self, name: str, **options: Any) -> None:
            published.append(options)

    CeleryEventQueue(Celery()).publish_many(queue.events)
    message = json.dumps(published)
    assert "1234" in message
    for secret in SECRETS:
        assert secret not in message


def test_an_unexpected_error_is_a_json_500_that_tells_nothing(
    sqlite_sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ListQueue):
        def publish_many(self, events: Any, **_: Any) -> Any:
            raise RuntimeError("internal detail the caller must not see")

    app = create_app(
        bridge_settings(), queue=Broken(), sessions=sqlite_sessions, redis_ping=lambda: None
    )
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/webhooks/coscale", json=WEBHOOK, headers=AUTH)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert "internal detail" not in answer.text
    assert "internal detail" in caplog.text  # the log has it


# -- the error shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/webhooks/coscale", b"{}", {}, 401),
        ("POST", "/webhooks/coscale", b"{", AUTH, 400),
        ("POST", "/webhooks/coscale", b"x" * (LIMIT + 1), AUTH, 413),
        ("POST", "/webhooks/coscale", b"{}", {**AUTH, "Content-Type": "text/plain"}, 415),
        ("POST", "/webhooks/coscale", b"{}", AUTH, 422),
        ("GET", "/nowhere", b"", AUTH, 404),
        ("DELETE", "/webhooks/coscale", b"", AUTH, 405),
        (
            "PUT",
            "/incidents/not%20an%20id",
            b"{}",
            AUTH,
            400,
        ),  # PagerDuty-shaped: invalid input is 400
    ],
)
def test_every_refusal_is_json_in_the_one_shape(
    client: TestClient,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    answer = client.request(method, path, content=body, headers=headers)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    error = ErrorAnswer.model_validate(answer.json()).error
    assert error.message and error.errors
    if status in (400, 413, 415, 422):
        assert error.field  # names what was wrong


# -- properties ---------------------------------------------------------------------------------

FIELDS = ("alert_id", "action", "message", "metric", "subject", "app", "link", "title", "urgency")
ANY_VALUE = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["triggered", "RESOLVE", "acknowledged", "high", "low", ""]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=2),
)


@pytest.fixture
def property_client(
    sqlite_sessions: sessionmaker[Session],
) -> Iterator[tuple[TestClient, ListQueue]]:
    queue = ListQueue()
    app = create_app(
        bridge_settings(), queue=queue, sessions=sqlite_sessions, redis_ping=lambda: None
    )
    with TestClient(app) as test_client:
        yield test_client, queue


def _answered_properly(answer: httpx.Response, queue: ListQueue, queued_before: int) -> None:
    """202 or a 4xx, never a 5xx; a 202 means exactly one more event, the one it names."""
    assert answer.status_code == 202 or 400 <= answer.status_code < 500, answer.text
    if answer.status_code == 202:
        assert len(queue.events) == queued_before + 1
        assert queue.events[-1].event_id == answer.json()["event_id"]
    else:
        assert len(queue.events) == queued_before
        ErrorAnswer.model_validate(answer.json())


def test_property_any_value_in_any_field(
    property_client: tuple[TestClient, ListQueue],
) -> None:
    client, queue = property_client

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE))
    def check(body: dict[str, Any]) -> None:
        before = len(queue.events)
        _answered_properly(client.post("/webhooks/coscale", json=body, headers=AUTH), queue, before)

    check()


def test_property_any_text_pasted_into_coscales_format(
    property_client: tuple[TestClient, ListQueue],
) -> None:
    client, queue = property_client
    tricky = st.text(alphabet=st.sampled_from([*list('ab "\\\n\t{}[]:,<>%'), "é", "\x00"]))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message=tricky | st.text(), metric=tricky)
    def check(message: str, metric: str) -> None:
        body = (
            '{"alert_id": "9", "action": "triggered", "message": "' + message + '", '
            '"metric": "' + metric + '"}'
        ).encode("utf-8", errors="surrogatepass")
        before = len(queue.events)
        answer = client.post(
            "/webhooks/coscale", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        _answered_properly(answer, queue, before)

    check()


def test_property_any_bytes_as_a_body(property_client: tuple[TestClient, ListQueue]) -> None:
    client, queue = property_client

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=st.binary(max_size=LIMIT + 100))
    def check(body: bytes) -> None:
        before = len(queue.events)
        answer = client.post(
            "/webhooks/coscale", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        _answered_properly(answer, queue, before)

    check()
