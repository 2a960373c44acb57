"""The operator commands against a real PostgreSQL: status, alerts, alert, replay, prune, and
test-trigger against a running bridge."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent, make_engine, make_session_factory, utcnow
from tests.fakes import trigger_events
from tests.integration.conftest import Bridge, as_default_key, bridge_env, free_port, fresh_database
from tests.integration.test_cli import pagerbridge
from worker.pipeline.intake import apply_event
from worker.vocabulary import AlertStatus, DeliveryState

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_namespace() -> str:
    """The test's bridge: the gate's state (rate budget, breaker) and the rows it writes are
    this test's, not what the session's shared bridge left there."""
    return f"pagerbridge-cli-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def database(cli_namespace: str) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A fresh migrated database per test: the counts each test sees are its own; its rows are
    the test's bridge's, as the commands read them."""
    with fresh_database() as url:
        engine = make_engine(url)
        try:
            yield url, make_session_factory(engine, cli_namespace)
        finally:
            engine.dispose()


@pytest.fixture
def sessions(database: tuple[str, sessionmaker[Session]]) -> sessionmaker[Session]:
    return database[1]


@pytest.fixture
def env(
    database: tuple[str, sessionmaker[Session]], redis_url: str, cli_namespace: str
) -> dict[str, str]:
    namespace = cli_namespace
    # COLUMNS: rich draws the tables this wide, so a cell's text is not folded across lines.
    return {
        **bridge_env(database[0], redis_url, "http://127.0.0.1:9", namespace),
        "COLUMNS": "250",
    }


def receive(
    sessions: sessionmaker[Session], alert_id: str, action: AlertStatus, at: datetime
) -> None:
    """An event for ``alert_id`` as a worker applies it."""
    (event,) = trigger_events(alert_id, received_at=at, action=action)
    apply_event(sessions, event, at)


def deliver(
    sessions: sessionmaker[Session],
    alert_id: str,
    state: DeliveryState,
    *,
    error: str | None = None,
    **fields: Any,
) -> None:
    """Set where the latest cycle's delivery stands, recorded as the reconciler records it."""
    with sessions.begin() as session:
        alert = session.scalars(
            select(Alert).where(Alert.source_alert_id == alert_id).order_by(Alert.cycle.desc())
        ).first()
        assert alert is not None
        alert.delivery_state = state
        alert.last_error = error
        for name, value in fields.items():
            setattr(alert, name, value)
        session.add(
            AlertEvent(
                alert_pk=alert.id,
                source=alert.source,
                source_alert_id=alert_id,
                kind="delivery",
                outcome=state.value if error else "create",
                detail=error or "incident created",
            )
        )


def alert_state(sessions: sessionmaker[Session], alert_id: str) -> DeliveryState | None:
    with sessions() as session:
        return session.scalar(
            select(Alert.delivery_state)
            .where(Alert.source_alert_id == alert_id)
            .order_by(Alert.cycle.desc())
        )


# -- status -----------------------------------------------------------------------------------


def test_status_shows_states_oldest_pending_gate_and_last_error(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given an alert pending for ten minutes, one delivered, and one that failed
    now = utcnow()
    for alert_id in ("late", "fine", "broken"):
        receive(sessions, alert_id, AlertStatus.TRIGGERED, now - timedelta(minutes=10))
    deliver(sessions, "late", DeliveryState.PENDING, pending_since=now - timedelta(minutes=10))
    deliver(sessions, "fine", DeliveryState.DELIVERED, pagerduty_incident_id="PFINE")
    deliver(sessions, "broken", DeliveryState.FAILED, error="400 Invalid Input Provided")

    # When the operator asks for the status, as JSON and as a table
    result = pagerbridge("status", "--json", env=env, cwd=tmp_path)
    table = pagerbridge("status", env=env, cwd=tmp_path)

    # Then both say the same: counts, the oldest pending and its age, the gate, the last error
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["by_state"] == {"pending": 1, "delivered": 1, "parked": 0, "failed": 1}
    assert report["oldest_pending"]["alert"] == "coscale:late"
    assert 600 <= report["oldest_pending"]["age_seconds"] < 900
    assert report["pagerduty"]["breaker"] == "closed"
    assert report["pagerduty"]["rate_limit_tokens"] is None  # no call made yet
    assert report["last_pagerduty_error"]["alert"] == "coscale:broken"
    assert report["last_pagerduty_error"]["error"] == "400 Invalid Input Provided"
    assert table.returncode == 0, table.stderr
    for text in (
        "alerts pending",
        "coscale:late",
        "for 10m",
        "breaker",
        "closed",
        "rate budget",
        "full (no call yet)",
        "last PagerDuty error",
        "coscale:broken (failed): 400 Invalid Input Provided",
    ):
        assert text in table.stdout, (text, table.stdout)


# -- alerts -----------------------------------------------------------------------------------


def test_alerts_newest_first_filtered_and_limited(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given three alerts, oldest first: delivered, failed, pending
    now = utcnow()
    for alert_id in ("first", "second", "third"):
        receive(sessions, alert_id, AlertStatus.TRIGGERED, now)
    deliver(sessions, "first", DeliveryState.DELIVERED, pagerduty_incident_id="PFIRST")
    deliver(sessions, "second", DeliveryState.FAILED, error="x" * 300, attempts=7)

    # When they are listed
    everything = pagerbridge("alerts", "--json", env=env, cwd=tmp_path)
    failed = pagerbridge("alerts", "--state", "failed", "--json", env=env, cwd=tmp_path)
    newest = pagerbridge("alerts", "--limit", "1", "--json", env=env, cwd=tmp_path)
    table = pagerbridge("alerts", env=env, cwd=tmp_path)

    # Then newest first, only the failed one with --state, one with --limit 1
    assert everything.returncode == 0, everything.stderr
    rows = json.loads(everything.stdout)
    assert [row["alert_id"] for row in rows] == ["third", "second", "first"]
    assert rows[2]["pagerduty_incident_id"] == "PFIRST"
    [row] = json.loads(failed.stdout)
    assert (row["alert_id"], row["delivery_state"], row["attempts"]) == ("second", "failed", 7)
    assert row["last_error"] == "x" * 300  # JSON keeps it whole
    assert [row["alert_id"] for row in json.loads(newest.stdout)] == ["third"]
    # and the table shows the columns, the last error shortened
    assert table.returncode == 0, table.stderr
    for header in ("source", "alert id", "cycle", "desired", "confirmed", "state", "attempts"):
        assert header in table.stdout
    assert "PFIRST" in table.stdout and "x" * 59 + "…" in table.stdout
    assert "x" * 61 not in table.stdout


def test_alerts_with_an_unknown_state_is_a_usage_error(env: dict[str, str], tmp_path: Path) -> None:
    result = pagerbridge("alerts", "--state", "lost", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "--state" in result.stderr and "'lost' is not one of" in result.stderr


# -- alert ------------------------------------------------------------------------------------


def test_alert_shows_every_cycle_and_the_whole_timeline(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given an alert that fired, resolved and fired again: two cycles
    start = utcnow() - timedelta(minutes=5)
    receive(sessions, "flap", AlertStatus.TRIGGERED, start)
    deliver(sessions, "flap", DeliveryState.DELIVERED, pagerduty_incident_id="PONE")
    receive(sessions, "flap", AlertStatus.RESOLVED, start + timedelta(minutes=1))
    receive(sessions, "flap", AlertStatus.TRIGGERED, start + timedelta(minutes=2))
    deliver(
        sessions,
        "flap",
        DeliveryState.DELIVERED,
        pagerduty_incident_id="PTWO",
        pagerduty_incident_url="https://example.pagerduty.com/incidents/PTWO",
    )

    # When the operator looks at it
    result = pagerbridge("alert", "flap", "--json", env=env, cwd=tmp_path)
    table = pagerbridge("alert", "flap", "--source", "coscale", env=env, cwd=tmp_path)

    # Then both cycles, and every event in order, each with its cycle
    assert result.returncode == 0, result.stderr
    history = json.loads(result.stdout)
    assert history["source"] == "coscale"
    assert [c["pagerduty_incident_id"] for c in history["cycles"]] == ["PONE", "PTWO"]
    assert [(e["cycle"], e["kind"], e["action"], e["outcome"]) for e in history["timeline"]] == [
        (1, "received", "triggered", "opened"),
        (1, "delivery", None, "create"),
        (1, "received", "resolved", "advanced"),
        (2, "received", "triggered", "opened"),
        (2, "delivery", None, "create"),
    ]
    assert table.returncode == 0, table.stderr
    for text in (
        "coscale:flap: 2 cycle(s)",
        "PONE",
        "https://example.pagerduty.com/incidents/PTWO",
    ):
        assert text in table.stdout
    assert "timeline" in table.stdout and "opened" in table.stdout


def test_unknown_alert_says_so_and_exits_1(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    receive(sessions, "known", AlertStatus.TRIGGERED, utcnow())

    unknown = pagerbridge("alert", "unknown", env=env, cwd=tmp_path)
    other_source = pagerbridge("alert", "known", "--source", "api", env=env, cwd=tmp_path)

    assert unknown.returncode == 1
    assert "no alert 'unknown'" in unknown.stderr
    assert other_source.returncode == 1
    assert "from api" in other_source.stderr


# -- replay -----------------------------------------------------------------------------------


def test_replay_needs_ids_or_failed_but_not_both(env: dict[str, str], tmp_path: Path) -> None:
    neither = pagerbridge("replay", env=env, cwd=tmp_path)
    both = pagerbridge("replay", "--failed", "42", env=env, cwd=tmp_path)

    assert neither.returncode == 2 and "give the alert ids to replay, or --failed" in neither.stderr
    assert both.returncode == 2 and "not both" in both.stderr


def test_replay_by_id_then_every_failed_one(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given two failed alerts and a delivered one
    for alert_id in ("a", "b", "ok"):
        receive(sessions, alert_id, AlertStatus.TRIGGERED, utcnow())
    deliver(sessions, "a", DeliveryState.FAILED, error="gave up")
    deliver(sessions, "b", DeliveryState.FAILED, error="gave up")
    deliver(sessions, "ok", DeliveryState.DELIVERED)

    # When one is replayed by id, then every failed one, then unknown or delivered ids
    one = pagerbridge("replay", "a", env=env, cwd=tmp_path)
    rest = pagerbridge("replay", "--failed", env=env, cwd=tmp_path)
    unknown = pagerbridge("replay", "ok", "nope", env=env, cwd=tmp_path)

    # Then each put back what it named, and the ids it could not replay make it exit 1
    assert one.returncode == 0, one.stderr
    assert "replayed coscale:a" in one.stdout and "1 alert(s) put back" in one.stdout
    assert rest.returncode == 0, rest.stderr
    assert "replayed coscale:b" in rest.stdout and "coscale:a" not in rest.stdout
    assert alert_state(sessions, "a") is alert_state(sessions, "b") is DeliveryState.PENDING
    assert unknown.returncode == 1
    assert "0 alert(s) put back" in unknown.stdout
    assert "not replayed: nope" in unknown.stderr and "not replayed: ok" in unknown.stderr


# -- prune ------------------------------------------------------------------------------------


def test_prune_dry_run_counts_then_prune_deletes(
    env: dict[str, str], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given, with a retention of 7 days: a resolved alert untouched for 8 days, a failed one
    # as old, and a resolved one from yesterday
    env["PAGERBRIDGE_RETENTION_DAYS"] = "7"
    now = utcnow()
    for alert_id in ("old-resolved", "old-failed", "new-resolved"):
        receive(sessions, alert_id, AlertStatus.TRIGGERED, now - timedelta(days=9))
        receive(sessions, alert_id, AlertStatus.RESOLVED, now - timedelta(days=9))
    deliver(sessions, "old-resolved", DeliveryState.DELIVERED)
    deliver(sessions, "old-failed", DeliveryState.FAILED, error="gave up")
    deliver(sessions, "new-resolved", DeliveryState.DELIVERED)
    with sessions.begin() as session:
        for alert_id, age in (("old-resolved", 8), ("old-failed", 8), ("new-resolved", 1)):
            session.execute(
                update(Alert)
                .where(Alert.source_alert_id == alert_id)
                .values(updated_at=now - timedelta(days=age))
            )

    # When the operator counts, then prunes
    dry = pagerbridge("prune", "--dry-run", env=env, cwd=tmp_path)
    assert alert_state(sessions, "old-resolved") is DeliveryState.DELIVERED
    done = pagerbridge("prune", env=env, cwd=tmp_path)

    # Then the dry run counted what the prune deleted: the old resolved alert, its 3 events
    assert dry.returncode == 0, dry.stderr
    assert "would delete 1 alert(s) and 3 event(s)" in dry.stdout
    assert "(7 days ago)" in dry.stdout
    assert done.returncode == 0, done.stderr
    assert "deleted 1 alert(s) and 3 event(s)" in done.stdout
    assert alert_state(sessions, "old-resolved") is None
    assert alert_state(sessions, "old-failed") is DeliveryState.FAILED
    assert alert_state(sessions, "new-resolved") is DeliveryState.DELIVERED
    again = pagerbridge("prune", env=env, cwd=tmp_path)
    assert "deleted 0 alert(s)" in again.stdout


def test_operator_commands_on_an_unmigrated_database(env: dict[str, str], tmp_path: Path) -> None:
    env["PAGERBRIDGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    for command in (["status"], ["alerts"], ["alert", "1"], ["replay", "--failed"], ["prune"]):
        result = pagerbridge(*command, env=env, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "pagerbridge migrate" in result.stderr, command


# -- test-trigger -----------------------------------------------------------------------------


def test_test_trigger_opens_and_resolves_an_incident(bridge: Bridge, tmp_path: Path) -> None:
    # Given the running bridge (api, worker, beat, simulator)
    # When the operator presses "Test trigger"
    result = pagerbridge(
        "test-trigger", "--api-url", bridge.api_url, "--timeout", "30", env=bridge.env, cwd=tmp_path
    )

    # Then it reports the incident, which the simulator holds resolved, under the test alert
    assert result.returncode == 0, f"{result.stderr}\n{bridge.logs()}"
    assert "test trigger ok" in result.stdout
    incident_id = result.stdout.split()[1]
    [incident] = [i for i in bridge.simulator.state()["incidents"] if i["id"] == incident_id]
    assert incident["status"] == "resolved"
    assert as_default_key(str(incident["incident_key"])).startswith(
        "pagerbridge/coscale/pagerbridge-test-"
    )
    assert incident.get("html_url", "") in result.stdout


def test_test_trigger_with_a_token_the_api_refuses(bridge: Bridge, tmp_path: Path) -> None:
    env = {**bridge.env, "PAGERBRIDGE_INGRESS_TOKENS": "not-the-apis-token-0123456789abcdef"}
    result = pagerbridge(
        "test-trigger", "--api-url", bridge.api_url, "--timeout", "5", env=env, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "refused the ingress token (401)" in result.stderr


def test_test_trigger_without_an_api(env: dict[str, str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = pagerbridge("test-trigger", "--api-url", url, "--timeout", "2", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"the api at {url} is unreachable" in result.stderr


def test_status_with_redis_unreachable_says_so_and_fails(
    env: dict[str, str], tmp_path: Path
) -> None:
    unreachable = {**env, "PAGERBRIDGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = pagerbridge("status", env=unreachable, cwd=tmp_path)
    assert done.returncode == 1
    assert "Redis" in done.stdout and "does not answer" in done.stdout
    as_json = pagerbridge("status", "--json", env=unreachable, cwd=tmp_path)
    assert as_json.returncode == 1
    assert "does not answer" in json.loads(as_json.stdout)["redis"]["error"]


@pytest.mark.parametrize("command", [["status"], ["alerts"], ["alert", "42"]])
def test_a_missing_sqlite_file_is_an_error_naming_it_not_a_new_database(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    # Given an operator command run in a directory where the bridge's SQLite file is not
    missing = tmp_path / "elsewhere" / "pagerbridge.db"
    missing.parent.mkdir()
    done = pagerbridge(
        *command,
        env={**env, "PAGERBRIDGE_DATABASE_URL": "sqlite:///pagerbridge.db"},
        cwd=missing.parent,
    )
    # Then it says where it looked, and creates nothing there
    assert done.returncode != 0
    assert f"no database at {missing}" in done.stderr
    assert not missing.exists()
