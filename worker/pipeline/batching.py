"""How the worker gathers apply messages into batches: at once when it has nothing else to do,
over a short window when it is busy.

celery-batches hands the buffered messages to the pool on a timer (every ``flush_interval``)
or when ``flush_every`` of them are waiting. In an alert storm that is what makes batches: the
events that arrive while the pool is busy go together, and a batch costs its transactions and
its Celery round trip whatever its size. But a message that finds the pool idle gained nothing
by waiting for the timer: nothing else is being done, and nothing else may come. It waited half
the window on average, and that was most of an alert's way to PagerDuty at a steady 100 alerts
a second (bench/run.py's latency phase, webhook to incident: p50 38-43 ms with the timer alone,
11-19 ms with this). So a message that finds no job in the pool is handed over at once, with
whatever was buffered; a storm, which keeps the pool busy, is still batched by the timer.
"""

from __future__ import annotations

from typing import Any

from celery_batches import Batches


def jobs_in_flight(pool: Any) -> int | None:
    """Jobs the worker's pool holds (sent to a process, no result yet), or None where the pool
    does not say: Celery's prefork pool keeps them in billiard's ``_cache``, read by the
    consumer's own event loop, the thread that sends and completes them."""
    jobs = getattr(getattr(pool, "_pool", None), "_cache", None)
    return None if jobs is None else len(jobs)


def hand_over_now(in_flight: int | None) -> bool:
    """Whether a message just taken goes to the pool at once instead of at the timer: only when
    the pool is known to be idle (an unknown pool keeps celery-batches' timer)."""
    return in_flight == 0


class ApplyBatches(Batches):  # type: ignore[misc]
    """celery-batches' ``Batches``, handing a message over at once when the pool is idle."""

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Any:
        take = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            take(*args, **kwargs)  # buffered, and the timer started if it was not running
            if hand_over_now(jobs_in_flight(self._pool)):
                self._do_flush()

        return on_message
