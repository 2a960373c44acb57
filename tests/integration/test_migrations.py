"""The Alembic schema and the SQLAlchemy models agree, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from models import Base, make_engine
from worker.ops.migrate import upgrade

pytestmark = pytest.mark.integration


def schema_differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migration_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade(url)
    assert schema_differences(url) == []


def test_postgres_migration_matches_models(postgres_url: str) -> None:
    # postgres_url is migrated by its fixture, exactly as `pagerbridge migrate` does
    assert schema_differences(postgres_url) == []
    engine = make_engine(postgres_url)
    try:
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("alerts")}
    finally:
        engine.dispose()
    assert {"ix_alerts_due", "ix_alerts_pagerduty_incident_id"} <= indexes


def test_upgrade_twice_is_harmless(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    upgrade(url)
    upgrade(url)
    assert schema_differences(url) == []
