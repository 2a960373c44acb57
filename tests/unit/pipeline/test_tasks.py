"""The apply task's own steps (worker/pipeline/tasks.py), with SQLite and a fake PagerDuty in
place of the process's runtime: which alerts it reconciles itself, which it queues, and that
the ones it reconciles were leased and planned by the transaction that applied their events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert
from tests.fakes import FakePagerDuty, count_plans, trigger_events
from worker.delivery.reconcile import Reconciler
from worker.pipeline import tasks
from worker.pipeline.celery_app import (
    APPLY_EVENT_TASK,
    APPLY_ONE_EVENT_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    create_celery,
    delivery_queue,
    intake_queue,
)
from worker.settings import Settings
from worker.vocabulary import DeliveryState


@dataclass
class Request:
    """What the task reads of celery-batches' SimpleRequest."""

    args: tuple[Any, ...]


def _message(*alert_ids: str) -> Request:
    events = trigger_events(*alert_ids, received_at=datetime.now(UTC))
    return Request(([event.to_message() for event in events],))


@pytest.fixture
def setup(
    sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> SimpleNamespace:
    pagerduty = FakePagerDuty()
    reconciler = Reconciler(sqlite_sessions, pagerduty.client(), Settings())
    queued: list[list[int]] = []
    planned = count_plans(reconciler, monkeypatch)
    monkeypatch.setattr(tasks, "current_runtime", lambda: SimpleNamespace(sessions=sqlite_sessions))
    monkeypatch.setattr(tasks, "_reconciler", lambda: reconciler)
    monkeypatch.setattr(tasks, "queue_reconcile", queued.extend)
    return SimpleNamespace(pagerduty=pagerduty, queued=queued, planned=planned)


def test_the_task_reconciles_the_first_alerts_it_applied_claimed_and_queues_the_rest(
    setup: SimpleNamespace,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RECONCILE_INLINE", 5)
    tasks.apply_event_task([_message("a0", "a1", "a2"), _message("a3", "a4", "a5", "a6")])
    with sqlite_sessions() as session:
        rows = {a.source_alert_id: a for a in session.scalars(select(Alert))}
    inline = {f"a{n}" for n in range(5)}
    # The first five: delivered by this task, with no planning transaction of their own
    assert setup.planned == []
    assert {k for k, a in rows.items() if a.delivery_state is DeliveryState.DELIVERED} == inline
    assert len(setup.pagerduty.incidents()) == 5
    # The rest: queued for any worker, unleased
    assert setup.queued == [rows["a5"].id, rows["a6"].id]
    assert {rows[k].lease_owner for k in ("a5", "a6")} == {None}


def test_the_task_still_reconciles_what_it_claimed_when_queueing_the_rest_fails(
    setup: SimpleNamespace,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RECONCILE_INLINE", 2)

    def broker_down(alert_pks: list[int]) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(tasks, "queue_reconcile", broker_down)
    with pytest.raises(ConnectionError):
        tasks.apply_event_task([_message("b0", "b1", "b2")])
    with sqlite_sessions() as session:
        rows = {a.source_alert_id: a for a in session.scalars(select(Alert))}
    # The two it had leased are delivered and released, not left leased until expiry
    assert [rows[k].delivery_state for k in ("b0", "b1")] == [DeliveryState.DELIVERED] * 2
    assert {rows[k].lease_owner for k in ("b0", "b1", "b2")} == {None}
    assert rows["b2"].delivery_state is DeliveryState.PENDING  # the sweeper's, in a few seconds


def test_a_worker_serving_the_intake_queue_alone_queues_every_alert_and_calls_nobody(
    setup: SimpleNamespace,
    sqlite_sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker started with `--queues intake` (Celery's -Q selects what it consumes)
    queues = tasks.app.amqp.queues
    monkeypatch.setattr(queues, "_consume_from", None)  # restored after the test
    queues.select([intake_queue(Settings().namespace)])
    assert not tasks._delivers_here()
    # When it applies a batch
    tasks.apply_event_task([_message("c0", "c1", "c2")])
    with sqlite_sessions() as session:
        rows = {a.source_alert_id: a for a in session.scalars(select(Alert))}
    # Then nothing waited on PagerDuty here: every alert is queued for the delivery workers,
    # none leased, none called
    assert setup.pagerduty.incidents() == []
    assert setup.queued == [rows[k].id for k in ("c0", "c1", "c2")]
    assert {a.lease_owner for a in rows.values()} == {None}
    assert {a.delivery_state for a in rows.values()} == {DeliveryState.PENDING}


def test_events_are_routed_to_the_intake_queue_and_deliveries_to_the_delivery_queue() -> None:
    app = create_celery(Settings(namespace="ns"))
    router = app.amqp.router
    assert router.route({}, APPLY_EVENT_TASK)["queue"].name == intake_queue("ns") == "ns.intake"
    assert router.route({}, APPLY_ONE_EVENT_TASK)["queue"].name == "ns.intake"
    assert router.route({}, RECONCILE_TASK)["queue"].name == delivery_queue("ns") == "ns"
    assert router.route({}, SWEEP_TASK)["queue"].name == "ns"
