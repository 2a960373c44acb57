"""The Celery application: Redis broker, at-least-once delivery, no result backend."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

# Imported for their Celery signal receivers: worker and beat log through our handler (format,
# token redaction), and a worker serves its metrics port (worker/logs.py, worker/metrics.py).
from worker import logs, metrics  # noqa: F401
from worker.pipeline.broker import transport_for
from worker.settings import Settings, get_settings
from worker.startup import freeze_startup_objects

APPLY_EVENT_TASK = "pagerbridge.apply_event"
APPLY_ONE_EVENT_TASK = "pagerbridge.apply_one_event"
RECONCILE_TASK = "pagerbridge.reconcile"
SWEEP_TASK = "pagerbridge.sweep"
PRUNE_TASK = "pagerbridge.prune"

# How often beat runs the retention prune, seconds. Hourly: alerts are kept for days, so an
# hour more costs nothing, and each run is short (worker/pipeline/retention.py).
PRUNE_INTERVAL = 3600

# A task runs a few PagerDuty calls of at most ~15 s each; past this it is stuck.
TASK_TIME_LIMIT = 120  # seconds
# Redis re-delivers an unacknowledged message after this long: that is how a message held by a
# worker killed with SIGKILL comes back. It must exceed a task's run time plus its wait in the
# worker's prefetch buffer (else a slow task runs twice, harmlessly but wastefully), and we use
# no countdown near it: retries wait in SQL, and alerts already applied are re-found by the
# sweeper long before this.
VISIBILITY_TIMEOUT = 300  # seconds


def create_celery(settings: Settings) -> Celery:
    app = Celery("pagerbridge", broker=settings.redis_url, include=["worker.pipeline.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=settings.namespace,
        # At least once: acknowledge after the work, and requeue when the worker process dies.
        # Reconcile is idempotent, so a redelivery costs a look, not a duplicate incident.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_TIME_LIMIT - 10,
        # The apply task takes up to 100 events at once (celery-batches): the worker must be
        # allowed to hold that many unacknowledged messages per process.
        worker_prefetch_multiplier=100,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        broker_transport=transport_for(settings.redis_url),
        worker_hijack_root_logger=False,
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
