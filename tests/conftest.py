"""Shared fixtures: databases, and the rule for services that are missing.

In CI (``CI=true``) a test that needs Redis, PostgreSQL or a worker fails when the service is
missing; elsewhere it is skipped with a message saying what to start.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import Base, make_engine, make_session_factory
from worker.logs import extra_fields

IN_CI = os.environ.get("CI", "").lower() == "true"

#: The tokens the suite configures (PagerDuty's and the ingress's). No log line a test produces,
#: in this process or in a pagerbridge process it starts (tests/integration/conftest.py), may
#: hold one: README, "Hostile input". tests/unit/test_suite_secrets.py checks that the modules
#: defining them still use these values.
SUITE_SECRETS = (
    "integration-ingress-token-0123456789",  # tests/integration/conftest.py
    "integration-pagerduty-token",
    "ingress-secret-1-0123456789abcdef01",  # tests/unit/ingress/test_app.py
    "unit-test-pagerduty-token",  # tests/fakes.py
    "u+Secr3tT0kenValue_xyz",  # tests/unit/pagerduty/test_client.py
    "pd-Secr3t-token-value",  # tests/unit/test_logs.py: logged on purpose, through redaction
    "ingress-one-secret-0123456789abcdef",
    "ingress-two-secret-0123456789abcdef",
    "hostile-ingress-token-7f3a9c-012345",  # tests/unit/ingress/test_hostile_input.py
    "hostile-rotated-token-91c2e4-0123456",
    "hostile-pagerduty-token-5d8b",
    "console-operator-token-0123456789abcdef",  # tests/unit/ingress/test_console.py
    "integration-operator-token-0123456789ab",  # tests/integration/test_console_browser.py
)


def secrets_in(lines: Iterable[str]) -> list[str]:
    """The lines that hold a suite secret, each cut around the first one found."""
    found = []
    for line in lines:
        for secret in SUITE_SECRETS:
            at = line.find(secret)
            if at != -1:
                found.append(line[max(0, at - 80) : at + len(secret) + 20])
                break
    return found


class _Collector(logging.Handler):
    """Keeps every record logged during a test. They are read after the test, when every
    handler (the redacting one of worker/logs.py among them) has seen them."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _as_written(record: logging.LogRecord) -> str:
    """All of a record a handler could write: message, fields, traceback, stack."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a malformed logging call: its parts, as they are
        parts = [str(record.msg), repr(record.args)]
    parts += [str(value) for value in extra_fields(record).values()]
    if record.exc_text:  # what the redacting filter left, when one ran
        parts.append(record.exc_text)
    elif record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


@pytest.fixture(scope="session", autouse=True)
def _log_at_info() -> Iterator[None]:
    """The suite's processes log at INFO, as the services do by default: lines below WARNING
    are produced too, and so checked for secrets. SQLAlchemy stays at WARNING (at INFO it logs
    every statement)."""
    root, sqlalchemy = logging.getLogger(), logging.getLogger("sqlalchemy")
    levels = root.level, sqlalchemy.level
    root.setLevel(logging.INFO)
    sqlalchemy.setLevel(logging.WARNING)
    yield
    root.setLevel(levels[0])
    sqlalchemy.setLevel(levels[1])


@pytest.fixture(autouse=True)
def _no_flap_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Resolves go at once unless a test asks for the flap window (PAGERBRIDGE_FLAP_WINDOW):
    most tests resolve an alert right after triggering it and look at the resolve."""
    from worker.settings import get_settings

    monkeypatch.setenv("PAGERBRIDGE_FLAP_WINDOW", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    """Fails the test (at teardown) whose log lines hold a suite secret."""
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        root.removeHandler(collector)
    leaked = secrets_in(_as_written(record) for record in collector.records)
    if leaked:
        pytest.fail(f"a log line holds a token: {leaked[:3]}", pytrace=False)


#: What a test that needs the service says to install and start (the Debian package names, as
#: .ci/run installs them), or which setting points the suite at one elsewhere.
REDIS_HOWTO = (
    "install the Debian package redis-server (`apt-get install redis-server`; macOS: "
    "`brew install redis`) and start it (`redis-server --daemonize yes`), or point "
    "PAGERBRIDGE_TEST_REDIS at one"
)
POSTGRES_HOWTO = (
    "install the Debian package postgresql (`apt-get install postgresql`), start it "
    "(`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) with trust "
    "auth for user postgres on 127.0.0.1, or point PAGERBRIDGE_TEST_POSTGRES at one"
)


def service_missing(message: str) -> None:
    """Fail in CI, skip elsewhere, always saying which service and how to start it."""
    if IN_CI:
        pytest.fail(f"required service missing in CI: {message}", pytrace=False)
    pytest.skip(f"service missing (set CI=true to make this a failure): {message}")


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A fresh SQLite file database with the schema, tuned as in production (WAL)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'bridge.db'}")
    Base.metadata.create_all(engine)
    yield make_session_factory(engine)
    engine.dispose()
