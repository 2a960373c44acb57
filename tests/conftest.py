"""Shared fixtures: databases, and the rule for services that are missing.

In CI (``CI=true``) a test that needs Redis, PostgreSQL or a worker fails when the service is
missing; elsewhere it is skipped with a message saying what to start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import Base, make_engine, make_session_factory

IN_CI = os.environ.get("CI", "").lower() == "true"


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
