"""The Celery application: Redis broker, at-least-once delivery, no result backend."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

# Imported for their Celery signal receivers: worker and beat log through our handler (format,
# token redaction), and a worker serves its metrics port (worker/logs.py, worker/metrics.py).
from worker import logs, metrics  # noqa: F401
from worker.settings import Settings, get_settings
from worker.startup import freeze_startup_objects

APPLY_EVENT_TASK = "pagerbridge.apply_event"
APPLY_ONE_EVENT_TASK = "pagerbridge.apply_one_event"
RECONCILE_TASK = "pagerbridge.reconcile"
SWEEP_TASK = "pagerbridge.sweep"
PRUNE_TASK = "pagerbridge.prune"
# The tasks that fold events into the mapping. They have a queue of their own, so that a worker
# serving it alone (`pagerbridge worker --queues intake`) applies a resolve as it arrives while
# the delivery workers wait on PagerDuty's rate limit (docs/storms.md).
INTAKE_TASKS = (APPLY_EVENT_TASK, APPLY_ONE_EVENT_TASK)

# How often beat runs the retention prune, seconds. Hourly: alerts are kept for days, so an
# hour more costs nothing, and each run is short (worker/pipeline/retention.py).
PRUNE_INTERVAL = 3600

# A task runs a few PagerDuty calls of at most ~15 s each; past this it is stuck.
TASK_TIME_LIMIT = 120  # seconds
# kombu's Redis transport, as shipped (kombu.transport.redis, "Transport Options"). With
# ``ack_emulation`` (its default, stated here because delivery depends on it) every message a
# worker takes is copied into Redis (the ``unacked`` hash, indexed by the time it was taken)
# until it is acknowledged, so a worker killed with SIGKILL loses none of what it held: any
# live worker puts a copy back on its queue once it is older than ``visibility_timeout``. The
# timeout must exceed a task's run time plus its wait in the worker's prefetch buffer (else a
# slow task runs twice, harmlessly but wastefully); retries wait in SQL, not in countdowns near
# it. Events also in the inbox table come back sooner through the sweeper
# (worker/pipeline/inbox.py).
VISIBILITY_TIMEOUT = 300  # seconds
BROKER_TRANSPORT_OPTIONS = {
    "ack_emulation": True,
    "visibility_timeout": VISIBILITY_TIMEOUT,
    # A worker looks for copies past the timeout every ``unacked_restore_interval`` (10 s) times
    # this. kombu's default (10) looks only every 100 s, delaying a redelivery by as much; a look
    # is three commands.
    "unacked_restore_throttle": 1,
}


def delivery_queue(namespace: str) -> str:
    """The queue of the PagerDuty calls (reconcile) and of the scheduled tasks."""
    return namespace


def intake_queue(namespace: str) -> str:
    """The queue of the events to apply (INTAKE_TASKS)."""
    return f"{namespace}.intake"


def create_celery(settings: Settings) -> Celery:
    app = Celery("pagerbridge", broker=settings.redis_url, include=["worker.pipeline.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=delivery_queue(settings.namespace),
        task_routes={name: {"queue": intake_queue(settings.namespace)} for name in INTAKE_TASKS},
        # At least once: acknowledge after the work (a message taken is not done until its task
        # returned), and put it back at once when a pool process dies under it. An event
        # redelivered is applied once (its id is recorded); reconcile is idempotent, so a
        # redelivery costs a look, not a duplicate incident.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_TIME_LIMIT - 10,
        # The apply task takes up to 100 messages at once (celery-batches): the worker must be
        # allowed to hold that many unacknowledged messages per process. These are what a
        # SIGKILL of the whole worker leaves to the visibility timeout (or to the sweeper).
        worker_prefetch_multiplier=100,
        broker_transport_options=dict(BROKER_TRANSPORT_OPTIONS),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # A guard, not the cure: whatever a pool process keeps growing by (a leak of ours or a
        # library's), it is replaced by a fresh one after the task that crossed the bound (in
        # KiB of resident memory: Celery's docs, "worker_max_memory_per_child").
        worker_max_memory_per_child=(
            settings.worker_max_memory_mb * 1024 if settings.worker_max_memory_mb else None
        ),
        worker_send_task_events=False,
        beat_schedule={
            "sweep-due-alerts": {"task": SWEEP_TASK, "schedule": settings.sweep_interval},
            "prune-old-alerts": {"task": PRUNE_TASK, "schedule": PRUNE_INTERVAL},
        },
    )
    return app


app = create_celery(get_settings())


def _freeze(**_: Any) -> None:
    freeze_startup_objects()


# A worker's start-up objects are frozen (worker/startup.py): in the main process before the pool
# forks (the children then share those pages, untouched by their collections) and again once its
# consumer is running; each pool process freezes once it is set up (worker/pipeline/tasks.py).
for _started in (worker_init, worker_ready):
    _started.connect(_freeze, weak=False)
