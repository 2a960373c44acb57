"""classify_response / classify_transport_failure: one test per row of docs/pagerduty.md's
error table."""

from __future__ import annotations

import json
import pickle
import socket
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from worker.pagerduty.classify import (
    classify_malformed_success,
    classify_response,
    classify_transport_failure,
    rate_limit_per_minute,
    retry_after_seconds,
)
from worker.pagerduty.errors import (
    CredentialsError,
    DuplicateIncidentKeyError,
    PagerDutyError,
    PermanentError,
    RetryableError,
)


def envelope(message: str, code: int | None = None, errors: list[str] | None = None) -> bytes:
    """PagerDuty's error envelope, as docs/pagerduty.md shows it."""
    error: dict[str, object] = {"message": message, "errors": errors or []}
    if code is not None:
        error["code"] = code
    return json.dumps({"error": error}).encode()


NO_HEADERS: dict[str, str] = {}


# -- 2xx -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_done(status: int) -> None:
    # Given a success answer, with or without a body
    # When it is classified / Then there is nothing to raise
    assert classify_response(status, b'{"incident": {"id": "P1"}}', NO_HEADERS) is None
    assert classify_response(status, b"", NO_HEADERS) is None


# -- 400 -------------------------------------------------------------------------------------


def test_400_invalid_input_is_permanent_with_pagerduty_details() -> None:
    body = envelope("Invalid Input Provided", 2001, ["Title cannot be empty."])

    error = classify_response(400, body, NO_HEADERS)

    assert type(error) is PermanentError
    assert error.status == 400
    assert error.code == 2001
    assert error.message == "Invalid Input Provided"
    assert error.errors == ("Title cannot be empty.",)
    assert str(error) == (
        "PagerDuty HTTP 400: Invalid Input Provided (code 2001) — Title cannot be empty."
    )


def test_400_duplicate_incident_key_is_its_own_error() -> None:
    # Given the refusal docs/pagerduty.md quotes as PagerDuty sends it (code deliberately
    # unusual: the numeric code is not confirmed, the text is what counts)
    body = envelope(
        "Invalid Input Provided",
        2001,
        ["Open incident with matching dedup key already exists on this service"],
    )

    error = classify_response(400, body, NO_HEADERS)

    assert isinstance(error, DuplicateIncidentKeyError)
    assert isinstance(error, PermanentError)
    assert error.status == 400


@pytest.mark.parametrize(
    "text",
    [
        "OPEN INCIDENT WITH MATCHING DEDUP KEY ALREADY EXISTS ON THIS SERVICE",
        "incident_key already exists",
        "Duplicate incident key",
    ],
)
def test_400_duplicate_key_text_is_matched_case_insensitively_in_message_too(text: str) -> None:
    error = classify_response(400, envelope(text), NO_HEADERS)

    assert isinstance(error, DuplicateIncidentKeyError)


def test_duplicate_key_text_on_another_status_is_not_a_duplicate() -> None:
    # Only a 400 means "refused because of the key"; a 500 mentioning it is still transient.
    body = envelope("boom", errors=["Open incident with matching dedup key already exists"])

    error = classify_response(500, body, NO_HEADERS)

    assert type(error) is RetryableError


# -- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [(401, 2006, "Authentication failed"), (403, 2010, "Access Denied")],
)
def test_401_and_403_are_credentials_errors(status: int, code: int, message: str) -> None:
    error = classify_response(status, envelope(message, code), NO_HEADERS)

    assert type(error) is CredentialsError
    assert (error.status, error.code, error.message) == (status, code, message)
    assert not isinstance(error, RetryableError | PermanentError)


# -- other permanent rows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (402, 2014, "Requested an entity not supported by account"),
        (404, 2100, "Not Found"),
        (413, None, "Request Entity Too Large"),
    ],
)
def test_402_404_413_are_permanent(status: int, code: int | None, message: str) -> None:
    error = classify_response(status, envelope(message, code), NO_HEADERS)

    assert type(error) is PermanentError
    assert error.status == status
    assert error.code == code


@pytest.mark.parametrize("status", [405, 409, 415, 422, 451])
def test_any_other_4xx_is_permanent(status: int) -> None:
    assert type(classify_response(status, b"", NO_HEADERS)) is PermanentError


# -- retryable rows --------------------------------------------------------------------------


def test_408_is_retryable() -> None:
    error = classify_response(408, b"", NO_HEADERS)

    assert type(error) is RetryableError
    assert error.status == 408
    assert error.retry_after is None


def test_429_with_ratelimit_reset_carries_retry_after() -> None:
    headers = {"ratelimit-limit": "960", "ratelimit-remaining": "0", "ratelimit-reset": "17"}
    body = envelope("Rate Limit Exceeded", 2020)

    error = classify_response(429, body, headers)

    assert type(error) is RetryableError
    assert error.retry_after == 17.0
    assert error.code == 2020
    assert "retry after 17 s" in str(error)


def test_429_with_retry_after_seconds_carries_retry_after() -> None:
    error = classify_response(429, b"", {"Retry-After": "30"})

    assert isinstance(error, RetryableError)
    assert error.retry_after == 30.0


def test_429_with_retry_after_http_date_carries_seconds_until_then() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    when = format_datetime(datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC), usegmt=True)

    error = classify_response(429, b"", {"Retry-After": when}, now=now)

    assert isinstance(error, RetryableError)
    assert error.retry_after == 55.0


def test_429_with_no_headers_and_no_body_is_still_retryable_and_readable() -> None:
    # docs/pagerduty.md: 429s may come with no headers and no body.
    error = classify_response(429, b"", NO_HEADERS)

    assert type(error) is RetryableError
    assert error.retry_after is None
    assert error.code is None
    assert str(error) == "PagerDuty HTTP 429: Too Many Requests (empty body)"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retryable(status: int) -> None:
    error = classify_response(status, envelope("Internal Server Error", 2000), NO_HEADERS)

    assert type(error) is RetryableError
    assert error.status == status


def test_503_with_retry_after_is_honoured() -> None:
    error = classify_response(503, b"", {"retry-after": "5"})

    assert isinstance(error, RetryableError)
    assert error.retry_after == 5.0


@pytest.mark.parametrize("status", [100, 301, 302, 304, 600])
def test_any_other_unexpected_status_is_retryable(status: int) -> None:
    error = classify_response(status, b"", NO_HEADERS)

    assert type(error) is RetryableError
    assert "unexpected HTTP status" in str(error)


# -- bodies that are not the envelope --------------------------------------------------------


def test_empty_body_gives_the_reason_phrase() -> None:
    error = classify_response(502, b"", NO_HEADERS)

    assert error is not None
    assert error.message == "Bad Gateway (empty body)"


def test_html_body_from_a_proxy_gives_its_title() -> None:
    body = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n"
    )

    error = classify_response(502, body, {"content-type": "text/html"})

    assert type(error) is RetryableError
    assert str(error) == "PagerDuty HTTP 502: Bad Gateway: 502 Bad Gateway"


def test_long_html_body_without_title_is_stripped_and_truncated_to_one_line() -> None:
    body = b"<html><style>p{}</style><body><p>" + b"oops " * 200 + b"</p></body></html>"

    error = classify_response(500, body, NO_HEADERS)

    assert error is not None
    assert "<" not in error.message
    assert "p{}" not in error.message
    assert len(error.message) <= len("Internal Server Error: ") + 200
    assert error.message.endswith("…")
    assert "\n" not in str(error)


def test_non_json_text_body_is_kept_as_a_one_line_snippet() -> None:
    error = classify_response(400, b"upstream said\nno", NO_HEADERS)

    assert type(error) is PermanentError
    assert error.message == "Bad Request: upstream said no"


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"text"',
        b'{"error": null}',
        b'{"error": {"message": 42, "code": "x", "errors": "single"}}',
        b"\xff\xfe\x00",
    ],
)
def test_odd_bodies_never_break_classification(body: bytes) -> None:
    error = classify_response(400, body, NO_HEADERS)

    assert type(error) is PermanentError
    assert error.message
    assert "\n" not in str(error)


def test_envelope_code_that_is_not_a_number_is_dropped() -> None:
    body = b'{"error": {"message": "bad", "code": true, "errors": ["a", null, 3]}}'

    error = classify_response(400, body, NO_HEADERS)

    assert error is not None
    assert error.code is None
    assert error.errors == ("a", "3")


# -- retry_after parsing edges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit-Reset": "3", "Retry-After": "60"}, 3.0),  # documented header wins
        ({"ratelimit-reset": "soon", "retry-after": "60"}, 60.0),  # unparseable falls through
        ({"ratelimit-reset": "-1"}, None),
        ({"ratelimit-reset": "nan"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": "0.5"}, 0.5),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


# -- transport failures --------------------------------------------------------------------------


class ConnectTimeout(Exception):
    """Stands in for httpx.ConnectTimeout: classification is by class name, not by import."""


class ReadTimeout(Exception):
    pass


class ConnectError(Exception):
    pass


class RemoteProtocolError(Exception):
    pass


def _raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectTimeout("timed out"), "connect timeout"),
        (ReadTimeout("The read operation timed out"), "read timeout"),
        (TimeoutError("timed out"), "timeout"),
        (ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (_raised_from(ConnectError("x"), ConnectionRefusedError(111, "no")), "connection refused"),
        (_raised_from(ConnectError("x"), socket.gaierror(-2, "Name or service not known")), "DNS"),
        (ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), "TLS error"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
        (RemoteProtocolError("Server disconnected without sending a response."), "connection clo"),
        (ConnectError("something else"), "connection failed"),
        (RuntimeError("???"), "network error"),
    ],
)
def test_transport_failures_are_retryable_and_say_which_kind(exc: Exception, kind: str) -> None:
    error = classify_transport_failure(exc)

    assert type(error) is RetryableError
    assert error.status is None
    assert error.retry_after is None
    assert str(error).startswith(f"PagerDuty: {kind}")
    assert type(exc).__name__ in str(error)


# -- the errors themselves ---------------------------------------------------------------------


def test_errors_survive_pickling_with_every_field() -> None:
    # Celery may move exceptions between processes through a result backend.
    error = RetryableError("Slow down", status=429, code=2020, errors=["x"], retry_after=2.0)

    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, just made

    assert type(copy) is RetryableError
    assert (copy.message, copy.status, copy.code, copy.errors, copy.retry_after) == (
        "Slow down",
        429,
        2020,
        ("x",),
        2.0,
    )
    assert repr(copy) == repr(error)


def test_repr_names_every_field() -> None:
    error = DuplicateIncidentKeyError("m", status=400, errors=["e"])

    assert repr(error) == (
        "DuplicateIncidentKeyError(message='m', status=400, code=None, errors=('e',))"
    )
    assert isinstance(error, PagerDutyError)


def test_malformed_success_is_retryable_with_a_snippet() -> None:
    error = classify_malformed_success(201, b"<html><title>Hi</title></html>", "no incident")

    assert type(error) is RetryableError
    assert str(error) == "PagerDuty HTTP 201: unreadable success answer, no incident: Hi"


@pytest.mark.parametrize(
    ("headers", "limit"),
    [
        ({"ratelimit-limit": "960"}, 960.0),
        ({"RateLimit-Limit": "600, 600;w=60"}, 600.0),
        ({"ratelimit-limit": "0"}, None),
        ({"ratelimit-limit": "lots"}, None),
        ({"ratelimit-limit": "inf"}, None),
        ({}, None),
    ],
)
def test_the_rate_limit_a_429_announces(headers: dict[str, str], limit: float | None) -> None:
    assert rate_limit_per_minute(headers) == limit
