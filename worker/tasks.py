"""Celery tasks: thin. Decode the message, call the plain functions, map failures to retries."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.signals import worker_ready
from sqlalchemy.exc import InterfaceError, OperationalError

from models import utcnow
from worker.celery_app import APPLY_EVENT_TASK, RECONCILE_TASK, SWEEP_TASK, app
from worker.event import AlertEventMessage
from worker.inbox import drain_inbox
from worker.intake import apply_event
from worker.reconcile import Reconciler
from worker.runtime import current_runtime
from worker.sweeper import due_alerts, wake_parked

log = logging.getLogger(__name__)

# Alerts per reconcile message: big enough for bulk updates and few round trips, small enough
# that several workers share a backlog.
RECONCILE_BATCH = 50

# The database being away delays work, it must not lose it: the message is retried (a fresh
# message, acked only once the retry is queued) with a backoff capped well below the broker's
# visibility timeout.
_DATABASE_DOWN = (OperationalError, InterfaceError)
_RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": _DATABASE_DOWN,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "max_retries": None,
}


def queue_reconcile(alert_pks: list[int]) -> None:
    """Queue alerts for reconciling, in batches, keeping their order (oldest first)."""
    for start in range(0, len(alert_pks), RECONCILE_BATCH):
        reconcile_task.delay(alert_pks[start : start + RECONCILE_BATCH])


def _reconciler() -> Reconciler:
    return current_runtime().reconciler(requeue=queue_reconcile)


@app.task(name=APPLY_EVENT_TASK, bind=True, **_RETRY_POLICY)
def apply_event_task(self: Task, message: dict[str, Any]) -> None:
    runtime = current_runtime()
    event = AlertEventMessage.from_message(message)
    applied = apply_event(runtime.sessions, event, utcnow())
    if applied.needs_delivery and applied.alert_pk is not None:
        _reconciler().reconcile(applied.alert_pk)


@app.task(name=RECONCILE_TASK, bind=True, **_RETRY_POLICY)
def reconcile_task(self: Task, alert_pks: list[int] | int) -> None:
    _reconciler().reconcile_many([alert_pks] if isinstance(alert_pks, int) else alert_pks)


@app.task(name=SWEEP_TASK, bind=True)
def sweep_task(self: Task) -> int:
    runtime = current_runtime()
    try:
        status = runtime.gate.status()
        gate_open = not (status.breaker_open or status.credentials_error)
    except redis.RedisError:
        gate_open = True
    from_inbox = [
        applied.alert_pk
        for applied in drain_inbox(runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch)
        if applied.needs_delivery and applied.alert_pk is not None
    ]
    queue_reconcile(list(dict.fromkeys(from_inbox)))
    alert_pks = due_alerts(
        runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch, gate_open=gate_open
    )
    queue_reconcile(alert_pks)
    if alert_pks:
        log.info("sweeper queued %d due alert(s)", len(alert_pks))
    return len(alert_pks)


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """A (re)started worker may bring a fixed token: forget a credentials refusal and look at
    every parked alert again now, instead of at the next credentials probe."""
    runtime = current_runtime()
    try:
        runtime.gate.forget_credentials()
        woken = wake_parked(runtime.sessions, utcnow())
    except Exception:  # a start-up nicety; the sweeper and probes cover it anyway
        log.exception("could not wake parked alerts at start")
        return
    if woken:
        log.info("woke %d parked alert(s) at worker start", woken)
