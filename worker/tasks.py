"""Celery tasks: thin. Decode the message, call the plain functions, map failures to retries."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from models import utcnow
from worker.celery_app import APPLY_EVENT_TASK, RECONCILE_TASK, SWEEP_TASK, app
from worker.event import AlertEventMessage
from worker.intake import apply_event
from worker.runtime import current_runtime
from worker.sweeper import due_alerts

log = logging.getLogger(__name__)

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


@app.task(name=APPLY_EVENT_TASK, bind=True, **_RETRY_POLICY)
def apply_event_task(self: Task, message: dict[str, Any]) -> None:
    runtime = current_runtime()
    event = AlertEventMessage.from_message(message)
    applied = apply_event(runtime.sessions, event, utcnow())
    if applied.needs_delivery and applied.alert_pk is not None:
        runtime.reconciler.reconcile(applied.alert_pk)


@app.task(name=RECONCILE_TASK, bind=True, **_RETRY_POLICY)
def reconcile_task(self: Task, alert_pk: int) -> None:
    current_runtime().reconciler.reconcile(alert_pk)


@app.task(name=SWEEP_TASK, bind=True)
def sweep_task(self: Task) -> int:
    runtime = current_runtime()
    alert_pks = due_alerts(runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch)
    for alert_pk in alert_pks:
        reconcile_task.delay(alert_pk)
    if alert_pks:
        log.info("sweeper queued %d due alert(s)", len(alert_pks))
    return len(alert_pks)
