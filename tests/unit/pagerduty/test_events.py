"""EventsClient and its pure policy against the simulator's Events API v2 (fake_events_api)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.fake_events_api import EVENTS_URL, ROUTING_KEY, FakeEventsApi
from worker.pagerduty import CredentialsError, PagerDutyError, PermanentError, RetryableError
from worker.pagerduty.events import (
    MAX_DEDUP_KEY_CHARS,
    MAX_EVENT_BYTES,
    MAX_SUMMARY_CHARS,
    TRIMMED_NOTE,
    EventsClient,
    build_event,
    classify_event_response,
    dedup_key,
)

OTHER_KEY = "R0UTINGKEY0000000000000000000002"


@pytest.fixture
def api() -> Iterator[FakeEventsApi]:
    fake = FakeEventsApi()
    yield fake
    fake.close()


@pytest.fixture
def client(api: FakeEventsApi) -> Iterator[EventsClient]:
    with api.client() as events_client:
        yield events_client


def trigger(key: str = "pagerbridge/coscale/42/1", **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "summary": "Disk 90% full on db-1",
        "severity": "critical",
        "source": "db-1",
    }
    arguments.update(overrides)
    return build_event("trigger", key, **arguments)


# ---- dedup_key --------------------------------------------------------------------------------


def test_dedup_key_is_stable_per_alert_cycle() -> None:
    # The same alert and cycle: the same key, every time (a retried trigger joins the alert)
    assert dedup_key("coscale", "42", 1) == dedup_key("coscale", "42", 1)
    assert dedup_key("coscale", "42", 1) == "pagerbridge/coscale/42/1"
    # A re-trigger after a resolve is the next cycle: a new key
    assert dedup_key("coscale", "42", 2) != dedup_key("coscale", "42", 1)
    # Other alerts and other sources never share it
    assert dedup_key("coscale", "43", 1) != dedup_key("coscale", "42", 1)
    assert dedup_key("api", "42", 1) != dedup_key("coscale", "42", 1)


def test_dedup_key_matches_the_rest_incident_key() -> None:
    # One key names a cycle whichever backend delivers it
    from worker.pipeline.intake import incident_key

    assert dedup_key("coscale", "42", 3) == incident_key("coscale", "42", 3)


def test_dedup_key_of_a_long_alert_id_is_hashed_not_cut() -> None:
    # Given two long ids with the same first 255 characters
    first, second = "a" * 300 + "1", "a" * 300 + "2"
    # Then each key fits, and they differ (cutting would make them collide) per id and cycle
    keys = {dedup_key("coscale", alert, cycle) for alert in (first, second) for cycle in (1, 2)}
    assert len(keys) == 4
    assert all(len(key) <= MAX_DEDUP_KEY_CHARS for key in keys)
    assert dedup_key("coscale", first, 1) == dedup_key("coscale", first, 1)


def test_dedup_key_of_another_namespace_names_it_and_never_meets_the_default() -> None:
    # The default namespace keeps the format incidents were opened with before namespaces
    assert dedup_key("coscale", "42", 1, "pagerbridge") == "pagerbridge/coscale/42/1"
    # Another bridge's key names its namespace in its own first segment
    assert dedup_key("coscale", "42", 1, "east") == "pagerbridge@east/coscale/42/1"
    assert dedup_key("coscale", "42", 1, "east") != dedup_key("coscale", "42", 1, "west")
    # An alert id shaped like another namespace's key still cannot produce it
    assert dedup_key("api", "coscale/42", 1) != dedup_key("coscale", "42", 1, "api")
    long_id = "a" * 400
    assert len(dedup_key("coscale:" + "r" * 72, long_id, 10**6, "n" * 64)) <= MAX_DEDUP_KEY_CHARS


@pytest.mark.parametrize(
    ("source", "alert_id", "cycle"), [("", "1", 1), ("coscale", "", 1), ("coscale", "1", 0)]
)
def test_dedup_key_refuses_empty_parts_and_cycles_below_one(
    source: str, alert_id: str, cycle: int
) -> None:
    with pytest.raises(ValueError):
        dedup_key(source, alert_id, cycle)


# ---- build_event ------------------------------------------------------------------------------


def test_build_trigger_has_pagerduty_shape() -> None:
    event = build_event(
        "trigger",
        "k-1",
        summary="CPU high",
        severity="warning",
        source="web-1",
        component="cpu",
        group="shop",
        class_="CPU usage",
        custom_details={"message": "CPU high"},
        links=[{"href": "https://coscale.example/a/1", "text": "CoScale"}, {"href": "https://x"}],
        timestamp=datetime(2025, 10, 1, 12, 0, tzinfo=UTC),
    )
    assert event == {
        "event_action": "trigger",
        "dedup_key": "k-1",
        "payload": {
            "summary": "CPU high",
            "source": "web-1",
            "severity": "warning",
            "timestamp": "2025-10-01T12:00:00+00:00",
            "component": "cpu",
            "group": "shop",
            "class": "CPU usage",
            "custom_details": {"message": "CPU high"},
        },
        "links": [
            {"href": "https://coscale.example/a/1", "text": "CoScale"},
            {"href": "https://x"},
        ],
    }
    assert "routing_key" not in event  # the client adds it; the event can be logged


def test_build_leaves_out_empty_optional_fields() -> None:
    event = trigger(component="", group=None, custom_details={}, links=[])
    assert event["payload"] == {
        "summary": "Disk 90% full on db-1",
        "source": "db-1",
        "severity": "critical",
    }
    assert "links" not in event


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_acknowledge_and_resolve_carry_the_key_alone(action: Any) -> None:
    # PagerDuty reads no payload on these; passing one is harmless
    assert build_event(action, "k-1", summary="ignored", severity="bogus") == {
        "event_action": action,
        "dedup_key": "k-1",
    }


def test_summary_is_cut_to_1024_characters_with_an_ellipsis() -> None:
    event = trigger(summary="x" * 5000, source="s" * 5000)
    assert len(event["payload"]["summary"]) == MAX_SUMMARY_CHARS
    assert event["payload"]["summary"].endswith("…")
    assert len(event["payload"]["source"]) == 1024


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"action": "snooze"}, "action"),
        ({"dedup_key": ""}, "dedup_key"),
        ({"dedup_key": "k" * 256}, "255"),
        ({"summary": "  "}, "summary"),
        ({"source": ""}, "source"),
        ({"severity": "fatal"}, "severity"),
        ({"timestamp": datetime(2025, 10, 1, 12, 0)}, "timezone"),
        ({"links": [{"text": "no href"}]}, "href"),
    ],
)
def test_build_refuses_what_pagerduty_would_refuse(
    arguments: dict[str, Any], complaint: str
) -> None:
    call: dict[str, Any] = {
        "action": "trigger",
        "dedup_key": "k-1",
        "summary": "s",
        "severity": "info",
        "source": "src",
    }
    call.update(arguments)
    action, key = call.pop("action"), call.pop("dedup_key")
    with pytest.raises(ValueError, match=complaint):
        build_event(action, key, **call)


def test_timestamp_keeps_its_offset() -> None:
    moment = datetime(2025, 10, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert trigger(timestamp=moment)["payload"]["timestamp"] == "2025-10-01T14:00:00+02:00"


def test_oversized_custom_details_are_cut_largest_first_and_noted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given custom details far over 512 KB: a huge text, a large list, a small text
    details = {"message": "m" * 900_000, "blob": ["b" * 100] * 3000, "metric": "cpu"}
    # When the event is built
    with caplog.at_level(logging.WARNING, logger="worker.pagerduty.events"):
        event = trigger(custom_details=details)
    # Then it fits with a routing key added; the largest value was cut just enough, the others
    # are intact, and the event says what was cut
    body = {"routing_key": ROUTING_KEY, **event}
    size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
    assert MAX_EVENT_BYTES - 1024 < size <= MAX_EVENT_BYTES
    kept = event["payload"]["custom_details"]
    assert kept["metric"] == "cpu"
    assert kept["blob"] == details["blob"]
    assert kept["message"].startswith("mmm") and kept["message"].endswith("…")
    assert kept[TRIMMED_NOTE] == "cut to fit PagerDuty's 512 KB event limit: message"
    assert "custom_details cut" in caplog.text
    # And the caller's details were not changed
    assert len(details["message"]) == 900_000


def test_a_value_that_cannot_be_cut_enough_is_dropped() -> None:
    # Given a list (it cannot be cut) larger than the limit, and a text
    details = {"blob": ["b" * 100] * 6000, "message": "m" * 1000}
    event = trigger(custom_details=details)
    kept = event["payload"]["custom_details"]
    # Then the list is gone, the text stays, and the note says so
    assert "blob" not in kept
    assert kept["message"] == "m" * 1000
    assert "blob" in kept[TRIMMED_NOTE]


def test_multibyte_details_are_measured_in_bytes() -> None:
    # 3 bytes per character: 200 000 characters is 600 000 bytes
    event = trigger(custom_details={"message": "€" * 200_000})
    body = {"routing_key": ROUTING_KEY, **event}
    assert (
        len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_EVENT_BYTES
    )
    assert TRIMMED_NOTE in event["payload"]["custom_details"]


def test_an_event_too_large_without_details_is_refused() -> None:
    links = [{"href": "https://x/" + "p" * 1000}] * 600
    with pytest.raises(ValueError, match="even without custom_details"):
        trigger(links=links, custom_details={"message": "m"})


def test_an_event_that_fits_is_untouched() -> None:
    details = {"message": "m" * 1000}
    assert trigger(custom_details=details)["payload"]["custom_details"] == details


# ---- send: the alert lifecycle ----------------------------------------------------------------


def test_trigger_opens_an_alert_and_returns_its_dedup_key(
    api: FakeEventsApi, client: EventsClient
) -> None:
    # When a trigger is sent
    key = client.send(trigger(custom_details={"metric": "disk"}))
    # Then the key comes back and PagerDuty has one open alert with what the event said
    assert key == "pagerbridge/coscale/42/1"
    [alert] = api.alerts()
    assert alert["status"] == "triggered"
    assert alert["dedup_key"] == key
    assert alert["routing_key"] == ROUTING_KEY
    assert alert["summary"] == "Disk 90% full on db-1"
    assert alert["severity"] == "critical"
    assert alert["custom_details"] == {"metric": "disk"}


def test_request_shape(api: FakeEventsApi) -> None:
    with api.client(user_agent="pagerbridge-test/1") as events_client:
        events_client.send(trigger())
    request = api.requests[-1]
    assert request.method == "POST"
    assert str(request.url) == EVENTS_URL
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "pagerbridge-test/1"
    assert "authorization" not in request.headers  # the Events API's credential is the body's
    assert api.last_body()["routing_key"] == ROUTING_KEY


def test_acknowledge_then_resolve(api: FakeEventsApi, client: EventsClient) -> None:
    key = client.send(trigger())
    assert client.send(build_event("acknowledge", key)) == key
    assert api.alerts()[0]["status"] == "acknowledged"
    assert client.send(build_event("resolve", key)) == key
    assert api.alerts()[0]["status"] == "resolved"


def test_a_retried_trigger_joins_the_open_alert(api: FakeEventsApi, client: EventsClient) -> None:
    # Given a trigger whose answer was lost (PagerDuty took it, we saw a 502)
    api.fault_plan.update({"lost": 1.0, "seed": 1})
    with pytest.raises(RetryableError) as lost:
        client.send(trigger())
    assert lost.value.status == 502
    # When it is retried, as it must be
    api.fault_plan.clear()
    client.send(trigger())
    # Then PagerDuty has one alert, not two: the same dedup_key joined it
    [alert] = api.alerts()
    assert alert["triggers_joined"] == 1


def test_a_retrigger_after_resolve_opens_a_new_alert_with_the_next_cycle(
    api: FakeEventsApi, client: EventsClient
) -> None:
    first = client.send(trigger(dedup_key("coscale", "42", 1)))
    client.send(build_event("resolve", first))
    second = client.send(trigger(dedup_key("coscale", "42", 2)))
    # A late resolve of the first cycle cannot touch the second
    client.send(build_event("resolve", first))
    assert [(a["dedup_key"], a["status"]) for a in api.alerts()] == [
        (first, "resolved"),
        (second, "triggered"),
    ]


def test_acknowledge_of_an_unknown_alert_is_taken_and_dropped(
    api: FakeEventsApi, client: EventsClient
) -> None:
    # docs/pagerduty.md: an acknowledge or resolve with no open alert is dropped; 202 is done
    assert client.send(build_event("acknowledge", "never-triggered")) == "never-triggered"
    assert api.alerts() == []
    assert api.simulator.counts()["events"]["dropped"]["acknowledge"] == 1


def test_an_event_built_from_a_route_is_accepted(api: FakeEventsApi, client: EventsClient) -> None:
    # The simulator validates like PagerDuty: the route's event passes it
    from worker.routes_file import EventsBackend

    backend = EventsBackend.model_validate({"routing_key": ROUTING_KEY})
    fields = {
        "alert_id": "42",
        "message": "Disk full",
        "metric": "disk",
        "subject": "db-1",
        "app": "shop",
        "link": "https://coscale.example/a/42",
    }
    key = client.send(
        backend.build(
            "trigger",
            dedup_key("coscale", "42", 1),
            fields,
            timestamp=datetime(2025, 10, 1, tzinfo=UTC),
        )
    )
    [alert] = api.alerts()
    assert alert["dedup_key"] == key
    assert alert["source"] == "db-1"
    assert alert["links"] == [{"href": "https://coscale.example/a/42", "text": "Open in CoScale"}]
    client.send(backend.build("resolve", key, fields))
    assert api.alerts()[0]["status"] == "resolved"


def test_a_trimmed_event_is_accepted(api: FakeEventsApi, client: EventsClient) -> None:
    client.send(trigger(custom_details={"message": "m" * 600_000}))
    [alert] = api.alerts()
    assert TRIMMED_NOTE in alert["custom_details"]


# ---- send: what it refuses before sending ------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        ({"event_action": "trigger"}, "dedup_key"),
        ({"event_action": "page", "dedup_key": "k"}, "event_action"),
        ({"event_action": "resolve", "dedup_key": "k", "routing_key": OTHER_KEY}, "routing_key"),
        ({"event_action": "resolve", "dedup_key": "k", "pad": "x" * MAX_EVENT_BYTES}, "bytes"),
    ],
)
def test_send_refuses_malformed_events_without_a_request(
    api: FakeEventsApi, client: EventsClient, event: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        client.send(event)
    assert api.requests == []


@pytest.mark.parametrize(
    "key", ["", "short", ROUTING_KEY + "x", "R0UTINGKEY00000000000000000000-1"]
)
def test_constructor_refuses_a_malformed_routing_key_without_echoing_it(key: str) -> None:
    with pytest.raises(ValueError) as refused:
        EventsClient(key)
    assert "32 letters or digits" in str(refused.value)
    if key:
        assert key not in str(refused.value)


@pytest.mark.parametrize("url", ["ftp://events.pagerduty.com/v2/enqueue", "/v2/enqueue", "http://"])
def test_constructor_refuses_a_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        EventsClient(ROUTING_KEY, url=url)


def test_constructor_refuses_bad_timeouts() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        EventsClient(ROUTING_KEY, read_timeout=0)


def test_repr_shows_the_url_not_the_key(client: EventsClient) -> None:
    assert ROUTING_KEY not in repr(client)
    assert "events.pagerduty.test" in repr(client)


# ---- send: classified failures -----------------------------------------------------------------


def test_invalid_event_is_permanent_with_pagerdutys_errors(
    api: FakeEventsApi, client: EventsClient
) -> None:
    # Given a trigger the Events API refuses (no payload)
    with pytest.raises(PermanentError) as refused:
        client.send({"event_action": "trigger", "dedup_key": "k-1"})
    # Then a permanent error with the Events API's own message and errors list
    error = refused.value
    assert type(error) is PermanentError
    assert error.status == 400
    assert error.message == "Event object is invalid"
    assert any("'payload' is required" in text for text in error.errors)
    assert "'payload' is required" in str(error)


def test_a_refused_routing_key_is_a_credentials_error() -> None:
    # Given an Events API that knows another key only
    fake = FakeEventsApi(routing_keys=[OTHER_KEY])
    try:
        with fake.client() as events_client, pytest.raises(CredentialsError) as refused:
            events_client.send(trigger())
    finally:
        fake.close()
    # Then no retry and no other event of this route can help: an operator must act
    assert refused.value.status == 400
    assert refused.value.errors == ("Invalid routing key",)


def test_rate_limited_is_retryable_after_the_reset(
    api: FakeEventsApi, client: EventsClient
) -> None:
    # Given an integration allowing one event a minute, with ratelimit-* headers
    api.fault_plan.update({"rate_limit_per_minute": 1, "rate_limit_burst": 1})
    client.send(trigger("k-1"))
    # When the next event comes at once
    with pytest.raises(RetryableError) as limited:
        client.send(trigger("k-2"))
    # Then retryable, after the reset PagerDuty announced; and the event was not taken
    assert limited.value.status == 429
    assert limited.value.retry_after == 60.0
    assert limited.value.rate_limit == 1.0
    assert [alert["dedup_key"] for alert in api.alerts()] == ["k-1"]


def test_rate_limited_with_retry_after_only(api: FakeEventsApi, client: EventsClient) -> None:
    api.then(httpx.Response(429, headers={"Retry-After": "120"}))
    with pytest.raises(RetryableError) as limited:
        client.send(trigger())
    assert limited.value.retry_after == 120.0


def test_rate_limited_without_headers_or_body(api: FakeEventsApi, client: EventsClient) -> None:
    # docs/pagerduty.md: a 429 may come with no headers and no body
    api.fault_plan.update(
        {"rate_limit_per_minute": 1, "rate_limit_burst": 1, "rate_limit_headers": False}
    )
    client.send(trigger("k-1"))
    with pytest.raises(RetryableError) as limited:
        client.send(trigger("k-2"))
    assert limited.value.status == 429
    assert limited.value.retry_after is None


def test_outage_is_retryable(api: FakeEventsApi, client: EventsClient) -> None:
    api.fault_plan.update({"down": True})
    with pytest.raises(RetryableError) as down:
        client.send(trigger())
    assert down.value.status == 503
    assert api.alerts() == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retryable(api: FakeEventsApi, client: EventsClient, status: int) -> None:
    api.then(httpx.Response(status, text="<html><title>Bad things</title></html>"))
    with pytest.raises(RetryableError) as failed:
        client.send(trigger())
    assert failed.value.status == status


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ReadTimeout("timed out"), "read timeout"),
        (httpx.ConnectTimeout("timed out"), "connect timeout"),
        (httpx.RemoteProtocolError("Server disconnected"), "connection closed by server"),
    ],
)
def test_transport_failures_are_retryable_and_hide_httpx(
    api: FakeEventsApi, client: EventsClient, failure: Exception, kind: str
) -> None:
    api.then(failure)
    with pytest.raises(RetryableError) as failed:
        client.send(trigger())
    assert failed.value.status is None
    assert kind in failed.value.message
    assert failed.value.__cause__ is failure  # kept for debugging, not part of the type
    assert not isinstance(failed.value, httpx.HTTPError)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, CredentialsError),
        (403, CredentialsError),
        (404, PermanentError),
        (413, PermanentError),
        (302, RetryableError),
        (408, RetryableError),
    ],
)
def test_other_statuses_are_classified_as_the_rest_api(
    api: FakeEventsApi, client: EventsClient, status: int, kind: type[PagerDutyError]
) -> None:
    api.then(httpx.Response(status))
    with pytest.raises(kind):
        client.send(trigger())


# ---- the routing key never leaks -----------------------------------------------------------------


def test_routing_key_echoed_in_an_answer_is_scrubbed(
    api: FakeEventsApi, client: EventsClient
) -> None:
    # Given an answer that echoes the key in its message and its errors
    api.then(
        httpx.Response(
            400,
            json={
                "status": "invalid event",
                "message": f"Bad key {ROUTING_KEY}",
                "errors": [f"'routing_key' {ROUTING_KEY} is unknown"],
            },
        )
    )
    with pytest.raises(CredentialsError) as refused:
        client.send(trigger())
    text = f"{refused.value} {refused.value!r} {refused.value.args}"
    assert ROUTING_KEY not in text
    assert "[redacted]" in text


def test_routing_key_in_a_transport_error_is_scrubbed(
    api: FakeEventsApi, client: EventsClient
) -> None:
    api.then(httpx.ConnectError(f"cannot send {ROUTING_KEY}"))
    with pytest.raises(RetryableError) as failed:
        client.send(trigger())
    assert ROUTING_KEY not in f"{failed.value} {failed.value!r}"


def test_routing_key_is_never_logged(
    api: FakeEventsApi, client: EventsClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        client.send(trigger())
        api.then(httpx.ReadTimeout("timed out"), httpx.Response(503))
        for _ in range(2):
            with pytest.raises(RetryableError):
                client.send(trigger())
        client.send(trigger(custom_details={"message": "m" * 600_000}))
    assert caplog.records  # something was logged
    assert ROUTING_KEY not in caplog.text


# ---- classify_event_response (pure) -----------------------------------------------------------


def test_classify_success_statuses() -> None:
    body = b'{"status": "success", "message": "Event processed", "dedup_key": "k"}'
    assert classify_event_response(202, body, {}) is None
    assert classify_event_response(200, b"", {}) is None


def test_classify_400_without_json() -> None:
    error = classify_event_response(400, b"Bad Request", {})
    assert type(error) is PermanentError
    assert "Bad Request" in error.message


def test_classify_400_in_the_rest_envelope_keeps_its_errors() -> None:
    body = json.dumps({"error": {"message": "Invalid Input", "code": 2001, "errors": ["x bad"]}})
    error = classify_event_response(400, body.encode(), {})
    assert type(error) is PermanentError
    assert error.errors == ("x bad",)
    assert error.code == 2001


def test_classify_400_about_dedup_key_stays_permanent() -> None:
    body = (
        b'{"status": "invalid event", "errors": ["\'dedup_key\' must be at most 255 characters"]}'
    )
    assert type(classify_event_response(400, body, {})) is PermanentError


# ---- several events in flight at once ---------------------------------------------------------


def test_events_sent_together_answer_each_in_its_place(
    client: EventsClient, api: FakeEventsApi
) -> None:
    api.scripted_for.update(
        {
            "pagerbridge/coscale/0/1": lambda request: httpx.Response(
                202, json={"status": "success"}
            ),
            "pagerbridge/coscale/1/1": httpx.Response(503, text=f"down; routing_key={ROUTING_KEY}"),
            "pagerbridge/coscale/2/1": httpx.ConnectError("refused"),
        }
    )
    taken = client.send_together(
        [trigger(f"pagerbridge/coscale/{n}/1") for n in range(3)]
        + [build_event("resolve", "pagerbridge/coscale/9/1")]
    )
    assert taken[0] == "pagerbridge/coscale/0/1"
    assert isinstance(taken[1], RetryableError) and taken[1].status == 503
    assert ROUTING_KEY not in str(taken[1]) and ROUTING_KEY not in repr(taken[1])
    assert isinstance(taken[2], RetryableError)
    assert taken[3] == "pagerbridge/coscale/9/1"  # the simulator took the resolve (202)
    # In flight together, they reach the API in any order
    assert sorted(json.loads(r.content)["event_action"] for r in api.requests) == [
        "resolve",
        "trigger",
        "trigger",
        "trigger",
    ]
    assert all(json.loads(r.content)["routing_key"] == ROUTING_KEY for r in api.requests)


def test_events_sent_together_are_all_checked_before_any_is_sent(
    client: EventsClient, api: FakeEventsApi
) -> None:
    with pytest.raises(ValueError, match="routing_key"):
        client.send_together(
            [trigger(), {**trigger("pagerbridge/coscale/2/1"), "routing_key": "x"}]
        )
    assert api.requests == []
