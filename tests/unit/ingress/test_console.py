"""The operator console (/ui): sign-in, the session cookie, CSRF, and what each page shows."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import fakeredis
import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, QuarantinedRequest
from tests.fakes import ListQueue
from worker.delivery.gate import DeliveryGate
from worker.ingress.app import carries_events, create_app
from worker.ingress.console import console_state
from worker.pipeline.intake import apply_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

OPERATOR_TOKEN = "console-operator-token-0123456789abcdef"
INGRESS_TOKEN = "ingress-secret-1-0123456789abcdef01"  # tests/unit/test_ingress.py's
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"


def settings(**changes: object) -> Settings:
    values: dict[str, object] = {
        "ingress_tokens": INGRESS_TOKEN,
        "operator_tokens": OPERATOR_TOKEN,
        "pagerduty_service_id": "PDEFAULT",
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def queue() -> ListQueue:
    return ListQueue()


def console_app(
    sessions: sessionmaker[Session], queue: ListQueue, configured: Settings
) -> TestClient:
    redis = fakeredis.FakeRedis()
    gate = DeliveryGate(redis, "unit-test-pagerduty-token")
    app = create_app(
        configured,
        queue=queue,
        sessions=sessions,
        redis_ping=lambda: None,
        gate=gate,
        queue_depth=lambda: 7,
    )
    return TestClient(app, follow_redirects=False)


@pytest.fixture
def client(sqlite_sessions: sessionmaker[Session], queue: ListQueue) -> Iterator[TestClient]:
    with console_app(sqlite_sessions, queue, settings()) as test_client:
        yield test_client


def form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client: TestClient, token: str = OPERATOR_TOKEN) -> str:
    """Signs in; returns the session's CSRF token (from the overview's sign-out form)."""
    form = client.get("/ui/sign-in")
    answer = client.post("/ui/sign-in", data={"token": token, "csrf_token": form_token(form.text)})
    assert answer.status_code == 303, answer.text
    return form_token(client.get("/ui").text)


def add_alert(
    sessions: sessionmaker[Session],
    alert_id: str,
    *,
    state: DeliveryState = DeliveryState.PENDING,
    fields: dict[str, str] | None = None,
    title: str = "CPU high",
    route: str | None = None,
    incident_url: str | None = None,
) -> None:
    routed = {"route": route} if route else {}
    apply_event(
        sessions,
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE if route is None else f"{SOURCE_COSCALE}:{route}",
            alert_id=alert_id,
            action=AlertStatus.TRIGGERED,
            received_at=NOW,
            title=title,
            service_id="PDEFAULT",
            fields=fields or {},
            **routed,  # type: ignore[arg-type]
        ),
        NOW,
    )
    with sessions.begin() as session:
        alert = session.scalars(select(Alert).where(Alert.source_alert_id == alert_id)).one()
        alert.delivery_state = state
        if state is DeliveryState.FAILED:
            alert.last_error = "gave up after 3 attempts: PagerDuty answered 503"
            alert.attempts = 3
        if incident_url is not None:
            alert.pagerduty_incident_id = "PINC1"
            alert.pagerduty_incident_url = incident_url


# -- on or off --------------------------------------------------------------------------------


def test_without_operator_tokens_the_console_is_off(
    sqlite_sessions: sessionmaker[Session], queue: ListQueue
) -> None:
    with console_app(sqlite_sessions, queue, settings(operator_tokens="")) as client:
        for path in ("/ui", "/ui/sign-in", "/ui/alerts", "/ui/static/console.css"):
            assert client.get(path).status_code == 404, path
        assert client.post("/ui/sign-in", data={"token": OPERATOR_TOKEN}).status_code == 404
    assert "off" in console_state(settings(operator_tokens=""))
    assert "PAGERBRIDGE_OPERATOR_TOKENS" in console_state(settings(operator_tokens=""))
    assert "on at /ui" in console_state(settings())


def test_an_operator_token_is_as_long_as_an_ingress_token() -> None:
    with pytest.raises(ValueError, match="an operator token must be at least 32 characters"):
        settings(operator_tokens="short-operator-token")


def test_console_paths_carry_no_events() -> None:
    for path in ("/ui", "/ui/sign-in", "/ui/replay", "/ui/rejected/1/replay"):
        assert not carries_events("POST", path)


# -- signing in -------------------------------------------------------------------------------


def test_a_page_without_a_session_leads_to_the_sign_in_form(client: TestClient) -> None:
    answer = client.get("/ui/alerts")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/sign-in"
    assert client.get("/ui/live/overview").status_code == 401
    form = client.get("/ui/sign-in")
    assert form.status_code == 200
    assert '<label for="token">Operator token</label>' in form.text
    assert '<input type="password" id="token" name="token"' in form.text


def test_signing_in_sets_a_strict_http_only_expiring_cookie(client: TestClient) -> None:
    form = client.get("/ui/sign-in")
    answer = client.post(
        "/ui/sign-in", data={"token": OPERATOR_TOKEN, "csrf_token": form_token(form.text)}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    (cookie,) = [
        header
        for header in answer.headers.get_list("set-cookie")
        if header.startswith("pagerbridge_console=")
    ]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "max-age=28800" in cookie.lower()
    assert "secure" not in attributes  # served over plain HTTP here
    assert OPERATOR_TOKEN not in cookie
    assert client.get("/ui").status_code == 200


def test_over_https_the_cookie_is_secure(
    sqlite_sessions: sessionmaker[Session], queue: ListQueue
) -> None:
    with console_app(sqlite_sessions, queue, settings()) as client:
        client.base_url = client.base_url.copy_with(scheme="https")
        form = client.get("/ui/sign-in")
        answer = client.post(
            "/ui/sign-in", data={"token": OPERATOR_TOKEN, "csrf_token": form_token(form.text)}
        )
    cookie = next(
        h for h in answer.headers.get_list("set-cookie") if h.startswith("pagerbridge_console=")
    )
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


@pytest.mark.parametrize("token", [INGRESS_TOKEN, "not-a-token", "", OPERATOR_TOKEN + "x"])
def test_an_ingress_or_wrong_token_is_refused(client: TestClient, token: str) -> None:
    form = client.get("/ui/sign-in")
    answer = client.post("/ui/sign-in", data={"token": token, "csrf_token": form_token(form.text)})
    assert answer.status_code == 401
    assert "That is not an operator token." in answer.text
    assert "pagerbridge_console=" not in answer.headers.get("set-cookie", "")
    assert client.get("/ui").status_code == 303


def test_signing_in_without_the_forms_token_is_refused(client: TestClient) -> None:
    client.get("/ui/sign-in")
    answer = client.post("/ui/sign-in", data={"token": OPERATOR_TOKEN})
    assert answer.status_code == 403
    assert client.get("/ui").status_code == 303


def test_repeated_failures_are_slowed_down(
    sqlite_sessions: sessionmaker[Session], queue: ListQueue
) -> None:
    with console_app(sqlite_sessions, queue, settings(auth_failures_per_minute=2)) as client:
        for _ in range(2):
            form = client.get("/ui/sign-in")
            client.post("/ui/sign-in", data={"token": "wrong", "csrf_token": form_token(form.text)})
        form = client.get("/ui/sign-in")
        answer = client.post(
            "/ui/sign-in", data={"token": OPERATOR_TOKEN, "csrf_token": form_token(form.text)}
        )
    assert answer.status_code == 429 and "Retry-After" in answer.headers


def test_an_expired_session_is_refused(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    nine_hours_ago = int(time.time()) - 9 * 3600
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda _self: nine_hours_ago)
    sign_in_answer = client.post(
        "/ui/sign-in",
        data={"token": OPERATOR_TOKEN, "csrf_token": form_token(client.get("/ui/sign-in").text)},
    )
    assert sign_in_answer.status_code == 303
    monkeypatch.undo()
    assert client.get("/ui").status_code == 303


def test_changing_the_operator_tokens_ends_every_session(
    sqlite_sessions: sessionmaker[Session], queue: ListQueue
) -> None:
    with console_app(sqlite_sessions, queue, settings()) as first:
        sign_in(first)
        cookie = first.cookies.get("pagerbridge_console")
    other = settings(operator_tokens="another-operator-token-0123456789abcdef")
    with console_app(sqlite_sessions, queue, other) as second:
        second.cookies.set("pagerbridge_console", str(cookie), path="/ui")
        assert second.get("/ui").status_code == 303


def test_signing_out_ends_the_session(client: TestClient) -> None:
    csrf = sign_in(client)
    answer = client.post("/ui/sign-out", data={"csrf_token": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/sign-in"
    assert client.get("/ui").status_code == 303


# -- CSRF -------------------------------------------------------------------------------------


def test_a_post_without_or_with_a_wrong_csrf_token_changes_nothing(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(sqlite_sessions, "a1", state=DeliveryState.FAILED)
    csrf = sign_in(client)
    for data in ({"alert_id": "a1"}, {"alert_id": "a1", "csrf_token": csrf[:-1] + "x"}):
        assert client.post("/ui/replay", data=data).status_code == 403
    assert client.post("/ui/sign-out", data={}).status_code == 403
    cross_site = client.post(
        "/ui/replay",
        data={"alert_id": "a1", "csrf_token": csrf},
        headers={"Origin": "https://elsewhere.example"},
    )
    assert cross_site.status_code == 403
    with sqlite_sessions() as session:
        assert session.scalars(select(Alert.delivery_state)).one() is DeliveryState.FAILED
        assert session.scalars(select(QuarantinedRequest)).all() == []
    assert client.get("/ui").status_code == 200  # still signed in


# -- pages ------------------------------------------------------------------------------------


def test_pages_forbid_inline_script_and_framing(client: TestClient) -> None:
    sign_in(client)
    answer = client.get("/ui")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-store"
    assert "<script>" not in answer.text  # the one script is a file: <script src=...>
    assert client.get("/ui/static/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/../settings.py").status_code == 404
    assert client.get("/ui/static/nope.js").status_code == 404


def test_overview_shows_states_queue_gate_and_calls(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(sqlite_sessions, "waiting-1")
    add_alert(sqlite_sessions, "gone-1", state=DeliveryState.FAILED)
    sign_in(client)
    page = client.get("/ui").text
    assert 'data-live="/ui/live/overview"' in page
    fragment = client.get("/ui/live/overview").text
    for shown in (
        '<span class="count">1</span> <span class="label">failed</span>',
        '<span class="count">7</span>',  # the queue depth
        "waiting-1",  # the oldest waiting delivery
        '<th scope="row">default</th>',  # the default route's gate
        "closed",
        "900.0/min configured",
    ):
        assert shown in fragment, shown
    assert "<html" not in fragment


def test_a_hostile_message_is_shown_as_text(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(
        sqlite_sessions,
        "x1",
        fields={"message": HOSTILE},
        title=HOSTILE,
        incident_url="javascript:alert(1)",
    )
    sign_in(client)
    for path in ("/ui", "/ui/alerts", "/ui/alerts/x1", "/ui/live/overview"):
        page = client.get(path).text
        assert HOSTILE not in page, path
        assert "javascript:" not in page, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/ui/alerts/x1").text


def test_alerts_are_filtered_searched_and_paginated(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    for n in range(53):
        add_alert(sqlite_sessions, f"cpu-{n:02d}")
    add_alert(sqlite_sessions, "disk-1", state=DeliveryState.FAILED)
    add_alert(sqlite_sessions, "web-1", route="web")
    sign_in(client)

    first = client.get("/ui/alerts").text
    ids = re.findall(r'<a href="/ui/alerts/([^"?]+)\?', first)
    assert len(ids) == 50 and ids[:3] == ["web-1", "disk-1", "cpu-52"]  # newest first
    older = re.search(r'href="/ui/alerts\?before=(\d+)">Older', first)
    assert older
    second = client.get(f"/ui/alerts?before={older.group(1)}").text
    assert re.findall(r'<a href="/ui/alerts/([^"?]+)\?', second) == [
        f"cpu-{n:02d}" for n in range(4, -1, -1)
    ]
    assert "Older" not in second and ">Newest</a>" in second

    def listed(query: str) -> list[str]:
        return re.findall(r'<a href="/ui/alerts/([^"?]+)\?', client.get(f"/ui/alerts?{query}").text)

    assert listed("state=failed") == ["disk-1"]
    assert listed("route=web") == ["web-1"]
    assert listed("source=coscale:web") == ["web-1"]
    assert listed("q=cpu-0") == [f"cpu-{n:02d}" for n in range(9, -1, -1)]
    assert listed("q=%25") == []  # a LIKE wildcard is searched for as itself
    assert client.get("/ui/alerts?state=bogus").status_code == 422
    live = client.get("/ui/live/alerts?state=failed").text
    assert "disk-1" in live and "cpu-01" not in live


def test_a_row_links_to_its_incident_in_pagerduty(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(sqlite_sessions, "a1", incident_url="https://acme.pagerduty.com/incidents/PINC1")
    sign_in(client)
    page = client.get("/ui/alerts").text
    assert '<a href="https://acme.pagerduty.com/incidents/PINC1" rel="noopener noreferrer"' in page


def test_one_alert_shows_its_cycles_and_timeline(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(sqlite_sessions, "a1", fields={"message": "CPU > 90%", "repaired": "true"})
    sign_in(client)
    page = client.get("/ui/alerts/a1").text
    assert "1 cycle(s)" in page
    assert "Event received" in page and '<span class="repaired">repaired</span>' in page
    assert "<dt>message</dt><dd>CPU &gt; 90%</dd>" in page
    assert ">Replay</button>" in page  # not delivered yet
    missing = client.get("/ui/alerts/nope")
    assert missing.status_code == 404 and "No alert nope" in missing.text


def test_an_update_with_fields_alone_shows_as_an_update_not_an_acknowledge(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    add_alert(sqlite_sessions, "u1")
    apply_event(
        sqlite_sessions,
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id="u1",
            action=None,
            received_at=NOW,
            update_fields={"priority": {"id": "PPRIO01", "type": "priority_reference"}},
        ),
        NOW,
    )
    sign_in(client)
    page = client.get("/ui/alerts/u1").text
    assert "<strong>Event received:</strong> update → fields" in page
    assert '<p class="detail">with priority</p>' in page
    assert "acknowledged" not in page


def test_replay_one_and_all_failed_after_a_confirmation(
    client: TestClient, sqlite_sessions: sessionmaker[Session]
) -> None:
    for alert_id in ("f1", "f2", "f3"):
        add_alert(sqlite_sessions, alert_id, state=DeliveryState.FAILED)
    csrf = sign_in(client)
    failed = client.get("/ui/failed").text
    assert failed.count(">Replay</button>") == 4  # one per alert, and all failed

    confirm = client.get("/ui/replay?alert_id=f1").text
    assert "Put alert <strong>f1</strong>" in confirm and ">Replay</button>" in confirm
    with sqlite_sessions() as session:  # a confirmation page changes nothing
        assert session.scalars(select(Alert.delivery_state)).all() == [DeliveryState.FAILED] * 3

    done = client.post("/ui/replay", data={"alert_id": "f1", "csrf_token": form_token(confirm)})
    assert done.status_code == 200 and "1 alert(s) put back" in done.text
    assert "every failed alert (2)" in client.get("/ui/replay?all_failed=true").text
    rest = client.post("/ui/replay", data={"all_failed": "true", "csrf_token": csrf})
    assert "2 alert(s) put back" in rest.text
    with sqlite_sessions() as session:
        assert session.scalars(select(Alert.delivery_state)).all() == [DeliveryState.PENDING] * 3


def test_rejected_requests_are_shown_escaped_and_replayed(
    client: TestClient, queue: ListQueue, sqlite_sessions: sessionmaker[Session]
) -> None:
    body = b'{"alert_id": "r1", "action": "triggered", "message": "<b>' + HOSTILE.encode() + b'"}'
    # (a wrong token is not kept: a legitimate sender's mistake is, here a Content-Type)
    refused = client.post(
        "/webhooks/coscale",
        content=body,
        headers={"Authorization": f"Bearer {INGRESS_TOKEN}", "Content-Type": "text/plain"},
    )
    assert refused.status_code == 415
    csrf = sign_in(client)
    page = client.get("/ui/rejected").text
    assert "is not JSON" in page
    assert HOSTILE not in page and "&lt;script&gt;" in page
    (request_id,) = re.findall(r'action="/ui/rejected/(\d+)/replay"', page)
    assert ">Replay</button>" in client.get(f"/ui/rejected/{request_id}/replay").text

    answer = client.post(f"/ui/rejected/{request_id}/replay", data={"csrf_token": csrf})
    assert answer.status_code == 200 and "Replayed: 202" in answer.text
    assert [event.alert_id for event in queue.events] == ["r1"]
    again = client.post(f"/ui/rejected/{request_id}/replay", data={"csrf_token": csrf})
    assert again.status_code == 409 and "already replayed" in again.text
    assert [event.alert_id for event in queue.events] == ["r1"]


def test_the_console_logs_no_token(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sign_in(client)
    form = client.get("/ui/sign-in")
    client.post("/ui/sign-in", data={"token": INGRESS_TOKEN, "csrf_token": form_token(form.text)})
    assert "signed in" in caplog.text and "refused a sign-in" in caplog.text
    assert OPERATOR_TOKEN not in caplog.text and INGRESS_TOKEN not in caplog.text
