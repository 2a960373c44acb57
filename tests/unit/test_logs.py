"""Logs: text or JSON lines, one line per delivery naming the alert and incident, and no token
in any line whoever logged it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.fakes import FakePagerDuty
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.logs import (
    HANDLER_NAME,
    REDACTED,
    JsonFormatter,
    RedactSecrets,
    configure_logging,
    log_handler,
)
from worker.pipeline.intake import apply_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.settings import Settings
from worker.vocabulary import AlertStatus

PAGERDUTY_TOKEN = "pd-Secr3t-token-value"
INGRESS_TOKENS = ("ingress-one-secret-0123456789abcdef", "ingress-two-secret-0123456789abcdef")
START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def settings(log_format: str = "text") -> Settings:
    return Settings(
        log_format=log_format,  # type: ignore[arg-type]
        pagerduty_token=PAGERDUTY_TOKEN,  # type: ignore[arg-type]
        ingress_tokens=",".join(INGRESS_TOKENS),  # type: ignore[arg-type]
    )


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the JSON handler ``configure_logging`` would install."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs")
    handler = log_handler(settings("json"), stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_time_level_logger_message_and_extra_fields(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    # When a line with extra fields is logged
    logger.warning("retry %s", "scheduled", extra={"alert": "coscale:42", "cycle": 2})

    # Then it is one JSON object with the base keys and the fields
    (line,) = lines(stream)
    assert line["level"] == "WARNING"
    assert line["logger"] == "tests.logs"
    assert line["message"] == "retry scheduled"
    assert (line["alert"], line["cycle"]) == ("coscale:42", 2)
    assert datetime.fromisoformat(str(line["time"])).tzinfo is not None


def test_json_lines_carry_the_traceback_and_odd_values(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    # When an exception is logged with a field JSON cannot hold as is
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed", extra={"at": START, "message_id": None})

    # Then the line is still JSON: the traceback in "exception", the date as text
    (line,) = lines(stream)
    assert "ValueError: boom" in str(line["exception"])
    assert line["at"] == str(START)
    assert line["message_id"] is None


def test_a_field_named_like_a_base_key_does_not_hide_it() -> None:
    record = logging.LogRecord("real", logging.INFO, __file__, 1, "hello", None, None)
    record.logger = "fake"
    assert json.loads(JsonFormatter().format(record))["logger"] == "real"


def test_text_format_is_the_classic_line() -> None:
    stream = io.StringIO()
    handler = log_handler(settings("text"), stream)
    record = logging.LogRecord(
        "worker.delivery.reconcile", logging.INFO, __file__, 1, "hi %s", ("x",), None
    )
    handler.handle(record)
    assert stream.getvalue().rstrip().endswith(" INFO worker.delivery.reconcile hi x")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_survives_a_log_line(log_format: str) -> None:
    # Given the handler of either format
    stream = io.StringIO()
    logger = logging.getLogger(f"tests.logs.redact.{log_format}")
    handler = log_handler(settings(log_format), stream)
    logger.addHandler(handler)
    try:
        # When every token reaches a line: in the message, its arguments, an extra field (plain
        # and nested), an exception's message, and a stack
        logger.error("token=%s", PAGERDUTY_TOKEN)
        logger.error(f"Authorization: Token token={INGRESS_TOKENS[0]}")
        logger.error("headers", extra={"auth": f"Bearer {INGRESS_TOKENS[1]}"})
        logger.error("request", extra={"data": {"headers": {"Authorization": PAGERDUTY_TOKEN}}})
        try:
            raise RuntimeError(f"refused {PAGERDUTY_TOKEN}")
        except RuntimeError:
            logger.exception("call failed")
        logger.error("where %s", INGRESS_TOKENS[0], stack_info=True)
    finally:
        logger.removeHandler(handler)

    # Then no token is in the output, and each place shows [redacted] (text lines do not show
    # extra fields)
    output = stream.getvalue()
    for token in (PAGERDUTY_TOKEN, *INGRESS_TOKENS):
        assert token not in output
    assert output.count(REDACTED) == {"text": 4, "json": 6}[log_format]
    assert "RuntimeError: refused" in output


def test_redaction_keeps_records_without_secrets_as_they_are() -> None:
    # Given a record whose message has no secret
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent %d calls", (3,), None)

    # When filtered
    assert RedactSecrets([PAGERDUTY_TOKEN]).filter(record)

    # Then its message and arguments are untouched (later handlers format it as usual)
    assert (record.msg, record.args) == ("sent %d calls", (3,))


def test_a_token_that_contains_another_is_redacted_whole() -> None:
    redact = RedactSecrets(["abc", "abcdef", ""]).redact
    assert redact("x abcdef y abc") == f"x {REDACTED} y {REDACTED}"


def test_a_malformed_logging_call_is_left_to_the_handler() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert RedactSecrets([PAGERDUTY_TOKEN]).filter(record)


def test_configure_logging_replaces_only_its_own_handler() -> None:
    # Given the root logger with someone else's handler (pytest's, here)
    root = logging.getLogger()
    others = [h for h in root.handlers if h.get_name() != HANDLER_NAME]
    level = root.level
    stream = io.StringIO()
    try:
        # When logging is configured twice, the second time for JSON
        configure_logging(settings("text"), stream)
        configure_logging(settings("json"), stream)
        logging.getLogger("tests.logs.configured").warning("hello %s", PAGERDUTY_TOKEN)
        ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]

        # Then there is one handler of ours, JSON, redacting; the others are still there
        assert len(ours) == 1
        assert [h for h in root.handlers if h.get_name() != HANDLER_NAME] == others
        assert json.loads(stream.getvalue())["message"] == f"hello {REDACTED}"
        assert logging.getLogger("httpx").level == logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_log_format_setting() -> None:
    assert Settings().log_format == "text"
    assert Settings(log_format="JSON").log_format == "json"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[arg-type]


# -- one line per delivery ----------------------------------------------------------------------


def test_each_delivery_step_is_one_line_with_alert_and_incident(
    sqlite_sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    # Given PagerDuty answers the first create 503, then works
    pagerduty = FakePagerDuty()
    pagerduty.fail_next("create", "503")
    reconciler = Reconciler(sqlite_sessions, pagerduty.client(), Settings(), clock=lambda: START)
    applied = apply_event(
        sqlite_sessions,
        AlertEventMessage(
            event_id=new_event_id(),
            source=SOURCE_COSCALE,
            alert_id="42",
            action=AlertStatus.TRIGGERED,
            received_at=START,
            title="CPU high",
            service_id="PSVC",
        ),
        START,
    )
    assert applied.alert_pk is not None

    # When a worker tries, then tries again
    with caplog.at_level(logging.INFO, logger="worker.delivery.reconcile"):
        assert reconciler.reconcile(applied.alert_pk) is ReconcileResult.RETRY
        assert reconciler.reconcile(applied.alert_pk) is ReconcileResult.DELIVERED

    # Then the retry, the create and the delivery are one line each, naming alert and incident
    records = [r for r in caplog.records if r.name == "worker.delivery.reconcile"]
    incident = pagerduty.incidents()[0]["id"]
    assert [getattr(r, "outcome", None) for r in records] == ["retry", "created", "delivered"]
    assert records[0].getMessage().startswith("retry scheduled alert=coscale:42 incident=None:")
    assert "503" in records[0].getMessage() and records[0].levelname == "WARNING"
    assert records[1].getMessage().startswith(f"created alert=coscale:42 incident={incident}:")
    assert records[2].getMessage().startswith(f"delivered alert=coscale:42 incident={incident}:")
    for record in records:
        assert getattr(record, "alert", None) == "coscale:42"
        assert getattr(record, "cycle", None) == 1
    assert [getattr(r, "incident", None) for r in records] == [None, incident, incident]
