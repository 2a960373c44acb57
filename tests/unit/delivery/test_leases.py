"""A reconcile's leases are renewed while it works, however slow PagerDuty is, and no longer once
it is done (worker/delivery/leases.py: LeaseKeeper)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, utcnow
from tests.fakes import FakePagerDuty, trigger_events
from worker.delivery.leases import LeaseKeeper
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.pipeline.intake import apply_events
from worker.settings import Settings

LEASE = 0.3  # seconds: renewed every 0.1 s


def _alert(sessions: sessionmaker[Session], alert_id: str) -> int:
    [applied] = apply_events(
        sessions, trigger_events(alert_id, received_at=datetime.now(UTC)), utcnow()
    )
    assert applied.alert_pk is not None
    return applied.alert_pk


def _lease(sessions: sessionmaker[Session], pk: int) -> tuple[str | None, datetime | None]:
    with sessions() as session:
        alert = session.scalars(select(Alert).where(Alert.id == pk)).one()
        return alert.lease_owner, alert.lease_expires_at


def test_leases_are_renewed_while_their_reconcile_runs_and_not_after(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pk, other = _alert(sqlite_sessions, "kept"), _alert(sqlite_sessions, "not-kept")
    first = utcnow()
    with sqlite_sessions.begin() as session:
        for alert_pk, holder in ((pk, "w1"), (other, "w2")):
            alert = session.get(Alert, alert_pk)
            assert alert is not None
            alert.lease_owner, alert.lease_expires_at = holder, first
    keeper = LeaseKeeper(sqlite_sessions, LEASE, utcnow)

    with keeper.keeping("w1"):
        time.sleep(LEASE * 1.5)  # past the lease's first end: renewed at least once
        owner, renewed = _lease(sqlite_sessions, pk)
    assert owner == "w1" and renewed is not None and renewed > first
    assert _lease(sqlite_sessions, other) == ("w2", first)  # not this process's reconcile

    # Done: the next renewal finds no reconcile and the thread ends; nothing is renewed again.
    time.sleep(LEASE)
    assert keeper._thread is None
    settled = _lease(sqlite_sessions, pk)
    time.sleep(LEASE)
    assert _lease(sqlite_sessions, pk) == settled


def test_a_call_slower_than_the_lease_keeps_the_alert_from_other_workers(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    pagerduty = FakePagerDuty()
    answer = pagerduty.handle

    def slow(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            time.sleep(LEASE * 2.5)
        return answer(request)

    settings = Settings(lease_seconds=LEASE)
    pagerduty.handle = slow  # type: ignore[method-assign]  # the next client's transport
    working = Reconciler(sqlite_sessions, pagerduty.client(), settings)
    pagerduty.handle = answer  # type: ignore[method-assign]
    elsewhere = Reconciler(sqlite_sessions, pagerduty.client(), settings)
    pk = _alert(sqlite_sessions, "slow")

    results: list[ReconcileResult] = []
    first = threading.Thread(target=lambda: results.append(working.reconcile(pk)))
    first.start()
    time.sleep(LEASE * 1.7)  # the call still in flight, its lease taken longer ago than LEASE
    assert elsewhere.reconcile(pk) is ReconcileResult.BUSY
    first.join(timeout=10)
    assert results == [ReconcileResult.DELIVERED]
    assert len(pagerduty.incidents()) == 1


def test_a_lease_lost_during_the_call_makes_the_alert_busy_not_an_error(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    """Renewals can fail (the database away a moment): if another worker took the alert while
    the call was out, its answer is left to that worker, and the reconcile says BUSY."""
    pagerduty = FakePagerDuty()
    answer = pagerduty.handle
    pk = _alert(sqlite_sessions, "taken")
    until = datetime(2100, 1, 1, tzinfo=UTC)

    def taken_over(request: httpx.Request) -> httpx.Response:
        with sqlite_sessions.begin() as session:
            alert = session.get(Alert, pk)
            assert alert is not None
            alert.lease_owner, alert.lease_expires_at = "another-worker", until
        return answer(request)

    pagerduty.handle = taken_over  # type: ignore[method-assign]
    reconciler = Reconciler(sqlite_sessions, pagerduty.client(), Settings())
    assert reconciler.reconcile(pk) is ReconcileResult.BUSY
    assert len(pagerduty.incidents()) == 1  # the call was made; its answer is not recorded here
    assert _lease(sqlite_sessions, pk) == ("another-worker", until)
    with sqlite_sessions() as session:
        alert = session.get(Alert, pk)
        assert alert is not None and alert.pagerduty_incident_id is None
