"""Celery tasks: thin. Decode the message, call the plain functions, map failures to retries."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.signals import worker_init, worker_process_init, worker_ready
from celery_batches import Batches, SimpleRequest
from sqlalchemy.exc import InterfaceError, OperationalError

from models import utcnow
from worker.delivery.leases import release_dead_leases
from worker.delivery.reconcile import Reconciler
from worker.pagerduty.http_client import tls_context
from worker.pipeline.celery_app import (
    APPLY_EVENT_TASK,
    APPLY_ONE_EVENT_TASK,
    PRUNE_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
    app,
    delivery_queue,
)
from worker.pipeline.inbox import drain_inbox
from worker.pipeline.intake import apply_events
from worker.pipeline.message import AlertEventMessage
from worker.pipeline.responders import apply_stored_deliveries, prune_deliveries
from worker.pipeline.runtime import current_runtime
from worker.pipeline.sweeper import due_alerts, wake_parked
from worker.settings import get_settings
from worker.startup import freeze_startup_objects

log = logging.getLogger(__name__)

# Alerts per reconcile message: big enough for bulk updates and few round trips, small enough
# that several workers share a backlog.
RECONCILE_BATCH = 50
# Messages per apply task at most (each holds up to 200 events, worker/ingress/group_commit.py).
# celery-batches hands the messages taken to the pool every PAGERBRIDGE_APPLY_BATCH_WINDOW
# (``flush_interval``), or as soon as this many wait (``flush_every``): in an alert storm the
# messages that arrive while the pool is busy go together, and a batch costs its transactions
# and its Celery round trip whatever its size. A lone message waits for the window's end.
APPLY_BATCH = 100
# Events per transaction: the ingress packs up to 200 events in a message, so a full batch of
# messages is tens of thousands of events, too many for one transaction's locks.
APPLY_CHUNK = 500
# Alerts an apply task reconciles itself; the rest of its batch goes out as reconcile tasks.
RECONCILE_INLINE = 100
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
    flush_interval=get_settings().apply_batch_window,
    acks_late=True,
)
def apply_event_task(requests: list[SimpleRequest]) -> None:
    """Apply the events the worker took at once (an alert storm arrives as full batches, a
    quiet minute as batches of one), then reconcile their alerts together: one commit, and
    pending acknowledges and resolves leave as bulk updates."""
    events = []
    for request in requests:
        try:
            events.extend(_decoded(request.args[0]))
        except (KeyError, TypeError, ValueError, IndexError):
            # Only our ingress writes this queue; a message it could not have written is
            # logged whole (it holds no secret) rather than retried forever.
            log.error("dropping an undecodable apply_event message: %r", request.args)
    runtime = current_runtime()
    reconciler = _reconciler()
    # The first chunk's transaction also takes the first step of reconciling the alerts this
    # task reconciles itself (their leases, their first plans): see BatchClaim. A worker that
    # serves the intake queue alone hands every alert to the delivery workers instead: waiting
    # here on PagerDuty's rate limit would hold back the events behind these.
    inline = RECONCILE_INLINE if _delivers_here() else 0
    claim = reconciler.claim(inline) if inline else None
    applied = []
    for start in range(0, len(events), APPLY_CHUNK):
        try:
            chunk = events[start : start + APPLY_CHUNK]
            applied += apply_events(
                runtime.sessions, chunk, utcnow(), claim=claim if start == 0 else None
            )
        except _DATABASE_DOWN as exc:
            # Not acknowledged as lost: each event not yet applied goes back on the queue to be
            # tried again soon, and this batch's messages are acknowledged only once those
            # copies are queued.
            left = events[start:]
            log.warning("database unavailable (%s); requeueing %d event(s)", exc, len(left))
            for event in left:
                apply_one_event_task.apply_async(
                    args=[event.to_message()], countdown=DATABASE_RETRY
                )
            break
    alert_pks = [a.alert_pk for a in applied if a.needs_delivery and a.alert_pk is not None]
    claimed = list(claim.first_calls()) if claim is not None else []
    alert_pks = list(dict.fromkeys([*claimed, *alert_pks]))
    if not alert_pks:
        return
    # A storm's batch holds thousands of alerts: reconcile the first ones here (the claim's
    # own limit: every claimed alert is among them) and hand the rest to the queue, so every
    # worker process shares them and no task nears its time limit.
    if not inline:
        queue_reconcile(alert_pks)
        return
    try:
        queue_reconcile(alert_pks[inline:])
    finally:
        # Even when the queue failed: the claimed alerts are leased to this task.
        try:
            reconciler.reconcile_many(alert_pks[:inline], claim=claim)
        except _DATABASE_DOWN as exc:
            # The events are applied and committed; their alerts are due for the sweeper in a
            # few seconds. Failing the batch would only hold its messages until the visibility
            # timeout.
            log.warning("reconcile after apply failed (%s); the sweeper will retry", exc)


def _decoded(message: dict[str, Any] | list[dict[str, Any]]) -> list[AlertEventMessage]:
    """The events of one apply message: the ingress sends one per batch of requests (a list);
    before it did, one per request (a dict), and a queue may still hold those."""
    if isinstance(message, list):
        return [AlertEventMessage.from_message(body) for body in message]
    return [AlertEventMessage.from_message(message)]


@app.task(name=APPLY_ONE_EVENT_TASK, bind=True, **_RETRY_POLICY)
def apply_one_event_task(self: Task, message: dict[str, Any]) -> None:
    """One event, retried with a backoff while the database is away (celery-batches ignores
    countdowns, so retries do not go back to the batch task)."""
    runtime = current_runtime()
    applied = apply_events(runtime.sessions, [AlertEventMessage.from_message(message)], utcnow())
    if applied[0].needs_delivery and applied[0].alert_pk is not None:
        if _delivers_here():
            _reconciler().reconcile(applied[0].alert_pk)
        else:
            queue_reconcile([applied[0].alert_pk])


def _delivers_here() -> bool:
    """Whether this worker serves the delivery queue as well as the intake queue (Celery's
    ``-Q``: the queues a worker consumes, ``app.amqp.queues.consume_from``)."""
    return delivery_queue(get_settings().namespace) in app.amqp.queues.consume_from


@app.task(name=RECONCILE_TASK, bind=True, **_RETRY_POLICY)
def reconcile_task(self: Task, alert_pks: list[int] | int) -> None:
    _reconciler().reconcile_many([alert_pks] if isinstance(alert_pks, int) else alert_pks)


@app.task(name=SWEEP_TASK, bind=True)
def sweep_task(self: Task) -> int:
    runtime = current_runtime()
    closed_routes = set()
    for route, gate in runtime.gates().items():
        try:
            status = gate.status()
        except redis.RedisError:
            continue  # as if open: the gate lets calls through while Redis is away
        if status.breaker_open or status.credentials_error:
            closed_routes.add(route)
    from_inbox = [
        applied.alert_pk
        for applied in drain_inbox(runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch)
        if applied.needs_delivery and applied.alert_pk is not None
    ]
    queue_reconcile(list(dict.fromkeys(from_inbox)))
    apply_stored_deliveries(runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch)
    alert_pks = due_alerts(
        runtime.sessions, utcnow(), limit=runtime.settings.sweep_batch, closed_routes=closed_routes
    )
    queue_reconcile(alert_pks)
    if alert_pks:
        log.info("sweeper queued %d due alert(s)", len(alert_pks))
    return len(alert_pks)


@worker_init.connect
def _before_the_pool_forks(**_: Any) -> None:
    """In the worker's main process: what every pool process would otherwise build for itself
    in its first task, built once and inherited."""
    tls_context()


@worker_process_init.connect
def _prepare_pool_process(**_: Any) -> None:
    """In each pool process, before it takes a task: its runtime (engine, session factory,
    PagerDuty clients, delivery gates, routes) is built now rather than in the first task, which
    paid for it (an alert storm after a restart meets every pool process's first task at once).
    Nothing here touches the network: Celery kills a pool process that is not up within
    ``worker_proc_alive_timeout`` (4 s), and a database or Redis that is away must not stop the
    pool from starting. Then the process's start-up objects are frozen (worker/startup.py)."""
    try:
        _reconciler()
    except Exception:  # a misconfiguration the first task reports again, with its alert
        log.exception("could not prepare this worker process before its first task")
    freeze_startup_objects()


@worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """A (re)started worker may bring a fixed token: forget a credentials refusal and look at
    every parked alert again now, instead of at the next credentials probe."""
    runtime = current_runtime()
    try:
        for gate in runtime.gates().values():
            gate.forget_credentials()
        woken = wake_parked(runtime.sessions, utcnow())
        # A worker killed outright on this machine (the one this start replaces, often) left
        # its alerts leased: hand them out now rather than when the leases expire.
        queue_reconcile(release_dead_leases(runtime.sessions, utcnow()))
    except Exception:  # a start-up nicety; the sweeper and probes cover it anyway
        log.exception("could not wake parked alerts at start")
        return
    if woken:
        log.info("woke %d parked alert(s) at worker start", woken)


# Seconds a scheduled prune may spend starting batches: well inside the task time limit
# (TASK_TIME_LIMIT, 120 s), so a large first prune spreads over a few hourly runs instead of
# being killed mid-batch.
PRUNE_TIME_BUDGET = 60.0


@app.task(name=PRUNE_TASK)
def prune_task() -> dict[str, Any]:
    """Delete alerts delivered and resolved more than PAGERBRIDGE_RETENTION_DAYS ago, and keep
    the quarantine of rejected requests within its bounds (each write also does)."""
    from worker.ops import rejected as quarantine
    from worker.pipeline.retention import prune, retention_cutoff

    runtime = current_runtime()
    settings = runtime.settings
    with runtime.sessions.begin() as session:
        rejected = quarantine.prune(
            session,
            quarantine.QuarantineBounds(
                settings.quarantine_max_rows, settings.quarantine_max_age_days
            ),
            utcnow(),
        )
    if rejected:
        log.info("pruned %d rejected request(s) past the quarantine's bounds", rejected)
    deliveries = prune_deliveries(
        runtime.sessions, retention_cutoff(utcnow(), runtime.settings.retention_days)
    )
    if deliveries:
        log.info("pruned %d applied PagerDuty webhook deliveries", deliveries)
    result = prune(
        runtime.sessions,
        retention_cutoff(utcnow(), runtime.settings.retention_days),
        time_budget=PRUNE_TIME_BUDGET,
    )
    if result.alerts:
        log.info(
            "pruned %d alert(s) and %d event(s) last updated before %s%s",
            result.alerts,
            result.events,
            result.cutoff.isoformat(),
            "" if result.complete else "; more left for the next run",
        )
    return {**result.as_dict(), "rejected_requests": rejected}
