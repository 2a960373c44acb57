"""The Alembic schema and the SQLAlchemy models agree, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from models import Base, make_engine
from worker.ops.migrate import upgrade
from worker.pipeline.intake import incident_key
from worker.vocabulary import DEFAULT_NAMESPACE

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


def test_existing_rows_join_the_default_namespace_with_their_incident_keys(
    tmp_path: Path,
) -> None:
    # Given a database at the revision before namespaces, with an open incident's alert
    url = f"sqlite:///{tmp_path / 'before.db'}"
    upgrade(url, "0006")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO alerts (source, source_alert_id, cycle, incident_key,"
                    " desired_status, delivery_state, attempts, title_from_trigger, opened_at,"
                    " created_at, updated_at) VALUES ('coscale', '42', 1,"
                    " 'pagerbridge/coscale/42/1', 'triggered', 'delivered', 1, 1,"
                    " '2026-01-01', '2026-01-01', '2026-01-01')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO inbox_events (event_id, message, created_at)"
                    " VALUES ('e1', '{}', '2026-01-01')"
                )
            )
        # When it is migrated
        upgrade(url)
        # Then the rows are the default namespace's, the incident key unchanged
        with engine.connect() as connection:
            alert = connection.execute(text("SELECT namespace, incident_key FROM alerts")).one()
            inbox = connection.execute(text("SELECT namespace FROM inbox_events")).one()
    finally:
        engine.dispose()
    assert tuple(alert) == (DEFAULT_NAMESPACE, "pagerbridge/coscale/42/1")
    assert tuple(inbox) == (DEFAULT_NAMESPACE,)
    # And the next cycle of the same alert in the default namespace gets the same key format
    assert incident_key("coscale", "42", 2) == "pagerbridge/coscale/42/2"
