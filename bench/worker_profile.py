"""Where the worker's CPU goes, per alert and per stage: the figure behind "where the rest goes".

It runs the worker's own code in this process (no Celery, no api), against a fresh PostgreSQL
database, the local Redis (the delivery gate) and the bundled simulator, in batches the size
the live phase of ``bench/run.py`` produces (32 to 98 events per apply task, about 60 on
average, counted in one run):

    apply      apply_events: the batch's events folded into their alerts, and (as the apply
               task does) the first RECONCILE_INLINE of them leased and planned (one transaction)
    plan       a reconcile's planning transactions: for alerts the apply did not claim
    deliver    the PagerDuty calls, through the delivery gate (one create per alert here)
    record     the transaction that writes the answers and finishes the alerts

Each stage's figure is this process's CPU time (user + sys) per alert. PostgreSQL's, Redis's
and the simulator's own CPU is not in it: ``bench/run.py`` measures the whole machine.

    .venv/bin/python bench/worker_profile.py                      # batches of 60, 30 batches
    .venv/bin/python bench/worker_profile.py --batch 100 --cprofile 30   # and the top 30 functions

Only one run at a time on a machine (it shares the lock of ``bench/run.py``); the Redis db it
uses is flushed at the start and the end.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from stack import (
    BenchError,
    Services,
    bridge_env,
    free_port,
    fresh_database,
    git_revision,
    http_ok,
    migrate,
    single_run,
    wait_until,
)

STAGES = ("apply", "plan", "deliver", "record")
WARM_UP_BATCHES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=60, help="events per apply (default 60)")
    parser.add_argument("--batches", type=int, default=30, help="batches measured (default 30)")
    parser.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="also print the N functions with the most own time (cProfile)",
    )
    parser.add_argument(
        "--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args(argv)
    if options.batch < 1 or options.batches < 1:
        parser.error("--batch and --batches must be at least 1")
    return options


class StageClock:
    """Adds up this process's CPU time spent in each wrapped method."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.enabled = False

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return original(*args, **kwargs)
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.process_time() - started

        setattr(owner, name, timed)


@contextmanager
def bridge(options: argparse.Namespace, workdir: Path) -> Iterator[None]:
    """A fresh database, the simulator, and this process's environment set as a worker's."""
    with fresh_database("postgres", options.postgres_admin_url, workdir) as database:
        port = free_port()
        simulator_url = f"http://127.0.0.1:{port}"
        env = bridge_env(
            database_url=database.url,
            redis_url=options.redis_url,
            simulator_url=simulator_url,
            workdir=workdir,
            rate_per_minute=1_000_000,  # the simulator has no limit: measure the bridge
        )
        migrate(env, workdir)
        services = Services(env, workdir)
        try:
            simulator = services.start(
                "simulator", ["simulate", f"--port={port}", "--token=bench-pagerduty-token"]
            )
            wait_until(simulator, lambda: http_ok(f"{simulator_url}/_simulator/counts"))
            os.environ.update({k: v for k, v in env.items() if k.startswith("PAGERBRIDGE_")})
            yield
        finally:
            services.stop_all()


def run(options: argparse.Namespace) -> dict[str, Any]:
    from models import utcnow
    from worker.delivery import reconcile
    from worker.pipeline import intake
    from worker.pipeline.message import AlertEventMessage
    from worker.pipeline.runtime import Runtime
    from worker.pipeline.tasks import RECONCILE_INLINE
    from worker.settings import get_settings
    from worker.vocabulary import AlertStatus

    clock = StageClock()
    clock.wrap(intake, "apply_events", "apply")
    clock.wrap(reconcile.Reconciler, "_plan", "plan")
    clock.wrap(reconcile.Reconciler, "_deliver", "deliver")
    clock.wrap(reconcile.Reconciler, "_record", "record")
    runtime = Runtime(get_settings())
    reconciler = runtime.reconciler()
    apply_events: Callable[..., Any] = intake.apply_events
    run_id = uuid.uuid4().hex[:8]

    def one_batch(n: int) -> None:
        events = [
            AlertEventMessage(
                event_id=uuid.uuid4().hex,
                source="coscale",
                alert_id=f"{run_id}-{n}-{i}",
                action=AlertStatus.TRIGGERED,
                received_at=utcnow(),
                title=f"CPU high on web-{i}",
                details="metric cpu > 90% for 5 min",
                service_id=os.environ["PAGERBRIDGE_PAGERDUTY_SERVICE_ID"],
            )
            for i in range(options.batch)
        ]
        # As the apply task does: the applying transaction takes the reconcile's first step.
        claim = reconciler.claim(RECONCILE_INLINE)
        applied = apply_events(runtime.sessions, events, utcnow(), claim=claim)
        results = reconciler.reconcile_many(
            [a.alert_pk for a in applied if a.alert_pk], claim=claim
        )
        if set(results.values()) != {reconcile.ReconcileResult.DELIVERED}:
            raise BenchError(f"a batch was not delivered: {sorted(set(results.values()))}")

    try:
        for n in range(WARM_UP_BATCHES):
            one_batch(-1 - n)
        profiler = cProfile.Profile() if options.cprofile else None
        clock.enabled = True
        started = time.process_time()
        if profiler:
            profiler.enable()
        for n in range(options.batches):
            one_batch(n)
        if profiler:
            profiler.disable()
        total = time.process_time() - started
    finally:
        runtime.close()
    alerts = options.batch * options.batches
    figures = {
        "revision": git_revision(),
        "batch": options.batch,
        "alerts": alerts,
        "cprofile": bool(options.cprofile),
        "cpu_us_per_alert": {
            **{stage: round(clock.seconds[stage] / alerts * 1e6) for stage in STAGES},
            "total": round(total / alerts * 1e6),
        },
    }
    print(table(figures))
    if profiler:
        print(f"\ncProfile, top {options.cprofile} by own time (the profiler inflates all):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(options.cprofile)
    return figures


def table(figures: dict[str, Any]) -> str:
    cpu = figures["cpu_us_per_alert"]
    rows = [
        f"Worker CPU per alert, in-process, batches of {figures['batch']} "
        f"({figures['alerts']:,} alerts, revision {figures['revision']}"
        f"{', under cProfile' if figures['cprofile'] else ''}):",
        "",
        "| stage | CPU µs per alert | share |",
        "|---|---|---|",
    ]
    rows += [f"| {stage} | {cpu[stage]:,} | {cpu[stage] / cpu['total']:.0%} |" for stage in STAGES]
    rest = cpu["total"] - sum(cpu[stage] for stage in STAGES)
    rows.append(f"| rest (leases, metrics, the loop) | {rest:,} | {rest / cpu['total']:.0%} |")
    rows.append(f"| **total** | **{cpu['total']:,}** | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pagerbridge-profile-"))
    flush = redis.Redis.from_url(options.redis_url)
    try:
        with single_run():
            flush.flushdb()
            with bridge(options, workdir):
                figures = run(options)
    except BenchError as exc:
        print(f"profile FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        flush.flushdb()
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
