"""Celery tasks: thin. Decode the message, call the plain functions, map failures to retries."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.signals import worker_ready
from celery_batches import Batches, SimpleRequest
from sqlalchemy.exc import InterfaceError, OperationalError

from models import utcnow
from worker.celery_app import (
    APPLY_EVENT_TASK,
    APPLY_ONE_EVENT_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    app,
)
from worker.event import AlertEventMessage
from worker.inbox import drain_inbox
from worker.intake import apply_events
from worker.reconcile import Reconciler
from worker.runtime import current_runtime
from worker.sweeper import due_alerts, wake_parked

log = logging.getLogger(__name__)

# Alerts per reconcile message: big enough for bulk updates and few round trips, small enough
# that several workers share a backlog.
RECONCILE_BATCH = 50
# Events per apply task at most, and how long the worker waits to fill a batch (seconds): short
# enough to add nothing noticeable to an alert's latency.
APPLY_BATCH = 100
APPLY_FLUSH_INTERVAL = 0.05
DATABASE_RETRY = 5  # seconds before an event that met a database outage is tried again

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


@app.task(
    name=APPLY_EVENT_TASK,
    base=Batches,
    flush_every=APPLY_BATCH,
    flush_interval=APPLY_FLUSH_INTERVAL,
    acks_late=True,
)
def apply_event_task(requests: list[SimpleRequest]) -> None:
    """Apply the events the worker took at once (an alert storm arrives as full batches, a
    quiet minute as batches of one), then reconcile their alerts together: one commit, and
    pending acknowledges and resolves leave as bulk updates."""
    events = []
    for request in requests:
        try:
            events.append(AlertEventMessage.from_message(request.args[0]))
        except (KeyError, TypeError, ValueError, IndexError):
            # Only our ingress writes this queue; a message it could not have written is
            # logged whole (it holds no secret) rather than retried forever.
            log.error("dropping an undecodable apply_event message: %r", request.args)
    runtime = current_runtime()
    try:
        applied = apply_events(runtime.sessions, events, utcnow())
    except _DATABASE_DOWN as exc:
        # Not acknowledged as lost: each event goes back on the queue to be tried again soon,
        # and this batch's messages are acknowledged only once those copies are queued.
        log.warning("database unavailable (%s); requeueing %d event(s)", exc, len(events))
        for event in events:
            apply_one_event_task.apply_async(args=[event.to_message()], countdown=DATABASE_RETRY)
        return
    alert_pks = [a.alert_pk for a in applied if a.needs_delivery and a.alert_pk is not None]
    if not alert_pks:
        return
    try:
        _reconciler().reconcile_many(alert_pks)
    except _DATABASE_DOWN as exc:
        # The events are applied and committed; their alerts are due for the sweeper in a few
        # seconds. Failing the batch would only hold its messages until the visibility timeout.
        log.warning("reconcile after apply failed (%s); the sweeper will retry", exc)


@app.task(name=APPLY_ONE_EVENT_TASK, bind=True, **_RETRY_POLICY)
def apply_one_event_task(self: Task, message: dict[str, Any]) -> None:
    """One event, retried with a backoff while the database is away (celery-batches ignores
    countdowns, so retries do not go back to the batch task)."""
    runtime = current_runtime()
    applied = apply_events(runtime.sessions, [AlertEventMessage.from_message(message)], utcnow())
    if applied[0].needs_delivery and applied[0].alert_pk is not None:
        _reconciler().reconcile(applied[0].alert_pk)


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
