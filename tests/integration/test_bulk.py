"""models.bulk on a real PostgreSQL (arrays, unnest) and on SQLite (the portable forms): the
same rows and the same answers on both, and on PostgreSQL SQL that does not grow with the
batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, event, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent, InboxEvent, make_engine, make_session_factory, utcnow
from models.alert import ALERTS_TABLE
from models.bulk import (
    built_once,
    insert_rows,
    insert_rows_returning,
    is_one_of,
    keys_param,
    param_keys_one_of,
    param_one_of,
    update_rows,
)
from models.event import ALERT_EVENTS_TABLE
from tests.fakes import ListQueue
from tests.integration.conftest import fresh_database
from worker.delivery.reconcile import _RECONCILED
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import EventOutcome, apply_events
from worker.pipeline.message import AlertEventMessage
from worker.vocabulary import AlertStatus, DeliveryState

pytestmark = pytest.mark.integration

ALERTS = ALERTS_TABLE


@pytest.fixture(scope="module")
def postgres_sessions() -> Iterator[sessionmaker[Session]]:
    with fresh_database() as url:
        engine = make_engine(url)
        yield make_session_factory(engine)
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(
    request: pytest.FixtureRequest, postgres_sessions: sessionmaker[Session]
) -> sessionmaker[Session]:
    if request.param == "postgresql":
        return postgres_sessions
    return cast(sessionmaker[Session], request.getfixturevalue("sqlite_sessions"))


def _row(alert_id: str, **given: Any) -> dict[str, Any]:
    now = utcnow()
    values: dict[str, Any] = {
        "source": "coscale",
        "source_alert_id": alert_id,
        "cycle": 1,
        "incident_key": f"key-{alert_id}",
        "service_id": None,
        "title": f"title of {alert_id}",
        "details": None,
        "urgency": None,
        "title_from_trigger": True,
        "route": "default",
        "backend": "rest",
        "credential_id": None,
        "event_payload": None,
        "update_fields": None,
        "pagerduty_incident_id": None,
        "pagerduty_incident_number": None,
        "pagerduty_incident_url": None,
        "desired_status": AlertStatus.TRIGGERED,
        "confirmed_status": None,
        "delivery_state": DeliveryState.PENDING,
        "attempts": 0,
        "next_attempt_at": now + timedelta(seconds=10),
        "last_error": None,
        "create_sent_at": None,
        "pending_since": now,
        "opened_at": now,
        "resolve_received_at": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "status_read_at": None,
        "created_at": now,
        "updated_at": now,
    }
    values.update(given)
    return values


def test_inserted_rows_read_back_as_given_and_ids_follow_the_rows_order(
    sessions: sessionmaker[Session],
) -> None:
    run = uuid.uuid4().hex[:8]
    payload = {"summary": "disk full", "custom_details": {"used": [97, "%"], "ünï": None}}
    # Keys in descending order, so an answer in the database's own order would not fit.
    rows = [
        _row(
            f"{run}-{n:03d}",
            event_payload=payload if n % 2 else None,
            desired_status=AlertStatus.RESOLVED if n % 3 == 0 else AlertStatus.TRIGGERED,
            cycle=1 + n % 2,
        )
        for n in reversed(range(120))
    ]
    with sessions.begin() as session:
        ids = insert_rows_returning(
            session, ALERTS, rows, returning="id", key=("source", "source_alert_id", "cycle")
        )
    assert len(set(ids)) == len(rows)
    with sessions() as session:
        stored = {
            alert.id: alert for alert in session.scalars(select(Alert).where(Alert.id.in_(ids)))
        }
    for pk, row in zip(ids, rows, strict=True):
        alert = stored[pk]
        assert (alert.source_alert_id, alert.cycle) == (row["source_alert_id"], row["cycle"])
        assert alert.event_payload == row["event_payload"]
        assert alert.desired_status is row["desired_status"]
        assert alert.delivery_state is DeliveryState.PENDING
        assert alert.confirmed_status is None and alert.lease_owner is None
        assert alert.opened_at == row["opened_at"]


def test_rows_without_returning_read_back_as_given(sessions: sessionmaker[Session]) -> None:
    run = uuid.uuid4().hex[:8]
    rows = [
        {
            "event_id": f"{run}-{n}",
            "alert_pk": None,
            "source": "coscale",
            "source_alert_id": f"{run}-{n}",
            "kind": "received",
            "action": "triggered",
            "outcome": "opened",
            "detail": None if n % 2 else "a 'quoted' detail, with {braces}",
            "payload": {"n": n, "tags": ["a", "b"]} if n % 3 else None,
            "received_at": utcnow(),
            "created_at": utcnow(),
        }
        for n in range(75)
    ]
    with sessions.begin() as session:
        insert_rows(session, ALERT_EVENTS_TABLE, rows)
    with sessions() as session:
        stored = {
            e.event_id: e
            for e in session.scalars(select(AlertEvent).where(AlertEvent.event_id.like(f"{run}-%")))
        }
    assert len(stored) == len(rows)
    for row in rows:
        event = stored[row["event_id"]]
        assert (event.detail, event.payload) == (row["detail"], row["payload"])
        assert event.received_at == row["received_at"]


def test_updated_rows_change_only_the_columns_named(sessions: sessionmaker[Session]) -> None:
    run = uuid.uuid4().hex[:8]
    rows = [_row(f"{run}-{n}") for n in range(60)]
    with sessions.begin() as session:
        ids = insert_rows_returning(
            session, ALERTS, rows, returning="id", key=("source", "source_alert_id", "cycle")
        )
    later = utcnow() + timedelta(minutes=5)
    changes = [
        {
            "id": pk,
            "delivery_state": DeliveryState.DELIVERED if n % 2 else DeliveryState.PARKED,
            "pagerduty_incident_id": f"P{n}" if n % 2 else None,
            "pagerduty_incident_number": n if n % 2 else None,
            "next_attempt_at": None if n % 2 else later,
            "last_error": None if n % 2 else 'PagerDuty said "no"',
        }
        for n, pk in enumerate(ids)
        if n % 3  # a third of the rows are left alone
    ]
    with sessions.begin() as session:
        update_rows(session, ALERTS, list(reversed(changes)), key="id")
    with sessions() as session:
        stored = {a.id: a for a in session.scalars(select(Alert).where(Alert.id.in_(ids)))}
    changed = {change["id"]: change for change in changes}
    for pk, row in zip(ids, rows, strict=True):
        alert = stored[pk]
        assert alert.title == row["title"] and alert.desired_status is AlertStatus.TRIGGERED
        wanted = changed.get(pk, row)
        assert alert.delivery_state is wanted["delivery_state"]
        assert alert.pagerduty_incident_id == wanted["pagerduty_incident_id"]
        assert alert.pagerduty_incident_number == wanted["pagerduty_incident_number"]
        assert alert.next_attempt_at == wanted["next_attempt_at"]
        assert alert.last_error == wanted["last_error"]


def test_one_of_selects_exactly_the_rows_named(sessions: sessionmaker[Session]) -> None:
    run = uuid.uuid4().hex[:8]
    rows = [_row(f"{run}-{n}", source="coscale" if n % 2 else "api") for n in range(80)]
    with sessions.begin() as session:
        ids = insert_rows_returning(
            session, ALERTS, rows, returning="id", key=("source", "source_alert_id", "cycle")
        )
    wanted_ids = ids[::3]
    with sessions() as session:
        by_id = set(
            session.scalars(select(Alert.id).where(is_one_of(Alert.id, wanted_ids, session)))
        )
    assert by_id == set(wanted_ids)


_IDS_BUILT_ONCE = built_once(
    lambda postgres: select(Alert.id).where(param_one_of(Alert.id, "ids", postgres))
)
_KEYS_BUILT_ONCE = built_once(
    lambda postgres: select(Alert.source, Alert.source_alert_id).where(
        param_keys_one_of((Alert.source, Alert.source_alert_id), "keys", postgres)
    )
)


def test_statements_built_once_select_exactly_the_rows_named(
    sessions: sessionmaker[Session],
) -> None:
    """The same answers as is_one_of, from one statement object per kind of database, whatever
    the values bound to it; (source, id) pairs match as pairs (a source crossed with another
    row's id matches nothing)."""
    run = uuid.uuid4().hex[:8]
    rows = [_row(f"{run}-{n}", source="coscale" if n % 2 else "api") for n in range(40)]
    with sessions.begin() as session:
        ids = insert_rows_returning(
            session, ALERTS, rows, returning="id", key=("source", "source_alert_id", "cycle")
        )
    keys = [(r["source"], r["source_alert_id"]) for r in rows]
    crossed = [("api", rows[1]["source_alert_id"]), ("coscale", rows[0]["source_alert_id"])]
    with sessions() as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        statement = _IDS_BUILT_ONCE(session)
        assert _IDS_BUILT_ONCE(session) is statement
        for wanted in (ids[::3], ids[1:2], []):
            assert set(session.scalars(statement, {"ids": wanted})) == set(wanted)
        for wanted_keys in (keys[::5], keys[2:3]):
            found = session.execute(
                _KEYS_BUILT_ONCE(session),
                keys_param("keys", wanted_keys + crossed, 2, postgres),
            )
            assert {tuple(row) for row in found} == set(wanted_keys)


def test_an_inbox_batch_is_one_statement_committed_whole_or_not_at_all(
    sessions: sessionmaker[Session],
) -> None:
    """The api's inbox write: every row of the batch, committed before publish_many returns
    (another session sees them), in autocommit (no BEGIN or COMMIT round trips); a batch that
    fails stores none of its rows and still reaches the queue."""
    queue = ListQueue()
    inbox = DurableEventQueue(queue, sessions)
    run = uuid.uuid4().hex[:8]
    autocommitted: list[bool] = []
    engine = sessions.kw["bind"]

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO inbox_events"):
            requested = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            dbapi = conn.connection.dbapi_connection
            # psycopg says whether it will send BEGIN; sqlite3 gets no BEGIN from us either way.
            autocommitted.append(requested and getattr(dbapi, "autocommit", True) is True)

    def stored(prefix: str) -> int:
        with sessions() as session:
            return len(
                session.scalars(
                    select(InboxEvent.id).where(InboxEvent.event_id.startswith(prefix))
                ).all()
            )

    batch = _events(run, 20, AlertStatus.TRIGGERED)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert inbox.publish_many(batch) == "database+queue"
        assert stored(run) == 20
        # The last event again, after 5 new ones: the unique event id refuses the statement.
        again = _events(f"{run}-again", 5, AlertStatus.TRIGGERED) + batch[-1:]
        assert inbox.publish_many(again) == "queue"
        assert stored(f"{run}-again") == 0
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(queue.events) == 26
    assert autocommitted and all(autocommitted)


def _events(run: str, count: int, action: AlertStatus) -> list[AlertEventMessage]:
    return [
        AlertEventMessage(
            event_id=f"{run}-{action.value}-{n}",
            source="coscale",
            alert_id=f"{run}-{n % (count // 2 or 1)}",
            action=action,
            received_at=utcnow(),
            title=f"CPU high on web-{n}",
            details="cpu > 90%",
            service_id="PSERVICE",
        )
        for n in range(count)
    ]


def test_a_batch_applies_alike_on_postgresql_and_sqlite(
    postgres_sessions: sessionmaker[Session], sqlite_sessions: sessionmaker[Session]
) -> None:
    """The same batches (new alerts, repeats in one batch, redelivered events, acknowledges
    and resolves of alerts seen before) give the same outcomes on both databases."""
    run = uuid.uuid4().hex[:8]
    triggers = _events(run, 300, AlertStatus.TRIGGERED)
    later = _events(run, 90, AlertStatus.RESOLVED) + _events(run, 60, AlertStatus.ACKNOWLEDGED)
    outcomes = {}
    for name, sessions in (("postgresql", postgres_sessions), ("sqlite", sqlite_sessions)):
        first = apply_events(sessions, triggers, utcnow())
        second = apply_events(sessions, triggers[:40] + later, utcnow())
        outcomes[name] = [(applied.outcome, applied.needs_delivery) for applied in first + second]
        with sessions() as session:
            pks = {a.alert_pk for a in first + second}
            assert None not in pks
            assert (
                session.scalar(
                    select(Alert.id).where(Alert.id.in_(pks)).order_by(Alert.id.desc()).limit(1)
                )
                is not None
            )
    assert outcomes["postgresql"] == outcomes["sqlite"]
    counted = {outcome: 0 for outcome in EventOutcome}
    for outcome, _ in outcomes["postgresql"]:
        counted[outcome] += 1
    assert counted[EventOutcome.OPENED] == 150
    assert counted[EventOutcome.DUPLICATE] == 40
    assert counted[EventOutcome.ADVANCED] > 0


def test_postgresql_sends_the_same_sql_whatever_the_batch_size(
    postgres_sessions: sessionmaker[Session],
) -> None:
    """The point of the module: a query whose text changes with the batch size is parsed by
    psycopg and planned by the server again at each execution."""
    statements: list[str] = []
    engine = postgres_sessions.kw["bind"]

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        for size in (2, 30, 170):
            apply_events(
                postgres_sessions,
                _events(uuid.uuid4().hex[:8], size, AlertStatus.TRIGGERED),
                utcnow(),
            )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    inserts = {s for s in statements if s.startswith("INSERT INTO alerts")}
    selects = {s for s in statements if s.startswith("SELECT alerts.id")}
    assert len(inserts) == 1, inserts
    assert len(selects) == 1, selects


def test_a_value_too_long_for_its_column_is_refused_not_cut(
    postgres_sessions: sessionmaker[Session],
) -> None:
    """As a plain INSERT or UPDATE: the arrays travel as unbounded text, so the column's own
    length applies (an explicit cast to VARCHAR(n) would truncate silently)."""
    too_long = "x" * 300  # source_alert_id is VARCHAR(255)
    with pytest.raises(DataError), postgres_sessions.begin() as session:
        insert_rows(session, ALERTS, [_row(too_long)])
    run = uuid.uuid4().hex[:8]
    with postgres_sessions.begin() as session:
        (pk,) = insert_rows_returning(
            session, ALERTS, [_row(run)], returning="id", key=("source", "source_alert_id", "cycle")
        )
    with pytest.raises(DataError), postgres_sessions.begin() as session:
        update_rows(session, ALERTS, [{"id": pk, "lease_owner": too_long}], key="id")


def test_columns_named_like_reserved_words_are_quoted(sessions: sessionmaker[Session]) -> None:
    metadata = MetaData()
    table = Table(
        f"bulk_reserved_{uuid.uuid4().hex[:8]}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("order", String(20)),
        Column("user", String(20)),
        UniqueConstraint("order"),
    )
    engine = sessions.kw["bind"]
    metadata.create_all(engine)
    try:
        with sessions.begin() as session:
            ids = insert_rows_returning(
                session,
                table,
                [{"order": "b", "user": "x"}, {"order": "a", "user": "y"}],
                returning="id",
                key=("order",),
            )
            update_rows(session, table, [{"id": ids[1], "user": "z"}], key="id")
        with sessions() as session:
            rows = session.execute(select(table.c.order, table.c.user).order_by(table.c.order))
            assert [tuple(row) for row in rows] == [("a", "z"), ("b", "x")]
    finally:
        metadata.drop_all(engine)


def _plans_of(sessions: sessionmaker[Session], work: Any) -> list[str]:
    """The PostgreSQL plans, for the parameters given, of the statements ``work`` runs."""
    engine = sessions.kw["bind"]
    ran: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        ran.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with sessions() as session:
            work(session)
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    plans = []
    with sessions() as session:
        for statement, parameters in ran:
            if statement.startswith(("SELECT", "UPDATE")):
                lines = session.connection().exec_driver_sql(f"EXPLAIN {statement}", parameters)
                plans.append("\n".join(line for (line,) in lines))
    return plans


def test_a_batch_update_finds_its_rows_through_the_primary_key(
    postgres_sessions: sessionmaker[Session],
) -> None:
    """Planned for a batch's real size, ``UPDATE ... FROM unnest(...)`` chose to scan the whole
    alerts table and hash-join it (cheaper on paper than 100 index lookups, with a few thousand
    rows); the statement also names the keys with ``= ANY``, so a batch costs the same in any
    table."""
    run = uuid.uuid4().hex[:8]
    rows = [_row(f"{run}-{n}") for n in range(3000)]
    with postgres_sessions.begin() as session:
        ids = insert_rows_returning(
            session, ALERTS, rows, returning="id", key=("source", "source_alert_id", "cycle")
        )
        session.connection().exec_driver_sql("ANALYZE alerts")
    later = utcnow() + timedelta(minutes=1)

    def update(session: Session) -> None:
        # The columns the reconciler writes back (write_back adds updated_at).
        changes = [
            {
                "id": ids[n],
                **{name: rows[n][name] for name in _RECONCILED},
                "lease_owner": "w1",
                "lease_expires_at": later,
                "updated_at": later,
            }
            for n in range(1000, 1100)
        ]
        update_rows(session, ALERTS, changes, key="id")

    (plan,) = _plans_of(postgres_sessions, update)
    assert "Seq Scan on alerts" not in plan, plan
    assert "Index Scan using pk_alerts" in plan, plan
