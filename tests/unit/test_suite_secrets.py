"""The suite's own check that no log line holds a token (tests/conftest.py) sees what it must."""

from __future__ import annotations

import logging

import pytest

from tests import conftest, fakes
from tests.conftest import SUITE_SECRETS, secrets_in
from tests.integration import conftest as integration
from tests.integration import test_console_browser
from tests.unit import test_logs
from tests.unit.ingress import test_app as test_ingress
from tests.unit.ingress import test_console, test_hostile_input
from tests.unit.pagerduty import test_client as test_pagerduty_client
from worker.logs import REDACTED, RedactSecrets


def test_the_tokens_the_suite_configures_are_the_ones_checked() -> None:
    configured = {
        integration.INGRESS_TOKEN,
        integration.PAGERDUTY_TOKEN,
        test_ingress.TOKEN,
        fakes.TOKEN,
        test_pagerduty_client.TOKEN,
        test_logs.PAGERDUTY_TOKEN,
        *test_logs.INGRESS_TOKENS,
        *test_hostile_input.SECRETS,
        test_console.OPERATOR_TOKEN,
        test_console_browser.OPERATOR_TOKEN,
    }
    assert configured <= set(SUITE_SECRETS)


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("worker.x", logging.INFO, __file__, 1, message, args, None)


@pytest.mark.parametrize("where", ["message", "argument", "field", "traceback"])
def test_a_token_anywhere_in_a_record_is_found(where: str) -> None:
    secret = SUITE_SECRETS[0]
    record = _record("calling %s", "x")
    if where == "message":
        record = _record(f"Bearer {secret}")
    elif where == "argument":
        record = _record("calling %s", secret)
    elif where == "field":
        record.headers = {"Authorization": secret}
    else:
        try:
            raise RuntimeError(f"refused {secret}")
        except RuntimeError as exc:
            record.exc_info = (type(exc), exc, exc.__traceback__)
    assert secrets_in([conftest._as_written(record)])


def test_a_record_the_redacting_filter_saw_is_clean() -> None:
    secret = SUITE_SECRETS[1]
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError as exc:
        record = _record("token=%s", secret)
        record.exc_info = (type(exc), exc, exc.__traceback__)
    RedactSecrets([secret]).filter(record)
    written = conftest._as_written(record)
    assert REDACTED in written and not secrets_in([written])
