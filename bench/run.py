#!/usr/bin/env python3
"""Measure pagerbridge end to end on this machine and print the figures.

    .venv/bin/python bench/run.py [--alerts N] [--concurrency C] [--duration S]
                                  [--database postgres|sqlite] [--workers K] [--json PATH]

Starts a PagerDuty simulator, the api, beat and (later) a worker as separate processes on free
loopback ports, against a fresh database and Redis db 12, then:

1. ingest    C concurrent clients POST distinct CoScale triggers for S seconds, worker stopped;
2. backlog   N triggers are queued through the api, worker still stopped;
3. delivery  the worker is started and timed until the simulator holds N incidents;
4. resolve   N resolves as a burst; timed until the simulator shows N resolved incidents;
             PagerDuty calls per resolve counted by the simulator;
5. cost      CPU seconds (from /proc) per 1,000 alerts delivered in phase 3, peak RSS.

Everything it started is stopped and the database dropped at the end, whatever happens.
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import alertmanager
import httpx
import redis
import storm
from stack import (
    DEFAULT_POSTGRES_ADMIN_URL,
    DEFAULT_REDIS_URL,
    INGRESS_TOKEN,
    LIFTED_RATE_PER_MINUTE,
    PAGERDUTY_TOKEN,
    PRODUCTION_RATE_PER_MINUTE,
    REPO,
    BenchError,
    Database,
    Service,
    Services,
    Switches,
    bridge_env,
    busy_percent,
    children_of,
    clean_up_on_signals,
    context_switches,
    cpu_seconds,
    free_port,
    fresh_database,
    git_revision,
    http_ok,
    machine_busy_seconds,
    machine_context_switches,
    machine_info,
    migrate,
    peak_rss_mib,
    process_tree,
    pss_mib,
    single_run,
    wait_until,
    write_json,
)

from worker.settings import Settings

BENCH_DIR = REPO / "bench"
WRK_SCRIPT = BENCH_DIR / "webhook.lua"
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"


# The Celery queue's Redis list (worker/pipeline/celery_app.py QUEUE). Not imported: importing
# worker.pipeline.celery_app builds the Celery app from this process's settings, a side effect the
# harness does not need.
QUEUE_KEY = "pagerbridge"
APPLY_EVENT_TASK = b"pagerbridge.apply_event"

# One wrk thread drives tens of thousands of requests per second, far above what the api can
# serve; a second thread would only take CPU from the api on this 2-core machine.
WRK_THREADS = 1
# Connections that send the backlog and the resolve burst (wrk, or the httpx fallback).
FEEDER_CONCURRENCY = 16
# Even the counts are built under the simulator's lock, on its event loop: polling often
# would slow the very thing measured. So wait at least POLL_MIN_INTERVAL_S and POLL_COST_FACTOR
# times what the last poll took, and while the end is far off, a third of the estimated time
# left (up to POLL_MAX_INTERVAL_S).
POLL_MIN_INTERVAL_S = 0.2
POLL_COST_FACTOR = 5.0
POLL_MAX_INTERVAL_S = 5.0
# A phase that makes no progress for this long is broken (e.g. the simulator answers 500),
# not slow: stop it with a diagnosis instead of waiting for --phase-timeout.
STALL_TIMEOUT_S = 30.0
# Above this share of all CPUs busy before the run, the figures get a warning.
BUSY_WARNING_PERCENT = 15.0
# Likewise when processes outside the bench use more than this share of one CPU in a phase.
ELSEWHERE_WARNING_SHARE = 0.25


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


# Alerts each side delivers just before its live phase, untimed. The bridge's worker is restarted
# for the phase (a clean state) and Alertmanager has run its ingest phase: without this, the
# bridge met the storm cold (every pool process's first database connection, first compiled
# statements, first PagerDuty connection; the api's too under --phases live) and Alertmanager
# warm. A storm meets a bridge that has been running.
LIVE_WARM_UP = 300
WARM_UP_SETTLE_S = 1.0  # then the pipeline's last records and acknowledgements are done


# The storm phase's alerts: the size of the storm the comparison with Alertmanager is made on.
STORM_ALERTS = 600


@dataclass(frozen=True)
class Options:
    alerts: int
    concurrency: int
    duration: float
    database: str
    workers: int
    calls_in_flight: int
    api_workers: int
    json_path: Path
    load_generator: str
    phase_timeout: float  # seconds
    rate_per_minute: float
    pagerduty_latency_ms: int
    wait_quiet: float  # seconds
    postgres_admin_url: str
    redis_url: str
    phases: tuple[str, ...] = ()
    live_warm_up: int = LIVE_WARM_UP
    storm_limit: int = storm.REST_LIMIT_PER_MINUTE
    storm_peer: bool = True
    storm_alerts: int = STORM_ALERTS
    storm_intake: bool = True


# The phases in the order they run; --phases picks some (a phase that needs another's work
# says so in PHASE_NEEDS).
PHASES = (
    "ingest",
    "backlog",
    "delivery",
    "resolve",
    "live",
    "latency",
    "rate-limited",
    "storm",
    "alertmanager",
)
# The worker as deployed: the bridge's own default process count (PAGERBRIDGE_WORKER_CONCURRENCY).
BRIDGE_WORKERS: int = Settings.model_fields["worker_concurrency"].default
BRIDGE_CALLS_IN_FLIGHT: int = Settings.model_fields["pagerduty_calls_in_flight"].default
PHASE_NEEDS = {"delivery": ("backlog",), "resolve": ("backlog", "delivery")}


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Measure pagerbridge: ingest rate, delivery rate, resolve cost, CPU/RSS.",
    )
    parser.add_argument("--alerts", type=int, default=3000, help="backlog size N (default 3000)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="concurrent ingest clients C (default 32)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="ingest seconds S (default 10)"
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--workers",
        type=int,
        default=BRIDGE_WORKERS,
        help="worker --concurrency K (default: the bridge's, 4)",
    )
    parser.add_argument(
        "--calls-in-flight",
        type=int,
        default=BRIDGE_CALLS_IN_FLIGHT,
        metavar="K",
        help="creates each worker process sends at once (PAGERBRIDGE_PAGERDUTY_CALLS_IN_FLIGHT; "
        f"default: the bridge's, {BRIDGE_CALLS_IN_FLIGHT})",
    )
    parser.add_argument(
        "--api-workers", type=int, default=1, help="api processes (api --workers; default 1)"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, dest="json_path", help="where to write JSON"
    )
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="ingest load generator; auto = wrk if on PATH, else httpx (default auto)",
    )
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=None,
        help="give up on the delivery or resolve phase after this many seconds "
        "(default: max(120, N/10), i.e. slower than 10 alerts/s is a failure)",
    )
    parser.add_argument(
        "--rate-per-minute",
        type=float,
        default=LIFTED_RATE_PER_MINUTE,
        help="the bridge's PagerDuty rate limit (default: lifted; the bridge's own default "
        f"is {PRODUCTION_RATE_PER_MINUTE:.0f})",
    )
    parser.add_argument(
        "--pagerduty-latency-ms",
        type=int,
        default=0,
        help="milliseconds the simulator adds to every call (real PagerDuty: ~100-300)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help=f"first wait up to S seconds for the machine to be under {BUSY_WARNING_PERCENT:.0f}%% "
        "busy (a shared machine); default 0: start at once",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default all: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--live-warm-up",
        type=int,
        default=LIVE_WARM_UP,
        metavar="W",
        help="alerts each side (the bridge, Alertmanager) delivers just before its live phase, "
        f"untimed (default {LIVE_WARM_UP}; 0: none, as before this option)",
    )
    parser.add_argument(
        "--storm-limit",
        type=int,
        default=storm.REST_LIMIT_PER_MINUTE,
        metavar="R",
        help="the storm phase: REST calls a minute the simulator allows the token (default "
        f"{storm.REST_LIMIT_PER_MINUTE}, PagerDuty's); the bridge is never told it",
    )
    parser.add_argument(
        "--storm-alerts",
        type=int,
        default=STORM_ALERTS,
        metavar="N",
        help=f"the storm phase's alerts (default {STORM_ALERTS}: a storm at PagerDuty's limit "
        "takes N / (limit a second) seconds, whatever --alerts is)",
    )
    parser.add_argument(
        "--no-storm-peer",
        action="store_false",
        dest="storm_peer",
        help="the storm phase without Alertmanager (the bridge's side alone, half the time)",
    )
    parser.add_argument(
        "--no-storm-intake",
        action="store_false",
        dest="storm_intake",
        help="the storm phase with one worker serving both queues, not an intake worker of "
        "its own beside the delivery worker (docker-compose.yml's way)",
    )
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    if (
        args.alerts < 1
        or args.concurrency < 1
        or args.workers < 1
        or args.calls_in_flight < 1
        or args.api_workers < 1
        or args.duration <= 0
        or args.rate_per_minute <= 0
        or args.pagerduty_latency_ms < 0
        or args.live_warm_up < 0
        or args.storm_limit < 1
        or args.storm_alerts < 1
    ):
        parser.error("counts, durations and rates must be positive")
    phases = tuple(name.strip() for name in args.phases.split(",") if name.strip())
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    for name in phases:
        missing = [need for need in PHASE_NEEDS.get(name, ()) if need not in phases]
        if missing:
            parser.error(f"phase {name} needs {', '.join(missing)}")
    return Options(
        alerts=args.alerts,
        concurrency=args.concurrency,
        duration=args.duration,
        database=args.database,
        workers=args.workers,
        calls_in_flight=args.calls_in_flight,
        api_workers=args.api_workers,
        json_path=args.json_path,
        load_generator=args.load_generator,
        phase_timeout=args.phase_timeout or max(120.0, args.alerts / 10),
        rate_per_minute=args.rate_per_minute,
        pagerduty_latency_ms=args.pagerduty_latency_ms,
        wait_quiet=args.wait_quiet,
        postgres_admin_url=args.postgres_admin_url,
        redis_url=args.redis_url,
        phases=tuple(name for name in PHASES if name in phases),
        live_warm_up=args.live_warm_up,
        storm_limit=args.storm_limit,
        storm_peer=args.storm_peer,
        storm_alerts=args.storm_alerts,
        storm_intake=args.storm_intake,
    )


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def queued_messages(client: redis.Redis) -> tuple[int, int]:
    """(all messages, events in apply_event messages) waiting in the Celery queue.

    Kombu keeps one list per priority step ("pagerbridge", "pagerbridge\\x06\\x163", ...).
    The api sends one apply_event message per batch of requests it stored together.
    """
    total = events = 0
    for key in client.scan_iter(match=f"{QUEUE_KEY}*"):
        if client.type(key) != b"list":
            continue
        length = int(client.llen(key))
        total += length
        for start in range(0, length, 1000):
            chunk: list[bytes] = client.lrange(key, start, start + 999)  # type: ignore[assignment]
            events += sum(events_in(message) for message in chunk if APPLY_EVENT_TASK in message)
    return total, events


def events_in(message: bytes) -> int:
    """Events carried by one kombu message of the apply_event task (its body is the base64 of
    ``[args, kwargs, embed]``; ``args[0]`` is one event, or a list of them)."""
    envelope = json.loads(message)
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    return len(args[0]) if isinstance(args[0], list) else 1


def drop_queue(client: redis.Redis) -> None:
    """Empty the Celery queue but keep kombu's binding keys (``_kombu.binding.*``): the api's
    producer declared the queue once and will not declare it again after a FLUSHDB."""
    for key in list(client.scan_iter(match=f"{QUEUE_KEY}*")):
        if client.type(key) == b"list":
            client.delete(key)


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What a load generator saw: requests, outcomes and latencies."""

    tool: str
    elapsed_s: float
    completed: int = 0
    accepted: int = 0  # 2xx answers
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(percent / 100 * len(ordered)) - 1))
    return ordered[rank]


async def _drive(
    url: str,
    concurrency: int,
    next_body: Callable[[], dict[str, Any] | None],
    deadline: float | None,
    tool: str,
) -> LoadResult:
    """POST ``next_body()`` from ``concurrency`` clients until it returns None or the deadline
    (a ``time.monotonic`` value) passes."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    accepted = 0
    headers = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while deadline is None or time.monotonic() < deadline:
            body = next_body()
            if body is None:
                return
            started = time.perf_counter()
            try:
                answer = await client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            if 200 <= answer.status_code < 300:
                accepted += 1
            else:
                errors[f"HTTP {answer.status_code}"] = (
                    errors.get(f"HTTP {answer.status_code}", 0) + 1
                )

    started = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return LoadResult(
        tool=tool,
        elapsed_s=elapsed,
        completed=len(latencies),
        accepted=accepted,
        errors=errors,
        latency_ms={
            "p50": _percentile(latencies, 50),
            "p90": _percentile(latencies, 90),
            "p99": _percentile(latencies, 99),
            "max": latencies[-1] if latencies else float("nan"),
        },
    )


def post_all(url: str, bodies: list[dict[str, Any]], concurrency: int) -> LoadResult:
    """POST every body once, ``concurrency`` at a time."""
    remaining = iter(bodies)
    return asyncio.run(
        _drive(url, concurrency, lambda: next(remaining, None), None, "httpx.AsyncClient")
    )


def ingest_with_httpx(url: str, run_id: str, concurrency: int, duration: float) -> LoadResult:
    counter = itertools.count(1)

    def next_body() -> dict[str, Any]:
        return trigger_body(f"{run_id}-h-{next(counter)}")

    return asyncio.run(
        _drive(url, concurrency, next_body, time.monotonic() + duration, "httpx.AsyncClient")
    )


def wrk_version(wrk: str) -> str:
    # wrk prints its version in the usage text (on stdout) and exits non-zero.
    output = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (output.stdout or output.stderr).splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    duration: float,
    script_args: list[str],
    log: Path,
    done_file: Path | None = None,
    target: str = "coscale",
) -> LoadResult:
    """Run wrk with bench/webhook.lua; see the script for its modes (``script_args``) and
    targets (``coscale``: the bridge; ``alertmanager``: the peer).

    With ``done_file``, the script creates it once every event is answered; wrk is then ended
    with SIGINT (its main thread would otherwise sleep out the whole ``duration``).
    """
    command = [
        wrk,
        f"--threads={WRK_THREADS}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        "--timeout=10s",
        f"--script={WRK_SCRIPT}",
        url,
        "--",
        *script_args,
        *([str(done_file)] if done_file is not None else []),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BENCH_TARGET": target},
    )
    # Bounded by --duration; the margin only guards against a wrk that hangs.
    deadline = time.monotonic() + duration + 30
    while process.poll() is None:
        if done_file is not None and done_file.exists():
            process.send_signal(signal.SIGINT)
            break
        if time.monotonic() > deadline:
            process.kill()
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=30)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n{stdout}{stderr}\n")
    line = next((text for text in stdout.splitlines() if text.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    report = json.loads(line.removeprefix("BENCH_JSON "))
    errors = {name: count for name, count in report["errors"].items() if count}
    latency = report["latency_us"]
    # In the fixed-list modes (those with a done file) wrk's request count includes the
    # GET /healthz fillers: count the events' answers instead.
    if done_file is not None:
        answered, accepted = int(report["events_answered"]), int(report["events_accepted"])
    else:
        # wrk counts answers >= 400 as status errors; the rest are 2xx.
        answered = int(report["requests"])
        accepted = answered - int(report["errors"]["status"])
    return LoadResult(
        tool=f"{wrk_version(wrk)}, {WRK_THREADS} thread, bench/webhook.lua",
        elapsed_s=report["duration_us"] / 1e6,
        completed=answered,
        accepted=accepted,
        errors=errors,
        latency_ms={name: latency[name] / 1000 for name in ("p50", "p90", "p99", "max")},
    )


def ingest_with_wrk(
    wrk: str, url: str, run_id: str, concurrency: int, duration: float, log: Path
) -> LoadResult:
    return run_wrk(wrk, url, concurrency, duration, [run_id, INGRESS_TOKEN], log)


def trigger_body(alert_id: str) -> dict[str, Any]:
    """A CoScale trigger like the Webhook contact's Format produces."""
    return {
        "alert_id": alert_id,
        "action": "triggered",
        "message": "bench backlog",
        "metric": "cpu/used",
        "subject": "server bench",
        "app": "bench",
        "host": "bench-host",
    }


# --------------------------------------------------------------------------------------------
# The simulator's counters
# --------------------------------------------------------------------------------------------


@dataclass
class SimulatorCounts:
    creates: int
    resolved: int
    duplicate_creates_refused: int
    calls: dict[tuple[str, str], int]  # (method, route) -> calls, any status
    error_answers: int  # calls the simulator answered with a status >= 400
    rate_limited: int  # calls the simulator answered 429
    events_alerts_opened: int  # Events API v2 alerts (the peer's incidents)
    events_alerts_resolved: int
    observed_at: float  # monotonic time of the snapshot (the request's midpoint)
    poll_s: float  # how long the poll took


class SimulatorProbe:
    """Reads /_simulator/counts: the counters alone, cheap whatever the number of incidents."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._client = httpx.Client(base_url=base_url, timeout=30.0)
        self.last_poll_s = 0.0

    def counts(self) -> SimulatorCounts:
        sent = time.monotonic()
        answer = self._client.get("/_simulator/counts")
        answer.raise_for_status()
        received = time.monotonic()
        counts = answer.json()
        self.last_poll_s = received - sent
        calls: dict[tuple[str, str], int] = {}
        error_answers = rate_limited = 0
        for call in counts["calls"]:
            key = (call["method"], call["route"])
            calls[key] = calls.get(key, 0) + int(call["count"])
            if int(call["status"]) >= 400:
                error_answers += int(call["count"])
            if int(call["status"]) == 429:
                rate_limited += int(call["count"])
        return SimulatorCounts(
            creates=int(counts["creates"]),
            resolved=int(counts["incidents_by_status"]["resolved"]),
            duplicate_creates_refused=int(counts["duplicate_creates_refused"]),
            calls=calls,
            error_answers=error_answers,
            rate_limited=rate_limited,
            events_alerts_opened=int(counts["events"]["alerts_opened"]),
            events_alerts_resolved=int(counts["events"]["alerts_by_status"]["resolved"]),
            observed_at=(sent + received) / 2,
            poll_s=self.last_poll_s,
        )

    def pause(self, seconds_left: float | None = None) -> None:
        """Sleep until the next poll; ``seconds_left``: the caller's estimate of the time until
        the phase ends, None if unknown."""
        floor = max(POLL_MIN_INTERVAL_S, POLL_COST_FACTOR * self.last_poll_s)
        if seconds_left is None:
            time.sleep(floor)
        else:
            time.sleep(max(floor, min(seconds_left / 3, POLL_MAX_INTERVAL_S)))

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------------------------
# CPU snapshots
# --------------------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    """CPU seconds consumed so far, by process group, and the groups' context switches so far
    (the machine's: all of its CPUs')."""

    seconds: dict[str, float]
    taken_at: float
    switches: dict[str, Switches] = field(default_factory=dict)


# Groups that make up "the bridge" in the cost figure; the rest are shown for context.
BRIDGE_GROUPS = ("api", "worker (main)", "worker (pool)", "intake", "beat")
MACHINE = "machine (all CPUs)"
HARNESS = "bench harness (this process)"
REAPED = "wrk / other finished subprocesses of the harness"
ELSEWHERE = "everything else on the machine"


def own_cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    def __init__(self, services: Services, database: Database, redis_pid: int | None) -> None:
        self.services = services
        self.database = database
        self.redis_pid = redis_pid

    def snapshot(self) -> CpuSnapshot:
        groups: dict[str, list[int]] = {}
        for name, service in self.services.running.items():
            pid = service.process.pid
            if name == "worker":
                groups["worker (main)"] = [pid]
                groups["worker (pool)"] = [child for child in process_tree(pid) if child != pid]
            else:
                groups[name] = process_tree(pid)
        if self.database.kind == "postgres":
            groups["postgres (bench db backends)"] = self.database.backend_pids()
        if self.redis_pid is not None:
            groups["redis-server (whole server)"] = [self.redis_pid]
        seconds = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
        switches = {
            name: sum((context_switches(pid) for pid in pids), Switches())
            for name, pids in groups.items()
        }
        switches[MACHINE] = Switches(voluntary=machine_context_switches())
        seconds[HARNESS] = own_cpu_seconds(resource.RUSAGE_SELF)
        seconds[REAPED] = own_cpu_seconds(resource.RUSAGE_CHILDREN)
        seconds[MACHINE] = machine_busy_seconds()
        return CpuSnapshot(seconds, time.monotonic(), switches)


def commits_per_alert(before: int | None, after: int | None, alerts: int) -> float | None:
    if before is None or after is None or alerts <= 0:
        return None
    return round((after - before) / alerts, 2)


# A PostgreSQL (15+) backend reports its statistics at most once a second while busy, and
# once it goes idle only after up to 10 s (PGSTAT_IDLE_INTERVAL); one that exits reports at
# once. So a count read right after the workers go quiet misses their last second of commits.
PG_STATS_IDLE_FLUSH_S = 11.0


def settled_commits(database: Database, *, backends_exited: bool = False) -> int | None:
    """The commit count once the backends have reported their last transactions."""
    if database.admin is None:
        return None
    time.sleep(0.5 if backends_exited else PG_STATS_IDLE_FLUSH_S)
    return database.commits()


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots, plus what the rest of the machine used:
    on a shared 2-CPU machine another job's load changes every figure, so it is shown."""
    delta = {
        name: round(value - before.seconds.get(name, 0.0), 3)
        for name, value in after.seconds.items()
    }
    machine = delta.pop(MACHINE)
    # Includes PostgreSQL's background writers and the kernel's own work, not only other jobs.
    delta[ELSEWHERE] = round(max(0.0, machine - sum(delta.values())), 3)
    delta[MACHINE] = machine
    return {name: value for name, value in delta.items() if value or name in BRIDGE_GROUPS}


def switches_per_alert(
    before: CpuSnapshot, after: CpuSnapshot, alerts: int
) -> dict[str, dict[str, float]]:
    """Context switches per alert between two snapshots, by process group: voluntary (it waited
    for a socket, a lock, a timer) and involuntary (preempted); for the machine, all switches
    on its CPUs (the kernel's count does not tell the two apart). Only groups seen in both
    snapshots. Only live threads are counted: one that exited between the snapshots takes its
    switches with it, so a group whose members came and went during a phase reads low."""
    per_alert: dict[str, dict[str, float]] = {}
    for name, then in before.switches.items():
        now = after.switches.get(name)
        if now is None or alerts <= 0:
            continue
        delta = now - then
        if name == MACHINE:
            per_alert[name] = {"all": round(delta.voluntary / alerts, 2)}
        else:
            per_alert[name] = {
                "voluntary": round(delta.voluntary / alerts, 2),
                "involuntary": round(delta.involuntary / alerts, 2),
            }
    return per_alert


def bridge_cpu(delta: dict[str, float]) -> float:
    return sum(delta.get(name, 0.0) for name in BRIDGE_GROUPS)


# --------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a phase needs, and the results collected so far."""

    options: Options
    run_id: str
    workdir: Path
    env: dict[str, str]
    services: Services
    database: Database
    redis_client: redis.Redis
    probe: SimulatorProbe
    meter: CpuMeter
    api_url: str
    wrk: str | None  # wrk's path, None: use the httpx load generator
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def webhook_url(self) -> str:
        return f"{self.api_url}/webhooks/coscale"

    def backlog_ids(self) -> list[str]:
        return [f"{self.run_id}-b{index}" for index in range(self.options.alerts)]


def wait_for_simulator(
    run: Run,
    what: str,
    progress: Callable[[SimulatorCounts], int],
    on_sample: Callable[[SimulatorCounts], None] | None = None,
    samples: list[tuple[float, int]] | None = None,
    since: float | None = None,
    wanted: int | None = None,
) -> SimulatorCounts:
    """Poll the simulator until ``progress`` reaches N; fail on a dead process, on no progress
    for STALL_TIMEOUT_S, or after --phase-timeout. Each poll's (seconds since ``since``,
    progress) is appended to ``samples``: whether the rate holds over the phase."""
    wanted = run.options.alerts if wanted is None else wanted
    started = time.monotonic()
    since = started if since is None else since
    last_value, last_change = -1, started
    first_seen: tuple[float, int] | None = None  # for the rate, hence the time left
    while True:
        for service in run.services.running.values():
            service.check_alive()
        counts = run.probe.counts()
        if on_sample is not None:
            on_sample(counts)
        value = progress(counts)
        if samples is not None:
            samples.append((round(counts.observed_at - since, 2), value))
        if value >= wanted:
            return counts
        now = time.monotonic()
        if value != last_value:
            last_value, last_change = value, now
        if first_seen is None and value > 0:
            first_seen = (counts.observed_at, value)
        stalled = now - last_change > STALL_TIMEOUT_S
        if stalled or now - started > run.options.phase_timeout:
            why = f"no progress for {STALL_TIMEOUT_S:.0f}s" if stalled else "phase timeout"
            raise BenchError(
                f"{what}: {value} of {wanted} after {now - started:.0f}s ({why}); the simulator "
                f"answered {counts.error_answers} calls with an error status.\n"
                + "\n".join(
                    f"--- {name}.log (end)\n{run.services[name].tail(1500)}"
                    for name in ("simulator", "worker")
                    if name in run.services.running
                )
            )
        seconds_left = None
        if first_seen is not None and value > first_seen[1]:
            rate = (value - first_seen[1]) / (counts.observed_at - first_seen[0])
            seconds_left = (wanted - value) / rate
        run.probe.pause(seconds_left)


def note_interference(run: Run, phase: str, cpu: dict[str, float], seconds: float) -> None:
    share = cpu.get(ELSEWHERE, 0.0) / seconds if seconds > 0 else 0.0
    if share > ELSEWHERE_WARNING_SHARE:
        run.notes.append(
            f"during {phase}, processes outside the bench used {share * 100:.0f}% of one CPU "
            "(other jobs, or PostgreSQL's background writers): that phase's figures are low"
        )


def phase_ingest(run: Run) -> None:
    """Webhooks accepted per second with the worker stopped: the api alone on the CPUs."""
    options = run.options
    cpu_before = run.meter.snapshot()
    if run.wrk is not None:
        result = ingest_with_wrk(
            run.wrk,
            run.webhook_url(),
            run.run_id,
            options.concurrency,
            options.duration,
            run.workdir / "wrk.log",
        )
    else:
        why = "wrk not found" if options.load_generator == "auto" else "--load-generator httpx"
        run.notes.append(
            f"{why}: load driven by the Python httpx fallback, which takes CPU from the api and "
            "the worker (see the CPU table), so the ingest and resolve figures are lower bounds"
        )
        result = ingest_with_httpx(
            run.webhook_url(), run.run_id, options.concurrency, options.duration
        )
    cpu = cpu_between(cpu_before, run.meter.snapshot())
    note_interference(run, "ingest", cpu, result.elapsed_s)
    total, events = queued_messages(run.redis_client)
    run.results["ingest"] = {
        "tool": result.tool,
        "clients": options.concurrency,
        "seconds": round(result.elapsed_s, 2),
        "requests": result.completed,
        "accepted": result.accepted,
        "accepted_per_s": round(result.accepted_per_s, 1),
        "errors": result.errors,
        "latency_ms": {name: round(value, 2) for name, value in result.latency_ms.items()},
        # The contract says 202 only once the event is stored: every accepted request must
        # have left its event in an apply_event message (a few more if the generator stopped
        # mid-request).
        "events_queued": events,
        "messages_queued": total,
        # The api is one uvicorn process: near 100% of one CPU means it is the bottleneck.
        "api_cpu_share_of_one_cpu": round(cpu["api"] / result.elapsed_s, 2),
        "api_cpu_s_per_1000_webhooks": round(cpu["api"] / max(1, result.accepted) * 1000, 2),
        "cpu_s_by_process": cpu,
    }
    if events < result.accepted:
        run.notes.append(
            f"CONTRACT: {result.accepted} webhooks answered 2xx but only {events} events "
            "are in the queue"
        )
    # The ingested alerts are discarded rather than delivered: their number depends on the
    # ingest rate, and a fixed backlog of --alerts keeps phase 2 comparable between runs.
    drop_queue(run.redis_client)
    run.results["ingest"]["inbox_rows_discarded"] = run.database.discard_inbox()


def describe_shortfall(result: LoadResult) -> str:
    if result.errors:
        return f"errors: {result.errors}"
    return f"no errors: not all were sent within --phase-timeout ({result.elapsed_s:.0f}s)"


def feed(run: Run, action: str, batch: str = "", count: int | None = None) -> LoadResult:
    """Send ``action`` once for every backlog alert through the api: with wrk when there is one
    (a Python feeder would take a good part of a CPU from the api and the worker), else httpx.
    A ``batch`` name makes another N alerts (``count`` of them), distinct from the backlog's."""
    run_id = f"{run.run_id}{batch}"
    count = run.options.alerts if count is None else count
    ids = [f"{run_id}-b{index}" for index in range(count)]
    if run.wrk is not None:
        return run_wrk(
            run.wrk,
            run.webhook_url(),
            FEEDER_CONCURRENCY,
            run.options.phase_timeout,
            [run_id, INGRESS_TOKEN, action, str(len(ids))],
            run.workdir / "wrk.log",
            done_file=run.workdir / f"wrk-{action}{batch}.done",
        )
    if action == "resolved":
        bodies = [{"alert_id": alert_id, "action": "resolved"} for alert_id in ids]
    else:
        bodies = [trigger_body(alert_id) for alert_id in ids]
    return post_all(run.webhook_url(), bodies, FEEDER_CONCURRENCY)


def phase_backlog(run: Run) -> None:
    """Queue N distinct triggers through the api while no worker runs."""
    wanted = run.options.alerts
    result = feed(run, "triggered")
    if result.accepted != wanted:
        raise BenchError(
            f"backlog: only {result.accepted} of {wanted} triggers accepted "
            f"({describe_shortfall(result)})"
        )
    total, events = queued_messages(run.redis_client)
    run.results["backlog"] = {
        "alerts": wanted,
        "tool": result.tool,
        "seconds": round(result.elapsed_s, 2),
        "accepted_per_s": round(result.accepted_per_s, 1),
        "clients": FEEDER_CONCURRENCY,
        "events_queued": events,
        "messages_queued": total,
    }


def pool_size(service: Service) -> int:
    return len(children_of(service.process.pid))


def phase_delivery(run: Run) -> None:
    """Start the worker on the backlog; time until the simulator holds N incidents."""
    options = run.options
    wanted = options.alerts
    before = run.meter.snapshot()
    worker = run.services.start("worker", ["worker", "--concurrency", str(options.workers)])
    first: tuple[SimulatorCounts, CpuSnapshot] | None = None
    pool_up_s: float | None = None
    commits_before = run.database.commits()

    def on_sample(counts: SimulatorCounts) -> None:
        nonlocal first, pool_up_s
        if pool_up_s is None and pool_size(worker) >= options.workers:
            pool_up_s = time.monotonic() - worker.started_at
        if first is None and counts.creates > 0:
            # Steady-state figures start here, leaving out the worker's start-up (imports,
            # forking the pool, first connections), which a long-running worker pays once.
            first = (counts, run.meter.snapshot())

    progress: list[tuple[float, int]] = []
    counts = wait_for_simulator(
        run, "delivery", lambda c: c.creates, on_sample, progress, since=worker.started_at
    )
    after = run.meter.snapshot()
    commits_after = settled_commits(run.database)
    assert first is not None
    first_counts, first_cpu = first
    steady_alerts = counts.creates - first_counts.creates
    steady_seconds = counts.observed_at - first_counts.observed_at
    overall_seconds = counts.observed_at - worker.started_at
    steady_cpu = cpu_between(first_cpu, after)
    note_interference(run, "delivery", steady_cpu, steady_seconds)
    overall_cpu = cpu_between(before, after)
    run.results["delivery"] = {
        "alerts": wanted,
        "incidents_created": counts.creates,
        "duplicate_creates_refused": counts.duplicate_creates_refused,
        "pagerduty_error_answers": counts.error_answers,
        "worker_pool_up_s": round(pool_up_s, 2) if pool_up_s is not None else None,
        "first_incident_seen_s": round(first_counts.observed_at - worker.started_at, 2),
        "seconds_including_worker_start": round(overall_seconds, 2),
        "incidents_per_s_including_worker_start": round(wanted / overall_seconds, 1),
        "steady_alerts": steady_alerts,
        "steady_seconds": round(steady_seconds, 2),
        "incidents_per_s": round(steady_alerts / steady_seconds, 1) if steady_seconds else None,
        "last_poll_s": round(run.probe.last_poll_s, 3),
        # Includes the sweeper's transactions; PostgreSQL only.
        "database_commits_per_alert": commits_per_alert(commits_before, commits_after, wanted),
        "progress": progress,  # (seconds since the worker started, incidents)
        "cpu_s_steady_by_process": steady_cpu,
        "cpu_s_including_worker_start_by_process": overall_cpu,
    }
    run.results["cost"] = {
        "bridge_cpu_s_per_1000_alerts": round(bridge_cpu(steady_cpu) / steady_alerts * 1000, 2)
        if steady_alerts
        else None,
        "bridge_cpu_s_per_1000_alerts_including_worker_start": round(
            bridge_cpu(overall_cpu) / wanted * 1000, 2
        ),
        "database_cpu_s_per_1000_alerts": round(
            steady_cpu.get("postgres (bench db backends)", 0.0) / steady_alerts * 1000, 2
        )
        if steady_alerts and options.database == "postgres"
        else None,
        "window_s": round(after.taken_at - first_cpu.taken_at, 2),
        "bridge_groups": list(BRIDGE_GROUPS),
    }


def phase_resolve(run: Run) -> None:
    """Resolve all N alerts as a burst; time until the simulator shows them resolved."""
    wanted = run.options.alerts
    before = run.probe.counts()
    cpu_before = run.meter.snapshot()
    commits_before = run.database.commits()
    started = time.monotonic()
    burst = feed(run, "resolved")
    if burst.accepted != wanted:
        raise BenchError(
            f"resolve: only {burst.accepted} of {wanted} accepted ({describe_shortfall(burst)})"
        )
    progress: list[tuple[float, int]] = []
    counts = wait_for_simulator(
        run, "resolve", lambda c: c.resolved - before.resolved, None, progress, since=started
    )
    cpu = cpu_between(cpu_before, run.meter.snapshot())
    calls = {
        f"{method} {route}": counts.calls.get((method, route), 0)
        - before.calls.get((method, route), 0)
        for method, route in sorted(counts.calls)
    }
    calls = {name: count for name, count in calls.items() if count}
    put_calls = sum(count for name, count in calls.items() if name.startswith("PUT "))
    seconds = counts.observed_at - started
    note_interference(run, "resolve", cpu, seconds)
    run.results["resolve"] = {
        "alerts": wanted,
        "burst_seconds": round(burst.elapsed_s, 2),
        "burst_tool": burst.tool,
        "seconds_to_all_resolved": round(seconds, 2),
        "resolves_per_s": round(wanted / seconds, 1),
        "pagerduty_calls": calls,
        "put_calls_per_resolve": round(put_calls / wanted, 3),
        "calls_per_resolve": round(sum(calls.values()) / wanted, 3),
        "pagerduty_error_answers": counts.error_answers - before.error_answers,
        # Completed in finish(), once the worker has stopped and its backends reported.
        "database_commits_per_resolve": None,
        "database_commits_before": commits_before,
        "bridge_cpu_s_per_1000_resolves": round(bridge_cpu(cpu) / wanted * 1000, 2),
        "progress": progress,  # (seconds since the burst started, incidents resolved)
        "cpu_s_by_process": cpu,
    }


def start_worker(run: Run, env: dict[str, str] | None = None, *, intake: bool = False) -> Service:
    """(Re)start the worker, waiting until its pool is up so no phase times its start. With
    ``intake``, as docker-compose.yml runs it: a delivery worker and an intake worker of one
    process (`pagerbridge worker --queues intake`)."""
    run.services.stop("worker")
    run.services.stop("intake")
    queues = ["--queues", "delivery"] if intake else []
    worker = run.services.start(
        "worker", ["worker", *queues, "--concurrency", str(run.options.workers)], env=env
    )
    started = [(worker, run.options.workers)]
    if intake:
        own_port = {"PAGERBRIDGE_WORKER_METRICS_PORT": str(free_port())}
        intake_worker = run.services.start(
            "intake",
            ["worker", "--queues", "intake", "--concurrency", "1"],
            env={**(env or {}), **own_port},
        )
        started.append((intake_worker, 1))
    deadline = time.monotonic() + 60
    for service, size in started:
        while pool_size(service) < size or time.monotonic() < service.started_at + 3:
            service.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"worker pool not up after 60 s:\n{service.tail()}")
            time.sleep(0.1)
    return worker


def phase_live(run: Run) -> None:
    """N new triggers sent with the worker running: from the first webhook to the N-th
    incident. The figure comparable with Alertmanager, which cannot hold a backlog back."""
    wanted = run.options.alerts
    start_worker(run)
    warm_up = run.options.live_warm_up
    if warm_up:
        base = run.probe.counts()
        sent = feed(run, "triggered", batch="-warm", count=warm_up)
        if sent.accepted != warm_up:
            raise BenchError(f"live warm-up: only {sent.accepted} of {warm_up} accepted")
        wait_for_simulator(run, "live warm-up", lambda c: c.creates - base.creates, wanted=warm_up)
        time.sleep(WARM_UP_SETTLE_S)
    before = run.probe.counts()
    cpu_before = run.meter.snapshot()
    started, started_s = time.monotonic(), time.time()
    sent = feed(run, "triggered", batch="-live")
    if sent.accepted != wanted:
        raise BenchError(f"live: only {sent.accepted} of {wanted} accepted")
    counts = wait_for_simulator(
        run, "live delivery", lambda c: c.creates - before.creates, since=started
    )
    polled = counts.observed_at - started
    cpu_after = run.meter.snapshot()
    cpu = cpu_between(cpu_before, cpu_after)
    made = creations_since(run.probe.base_url, started_s)
    exact = nth_creation_s(made, started_s, wanted)
    seconds = exact or polled
    note_interference(run, "live delivery", cpu, seconds)
    run.results["live"] = {
        "alerts": wanted,
        "warm_up_alerts": warm_up,
        "send_seconds": round(sent.elapsed_s, 2),
        "seconds_to_all_created": round(seconds, 3),
        "end_from": "simulator clock" if exact else "poll",
        "seconds_to_the_poll_that_saw_it": round(polled, 2),
        "creation_curve": creation_curve(made, started_s, wanted),
        "incidents_per_s": round(wanted / seconds, 1),
        "bridge_cpu_s_per_1000_alerts": round(bridge_cpu(cpu) / wanted * 1000, 2),
        "cpu_s_by_process": cpu,
        "context_switches_per_alert": switches_per_alert(cpu_before, cpu_after, wanted),
    }


# Latency is measured at a steady LATENCY_RATE alerts a second for LATENCY_SECONDS.
LATENCY_RATE = 100
LATENCY_SECONDS = 20
LATENCY_WARM_UP = 5  # seconds


async def _paced_triggers(url: str, ids: list[str], rate: float) -> dict[str, tuple[float, int]]:
    """POST one trigger per id at ``rate`` a second (on a schedule, not after the previous
    answer, so a slow answer does not slow the load); per id: (wall time sent, status)."""
    sent: dict[str, tuple[float, int]] = {}
    headers = {"Authorization": f"Bearer {INGRESS_TOKEN}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30.0, headers=headers, limits=limits) as client:

        async def post(alert_id: str) -> None:
            at = time.time()
            try:
                answer = await client.post(url, json=trigger_body(alert_id))
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            sent[alert_id] = (at, status)

        start = time.monotonic()
        tasks = []
        for index, alert_id in enumerate(ids):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(alert_id)))
        await asyncio.gather(*tasks)
    return sent


def incident_created_ms(simulator_url: str) -> dict[str, float]:
    """incident_key -> the simulator's creation time (ms since the epoch): one read of the full
    state, after the phase, so that it costs the measured pipeline nothing."""
    state = httpx.get(f"{simulator_url}/_simulator/state", timeout=60.0).json()
    return {
        incident["incident_key"]: float(incident["created_at_ms"])
        for incident in state["incidents"]
        if incident.get("incident_key")
    }


def nth_creation_s(created_ms: Iterable[float], since_s: float, n: int) -> float | None:
    """Seconds from ``since_s`` (the epoch's) to the n-th of ``created_ms`` (the simulator's
    creation times, ms since the epoch) at or after it; None if fewer than n were made since."""
    since_ms = since_s * 1000
    made = sorted(ms for ms in created_ms if ms >= since_ms)
    return (made[n - 1] - since_ms) / 1000 if len(made) >= n else None


def creations_since(simulator_url: str, since_s: float, *, events_api: bool = False) -> list[float]:
    """The simulator's creation times (ms since the epoch, its own clock) of the incidents
    (``events_api``: Events API alerts) made at or after ``since_s``, in order. The phase's end
    to the millisecond comes from them, where the polls that noticed it are 0.2 s apart or more
    (the wait itself polls sparingly: polls take the simulator's lock). One read of the full
    state, after the phase."""
    state = httpx.get(f"{simulator_url}/_simulator/state", timeout=60.0).json()
    since_ms = since_s * 1000
    return sorted(ms for ms in creation_times_ms(state, events_api=events_api) if ms >= since_ms)


def creation_curve(made_ms: list[float], since_s: float, n: int) -> dict[str, float] | None:
    """When the phase's first, 10%, 50%, 90% and n-th creations came (seconds from ``since_s``),
    and the rate between the 10% and the 90% marks: what separates a pipeline's steady rate
    from its start (the first creation's delay) and its tail. None if fewer than n were made."""
    if len(made_ms) < n or n < 1:
        return None
    since_ms = since_s * 1000

    def at(count: int) -> float:
        return round((made_ms[max(1, count) - 1] - since_ms) / 1000, 3)

    tenth, ninetieth = max(1, n // 10), max(1, n * 9 // 10)
    middle_s = (made_ms[ninetieth - 1] - made_ms[tenth - 1]) / 1000
    return {
        "first_s": at(1),
        "p10_s": at(tenth),
        "p50_s": at(n // 2),
        "p90_s": at(ninetieth),
        "last_s": at(n),
        "middle_per_s": round((ninetieth - tenth) / middle_s, 1) if middle_s > 0 else 0.0,
    }


def creation_times_ms(state: dict[str, Any], *, events_api: bool = False) -> list[float]:
    """The creation time (ms since the epoch) of every incident in the simulator's state, or of
    every Events API alert."""
    made = state["events"]["alerts"] if events_api else state["incidents"]
    return [float(item["created_at_ms"]) for item in made]


def phase_latency(run: Run) -> None:
    """A steady LATENCY_RATE alerts/s: from each webhook sent to its incident created."""
    if "worker" not in run.services.running:
        start_worker(run)
    # A long-running bridge is warm (connections open, code paths imported): a few seconds of
    # the same load first, not measured.
    warm = [f"{run.run_id}-warm{index}" for index in range(LATENCY_RATE * LATENCY_WARM_UP)]
    before = run.probe.counts()
    asyncio.run(_paced_triggers(run.webhook_url(), warm, LATENCY_RATE))
    wait_for_simulator(
        run, "latency warm-up", lambda c: c.creates - before.creates, wanted=len(warm)
    )
    ids = [f"{run.run_id}-lat{index}" for index in range(LATENCY_RATE * LATENCY_SECONDS)]
    before = run.probe.counts()
    cpu_before = run.meter.snapshot()
    sent = asyncio.run(_paced_triggers(run.webhook_url(), ids, LATENCY_RATE))
    cpu = cpu_between(cpu_before, run.meter.snapshot())
    note_interference(run, "latency", cpu, LATENCY_SECONDS)
    refused = sum(1 for _, status in sent.values() if not 200 <= status < 300)
    if refused:
        raise BenchError(f"latency: {refused} of {len(ids)} webhooks not accepted")
    wait_for_simulator(run, "latency", lambda c: c.creates - before.creates, wanted=len(ids))
    created = incident_created_ms(run.probe.base_url)
    missing = [a for a in sent if f"pagerbridge/coscale/{a}/1" not in created]
    if missing:
        raise BenchError(f"latency: {len(missing)} alerts without an incident, e.g. {missing[0]}")
    latencies = sorted(
        created[f"pagerbridge/coscale/{alert_id}/1"] - sent_at * 1000
        for alert_id, (sent_at, _) in sent.items()
    )
    run.results["latency"] = {
        "rate_per_s": LATENCY_RATE,
        "seconds": LATENCY_SECONDS,
        "alerts": len(ids),
        "webhook_to_incident_ms": _summary(latencies),
        # Per fifth of the phase: a p99 that grows over time means the bridge falls behind.
        "p99_ms_by_fifth": [
            _summary(
                [
                    created[f"pagerbridge/coscale/{alert_id}/1"] - sent[alert_id][0] * 1000
                    for alert_id in ids[part * len(ids) // 5 : (part + 1) * len(ids) // 5]
                ]
            )["p99"]
            for part in range(5)
        ],
        "stages_ms": latency_stages(run, sent, created),
        "cpu_s_by_process": cpu,
    }


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(_percentile(ordered, 50), 1),
        "p90": round(_percentile(ordered, 90), 1),
        "p99": round(_percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
    }


def latency_stages(
    run: Run, sent: dict[str, tuple[float, int]], created: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Where the latency goes, from the bridge's audit trail: webhook sent → stamped by the
    api (``received_at``) → applied by a worker (the event row's ``created_at``) → incident
    created at the simulator."""
    rows = run.database.query(
        "SELECT source_alert_id, received_at, created_at FROM alert_events "
        "WHERE kind = 'received' AND source_alert_id LIKE :prefix",
        prefix=f"{run.run_id}-lat%",
    )
    stamped, applied, delivered = [], [], []
    for alert_id, received_at, applied_at in rows:
        received_ms = _epoch_ms(received_at)
        applied_ms = _epoch_ms(applied_at)
        stamped.append(received_ms - sent[alert_id][0] * 1000)
        applied.append(applied_ms - received_ms)
        delivered.append(created[f"pagerbridge/coscale/{alert_id}/1"] - applied_ms)
    if not rows:
        return {}
    return {
        "sent_to_api": _summary(stamped),
        "api_to_applied": _summary(applied),
        "applied_to_incident": _summary(delivered),
    }


def _epoch_ms(value: datetime | str) -> float:
    """A timestamp from the bridge's tables (aware on PostgreSQL, naive UTC text on SQLite)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() * 1000


# The rate-limited drain: the simulator allows the token RATE_LIMIT_R calls a minute, below the
# bridge's own default (900), which the bridge is not told: it must learn it from the 429s.
RATE_LIMIT_R = 600
# Of backlog at R: long enough that the simulator's initial burst (R/6 calls) and the calls
# before the first 429 (when the bridge learns R) are a small part of it.
RATE_LIMIT_SECONDS = 90


def phase_rate_limited(run: Run) -> None:
    """A backlog drained against PagerDuty's rate limit: the drain rate as a share of R, and
    the share of calls answered 429."""
    wanted = RATE_LIMIT_R * RATE_LIMIT_SECONDS // 60
    httpx.post(
        f"{run.probe.base_url}/_simulator/faults",
        json={"rate_limit_per_minute": RATE_LIMIT_R},
        timeout=10.0,
    ).raise_for_status()
    before = run.probe.counts()
    # The bridge's default rate, as a user runs it: it is not told R.
    worker = start_worker(
        run, env={"PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE": f"{PRODUCTION_RATE_PER_MINUTE:g}"}
    )
    started = time.monotonic()
    sent = asyncio.run(
        _paced_triggers(
            run.webhook_url(), [f"{run.run_id}-rl{index}" for index in range(wanted)], 1000
        )
    )
    if any(not 200 <= status < 300 for _, status in sent.values()):
        raise BenchError("rate-limited: not every webhook was accepted")
    progress: list[tuple[float, int]] = []
    counts = wait_for_simulator(
        run,
        "rate-limited drain",
        lambda c: c.creates - before.creates,
        None,
        progress,
        since=started,
        wanted=wanted,
    )
    httpx.post(f"{run.probe.base_url}/_simulator/faults/clear", timeout=10.0)
    # The steady part: from half the backlog (past the worker's start, the buckets' initial
    # bursts and the first 429) to the end.
    start_s, start_n = next((t, n) for t, n in progress if n >= wanted // 2)
    end_s, end_n = progress[-1]
    rate_per_min = (end_n - start_n) / (end_s - start_s) * 60 if end_s > start_s else None
    calls = sum(counts.calls.values()) - sum(before.calls.values())
    limited = counts.rate_limited - before.rate_limited
    run.results["rate_limited"] = {
        "limit_per_minute": RATE_LIMIT_R,
        "bridge_rate_per_minute": PRODUCTION_RATE_PER_MINUTE,
        "alerts": wanted,
        "seconds": round(counts.observed_at - started, 2),
        "drain_per_minute": round(rate_per_min, 1) if rate_per_min else None,
        "drain_share_of_limit": round(rate_per_min / RATE_LIMIT_R, 3) if rate_per_min else None,
        "calls": calls,
        "answered_429": limited,
        "share_429": round(limited / calls, 4) if calls else None,
        "progress": progress,
    }
    worker.check_alive()


# --------------------------------------------------------------------------------------------
# Storm: N alerts at once against PagerDuty's limits and latency, the bridge then Alertmanager
# --------------------------------------------------------------------------------------------


def storm_limits(run: Run) -> None:
    """PagerDuty's latency and limits on the simulator; every bucket starts full."""
    httpx.post(
        f"{run.probe.base_url}/_simulator/faults",
        json={
            "latency_ms": storm.LATENCY_MS,
            "rate_limit_per_minute": run.options.storm_limit,
            "events_rate_limit_per_minute": storm.EVENTS_LIMIT_PER_MINUTE,
        },
        timeout=10.0,
    ).raise_for_status()


def storm_state(run: Run) -> dict[str, Any]:
    answer = httpx.get(f"{run.probe.base_url}/_simulator/state", timeout=60.0)
    answer.raise_for_status()
    state: dict[str, Any] = answer.json()
    return state


def storm_send(run: Run, url: str, bodies: list[tuple[str, Any]], what: str) -> dict[str, float]:
    """Send a storm's webhooks; per alert id, when (ms since the epoch) it went."""
    headers = {"Authorization": f"Bearer {INGRESS_TOKEN}"} if url == run.webhook_url() else {}
    sent = storm.post_all(url, bodies, headers)
    refused = sorted({status for _, status in sent.values() if not 200 <= status < 300})
    if refused:
        raise BenchError(f"{what}: webhooks answered {refused}")
    return {key: at for key, (at, _) in sent.items()}


def storm_burst(
    run: Run, side: str, url: str, bodies: list[tuple[str, Any]], buckets: int
) -> dict[str, Any]:
    """N triggers at once; the time to the N-th incident (the simulator's clock), the share of
    the physical limit, and the calls it took."""
    events_api = side == "alertmanager"
    wanted = len(bodies)
    storm_limits(run)
    before = run.probe.counts()
    started_s = time.time()
    started = time.monotonic()
    storm_send(run, url, bodies, f"{side} storm")

    def made(counts: SimulatorCounts) -> int:
        if events_api:
            return counts.events_alerts_opened - before.events_alerts_opened
        return counts.creates - before.creates

    counts = wait_for_simulator(run, f"{side} storm", made, since=started, wanted=wanted)
    created = creations_since(run.probe.base_url, started_s, events_api=events_api)
    seconds = nth_creation_s(created, started_s, wanted) or counts.observed_at - started
    per_minute = storm.EVENTS_LIMIT_PER_MINUTE if events_api else run.options.storm_limit
    physical = storm.physical_limit_s(wanted, per_minute, buckets)
    calls = sum(counts.calls.values()) - sum(before.calls.values())
    limited = counts.rate_limited - before.rate_limited
    return {
        "alerts": wanted,
        "credentials": buckets,
        "limit_per_minute_each": per_minute,
        "physical_limit_s": round(physical, 2),
        "seconds_to_all_incidents": round(seconds, 2),
        "share_of_physical_limit": round(physical / seconds, 3) if seconds > 0 else None,
        "calls": calls,
        "answered_429": limited,
        "share_429": round(limited / calls, 4) if calls else None,
        "per_alert_429": round(limited / wanted, 3),
        "calls_per_alert": round(calls / wanted, 3),
        "creation_curve": creation_curve(created, started_s, wanted),
    }


def storm_mixed(
    run: Run,
    side: str,
    url: str,
    triggers: list[tuple[str, Any]],
    resolves: Callable[[], list[tuple[str, Any]]],
) -> dict[str, Any]:
    """N triggers, then resolves of the first half while the creates still drain: how long
    until no incident is open whose alert resolved, and how many were created for nothing."""
    events_api = side == "alertmanager"
    ids = {key for key, _ in triggers}
    storm_limits(run)
    before = run.probe.counts()
    started_ms = time.time() * 1000
    started = time.monotonic()
    storm_send(run, url, triggers, f"{side} mixed storm")
    resolve_bodies = resolves()  # built now: Alertmanager's endsAt must follow startsAt
    resolved = {key for key, _ in resolve_bodies}
    firing = ids - resolved
    resolves_sent = storm_send(run, url, resolve_bodies, f"{side} mixed storm resolves")

    def open_now(counts: SimulatorCounts) -> int:
        if events_api:
            opened = counts.events_alerts_opened - before.events_alerts_opened
            closed = counts.events_alerts_resolved - before.events_alerts_resolved
        else:
            opened = counts.creates - before.creates
            closed = counts.resolved - before.resolved
        return opened - closed

    deadline = started + run.options.phase_timeout
    while True:
        for service in run.services.running.values():
            service.check_alive()
        counts = run.probe.counts()
        # Only when the counters say it may be over is the whole state read (it is large).
        if open_now(counts) == len(firing):
            state = storm_state(run)
            made = (storm.events_alerts if events_api else storm.bridge_incidents)(state, ids)
            if storm.storm_done(made, firing, resolved):
                break
        if time.monotonic() > deadline:
            raise BenchError(f"{side} mixed storm: not over after {run.options.phase_timeout}s")
        time.sleep(0.5)
    calls = sum(counts.calls.values()) - sum(before.calls.values())
    limited = counts.rate_limited - before.rate_limited
    return {
        "triggers": len(triggers),
        "resolves": len(resolved),
        **storm.mixed_figures(made, firing, resolves_sent, started_ms),
        "calls": calls,
        "answered_429": limited,
        "share_429": round(limited / calls, 4) if calls else None,
    }


def phase_storm(run: Run) -> None:
    """An alert storm at PagerDuty's limits and latency: the bridge (its default rate, not
    told the limit), then Alertmanager 0.25 with as many Events API keys as give it the same
    budget (PagerDuty limits each to about 120 events a minute)."""
    options = run.options
    wanted = options.storm_alerts
    results: dict[str, Any] = {
        "alerts": wanted,
        "latency_ms": storm.LATENCY_MS,
        "rest_limit_per_minute": options.storm_limit,
        "events_limit_per_minute_per_key": storm.EVENTS_LIMIT_PER_MINUTE,
        "bridge_rate_per_minute": PRODUCTION_RATE_PER_MINUTE,
    }
    run.results["storm"] = results
    start_worker(
        run,
        env={"PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE": f"{PRODUCTION_RATE_PER_MINUTE:g}"},
        intake=options.storm_intake,
    )
    results["intake_worker"] = options.storm_intake
    url = run.webhook_url()

    def coscale(batch: str, action: str, count: int) -> list[tuple[str, Any]]:
        ids = [f"{run.run_id}{batch}{index}" for index in range(count)]
        return [(alert_id, storm.coscale_body(alert_id, action)) for alert_id in ids]

    results["bridge"] = storm_burst(run, "bridge", url, coscale("s", "triggered", wanted), 1)
    time.sleep(WARM_UP_SETTLE_S)
    results["bridge_mixed"] = storm_mixed(
        run,
        "bridge",
        url,
        coscale("m", "triggered", wanted),
        lambda: coscale("m", "resolved", wanted // 2),
    )
    worker = run.services["worker"]
    worker.check_alive()

    binary = alertmanager.find_binary()
    if not options.storm_peer:
        return
    if binary is None:
        run.notes.append(f"storm: Alertmanager not measured: {alertmanager.INSTALL_HINT}")
        return
    if "peak_rss_mib" not in run.results:
        read_memory(run)
    for name in ("worker", "intake", "api", "beat"):
        run.services.stop(name)
    keys = storm.events_keys_for(options.storm_limit)
    # group_interval 1s: a resolve goes out a second after it came, the soonest Alertmanager
    # sends a group's next notification.
    service, am_url = alertmanager.start(
        run.services, run.workdir, binary, run.probe.base_url, keys=keys, group_interval="1s"
    )
    results["alertmanager_version"] = alertmanager.version(binary)
    alerts_url = f"{am_url}/api/v2/alerts"

    def prometheus(batch: str, count: int, ends_at: str | None = None) -> list[tuple[str, Any]]:
        ids = [f"{run.run_id}{batch}{index}" for index in range(count)]
        return [
            (alert_id, storm.alertmanager_body(alert_id, index % keys, ends_at))
            for index, alert_id in enumerate(ids)
        ]

    results["alertmanager"] = storm_burst(
        run, "alertmanager", alerts_url, prometheus("as", wanted), keys
    )
    time.sleep(WARM_UP_SETTLE_S)

    def ended_now() -> list[tuple[str, Any]]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return prometheus("am", wanted // 2, ends_at=now)

    results["alertmanager_mixed"] = storm_mixed(
        run, "alertmanager", alerts_url, prometheus("am", wanted), ended_now
    )
    service.check_alive()
    run.services.stop("alertmanager")
    httpx.post(f"{run.probe.base_url}/_simulator/faults/clear", timeout=10.0)


def wait_for_quiet_simulator(run: Run, wanted: int, quiet_s: float = 5.0) -> int:
    """Wait until the simulator holds ``wanted`` Events API alerts, or their count stopped
    growing for ``quiet_s``; return the count."""
    last, changed = -1, time.monotonic()
    while True:
        value = run.probe.counts().events_alerts_opened
        if value >= wanted:
            return value
        if value != last:
            last, changed = value, time.monotonic()
        elif time.monotonic() - changed > quiet_s:
            return value
        time.sleep(0.5)


def phase_alertmanager(run: Run) -> None:
    """The peer under loads 1 and 2: Prometheus Alertmanager, its PagerDuty receiver pointed
    at the simulator's Events API v2. The bridge is stopped first: only the peer runs."""
    binary = alertmanager.find_binary()
    if binary is None or run.wrk is None:
        missing = "wrk" if binary is not None else alertmanager.INSTALL_HINT
        run.notes.append(f"Alertmanager not measured: {missing}")
        return
    if "peak_rss_mib" not in run.results:
        read_memory(run)
    for name in ("worker", "api", "beat"):
        run.services.stop(name)
    options = run.options
    service, url = alertmanager.start(run.services, run.workdir, binary, run.probe.base_url)
    results: dict[str, Any] = {"version": alertmanager.version(binary)}
    run.results["alertmanager"] = results

    cpu_before = run.meter.snapshot()
    ingest = run_wrk(
        run.wrk,
        f"{url}/api/v2/alerts",
        options.concurrency,
        options.duration,
        [f"{run.run_id}-am"],
        run.workdir / "wrk.log",
        target="alertmanager",
    )
    cpu = cpu_between(cpu_before, run.meter.snapshot())
    results["ingest"] = {
        "clients": options.concurrency,
        "seconds": round(ingest.elapsed_s, 2),
        "requests": ingest.completed,
        "accepted": ingest.accepted,
        "accepted_per_s": round(ingest.accepted_per_s, 1),
        "errors": ingest.errors,
        "latency_ms": {name: round(value, 2) for name, value in ingest.latency_ms.items()},
        # Unlike the bridge's api, Alertmanager sends what it takes at once: this CPU
        # includes its deliveries to the simulator during the phase.
        "cpu_s_per_1000_alerts": round(
            cpu.get("alertmanager", 0.0) / max(1, ingest.accepted) * 1000, 2
        ),
        "cpu_s_by_process": cpu,
    }
    # Let it send what it took, so the delivery figure starts from a quiet peer.
    results["ingest"]["delivered_after"] = wait_for_quiet_simulator(run, ingest.accepted)
    warm_up = options.live_warm_up
    if warm_up:  # as the bridge's live phase has, though Alertmanager is warm from its ingest
        base = run.probe.counts()
        sent = run_wrk(
            run.wrk,
            f"{url}/api/v2/alerts",
            FEEDER_CONCURRENCY,
            options.phase_timeout,
            [f"{run.run_id}-amwarm", "", "triggered", str(warm_up)],
            run.workdir / "wrk.log",
            done_file=run.workdir / "wrk-alertmanager-warm.done",
            target="alertmanager",
        )
        if sent.accepted != warm_up:
            raise BenchError(f"alertmanager warm-up: only {sent.accepted} of {warm_up} accepted")
        wait_for_simulator(
            run,
            "alertmanager warm-up",
            lambda c: c.events_alerts_opened - base.events_alerts_opened,
            wanted=warm_up,
        )
        time.sleep(WARM_UP_SETTLE_S)

    before = run.probe.counts()
    cpu_before = run.meter.snapshot()
    started, started_s = time.monotonic(), time.time()
    sent = run_wrk(
        run.wrk,
        f"{url}/api/v2/alerts",
        FEEDER_CONCURRENCY,
        options.phase_timeout,
        [f"{run.run_id}-amlive", "", "triggered", str(options.alerts)],
        run.workdir / "wrk.log",
        done_file=run.workdir / "wrk-alertmanager.done",
        target="alertmanager",
    )
    if sent.accepted != options.alerts:
        raise BenchError(f"alertmanager: only {sent.accepted} of {options.alerts} accepted")
    counts = wait_for_simulator(
        run,
        "alertmanager delivery",
        lambda c: c.events_alerts_opened - before.events_alerts_opened,
        since=started,
    )
    polled = counts.observed_at - started
    cpu_after = run.meter.snapshot()
    cpu = cpu_between(cpu_before, cpu_after)
    made = creations_since(run.probe.base_url, started_s, events_api=True)
    exact = nth_creation_s(made, started_s, options.alerts)
    seconds = exact or polled
    results["live"] = {
        "alerts": options.alerts,
        "warm_up_alerts": warm_up,
        "send_seconds": round(sent.elapsed_s, 2),
        "seconds_to_all_created": round(seconds, 3),
        "end_from": "simulator clock" if exact else "poll",
        "seconds_to_the_poll_that_saw_it": round(polled, 2),
        "creation_curve": creation_curve(made, started_s, options.alerts),
        "incidents_per_s": round(options.alerts / seconds, 1),
        "cpu_s_per_1000_alerts": round(cpu.get("alertmanager", 0.0) / options.alerts * 1000, 2),
        "cpu_s_by_process": cpu,
        "context_switches_per_alert": switches_per_alert(cpu_before, cpu_after, options.alerts),
    }
    results["peak_rss_mib"] = peak_rss_mib(service.process.pid)
    results["pss_mib"] = pss_mib(service.process.pid)
    service.check_alive()


def finish(run: Run) -> None:
    """Read peak memory while everything still runs, then stop the worker so that its
    database backends exit and report their last commits (the resolve phase's count)."""
    for service in run.services.running.values():
        service.check_alive()
    read_memory(run)
    run.services.stop("worker")
    resolve = run.results["resolve"]
    resolve["database_commits_per_resolve"] = commits_per_alert(
        resolve.pop("database_commits_before"),
        settled_commits(run.database, backends_exited=True),
        run.options.alerts,
    )


def read_memory(run: Run) -> None:
    """Each process's memory, read before stopping them: VmHWM (peak RSS) and PSS now.

    The pool's peak RSS sums the children's peaks, which counts the pages they share with the
    parent after fork() once per child; PSS divides shared pages among their sharers, so the
    PSS total is what the bridge occupies."""
    peaks: dict[str, float | None] = {}
    shares: dict[str, float | None] = {}
    for name, service in run.services.running.items():
        pid = service.process.pid
        peaks[name] = _round(peak_rss_mib(pid))
        shares[name] = _round(pss_mib(pid))
        if name == "worker":
            children = [child for child in process_tree(pid) if child != pid]
            child_peaks = [peak_rss_mib(child) or 0.0 for child in children]
            peaks["worker (pool, sum)"] = _round(sum(child_peaks))
            peaks["worker (pool, largest child)"] = _round(max(child_peaks, default=0.0))
            shares["worker (pool, sum)"] = _round(sum(pss_mib(c) or 0.0 for c in children))
    run.results["peak_rss_mib"] = peaks
    run.results["pss_mib"] = shares


def _round(value: float | None, digits: int = 1) -> float | None:
    return round(value, digits) if value is not None else None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    return f"{value:,}{unit}"


def markdown_tables(report: dict[str, Any]) -> str:
    """The figures as a markdown table, then where the CPU went in each phase."""
    results = report["results"]
    settings = report["settings"]
    rows: list[tuple[str, str, str]] = []
    ingest = results.get("ingest")
    if ingest:
        ingest_cpu = ingest["cpu_s_by_process"]
        load_generator_cpu = ingest_cpu.get(REAPED, 0.0) + ingest_cpu.get(HARNESS, 0.0)
        rows += [
            (
                "Ingest: webhooks accepted/s",
                _fmt(ingest["accepted_per_s"], "/s"),
                f"{ingest['clients']} clients, {ingest['seconds']} s, worker stopped; "
                f"{ingest['tool']}",
            ),
            ("Ingest: latency p50", _fmt(ingest["latency_ms"]["p50"], " ms"), ""),
            (
                "Ingest: latency p99",
                _fmt(ingest["latency_ms"]["p99"], " ms"),
                f"max {_fmt(ingest['latency_ms']['max'], ' ms')}",
            ),
            (
                "Ingest: requests / non-2xx or errors",
                f"{ingest['requests']:,} / {ingest['requests'] - ingest['accepted']:,}",
                f"errors {ingest['errors'] or 'none'}; "
                f"{ingest['events_queued']:,} events in "
                f"{ingest['messages_queued']:,} queue messages after (then discarded)",
            ),
            (
                "Ingest: api CPU",
                f"{ingest['api_cpu_share_of_one_cpu'] * 100:.0f}% of one CPU",
                f"{_fmt(ingest['api_cpu_s_per_1000_webhooks'], ' CPU s')} per 1,000 webhooks; "
                f"load generator {_fmt(load_generator_cpu, ' CPU s')}",
            ),
        ]
    backlog = results.get("backlog")
    if backlog:
        rows.append(
            (
                "Backlog queued",
                f"{backlog['alerts']:,} in {backlog['seconds']} s",
                f"{backlog['clients']} clients ({_fmt(backlog['accepted_per_s'], '/s')}), "
                f"worker stopped; {backlog['tool'].split(',')[0]}",
            )
        )
    delivery = results.get("delivery")
    if delivery:
        rows += [
            (
                "Delivery: incidents/s (steady)",
                _fmt(delivery["incidents_per_s"], "/s"),
                f"{delivery['steady_alerts']:,} incidents in {delivery['steady_seconds']} s "
                f"from the first one seen; worker --concurrency {settings['workers']}; "
                f"{delivery['pagerduty_error_answers']} PagerDuty error answers",
            ),
            *(
                [
                    (
                        "Delivery: database commits per alert",
                        _fmt(delivery["database_commits_per_alert"]),
                        "pg_stat_database.xact_commit of the bench database over the phase / N "
                        "(sweeper included)",
                    )
                ]
                if delivery["database_commits_per_alert"] is not None
                else []
            ),
            (
                "Delivery: incidents/s incl. worker start",
                _fmt(delivery["incidents_per_s_including_worker_start"], "/s"),
                f"{delivery['alerts']:,} in {delivery['seconds_including_worker_start']} s; "
                f"first incident seen {delivery['first_incident_seen_s']} s after start",
            ),
        ]
    resolve = results.get("resolve")
    if resolve:
        rows += [
            (
                "Resolve: time to all resolved",
                _fmt(resolve["seconds_to_all_resolved"], " s"),
                f"{resolve['alerts']:,} resolves, burst sent in {resolve['burst_seconds']} s "
                f"({resolve['burst_tool'].split(',')[0]}); "
                f"{_fmt(resolve['resolves_per_s'], '/s')}",
            ),
            (
                "Resolve: PagerDuty calls per resolve",
                f"{resolve['put_calls_per_resolve']:.3f}",
                "PUT calls / N; all calls: "
                + ", ".join(f"{n} x{c:,}" for n, c in resolve["pagerduty_calls"].items()),
            ),
            *(
                [
                    (
                        "Resolve: database commits per resolve",
                        _fmt(resolve["database_commits_per_resolve"]),
                        "as for delivery",
                    )
                ]
                if resolve["database_commits_per_resolve"] is not None
                else []
            ),
        ]
    live = results.get("live")
    if live:
        rows.append(
            (
                "Live delivery: incidents/s",
                _fmt(live["incidents_per_s"], "/s"),
                f"{live['alerts']:,} triggers sent ({FEEDER_CONCURRENCY} clients, "
                f"{live['send_seconds']} s) with the worker running: first webhook to last "
                f"incident {live['seconds_to_all_created']} s; "
                f"{_fmt(live['bridge_cpu_s_per_1000_alerts'], ' CPU s')} per 1,000",
            )
        )
    latency = results.get("latency")
    if latency:
        figures = latency["webhook_to_incident_ms"]
        rows += [
            (
                f"Latency at {latency['rate_per_s']}/s: p50",
                _fmt(figures["p50"], " ms"),
                f"webhook sent → incident created (simulator's clock), "
                f"{latency['alerts']:,} alerts over {latency['seconds']} s",
            ),
            (
                f"Latency at {latency['rate_per_s']}/s: p99",
                _fmt(figures["p99"], " ms"),
                f"p90 {_fmt(figures['p90'], ' ms')}, max {_fmt(figures['max'], ' ms')}",
            ),
        ]
    limited = results.get("rate_limited")
    if limited:
        share = limited["drain_share_of_limit"]
        share_429 = limited["share_429"]
        rows += [
            (
                f"Rate-limited drain (R = {limited['limit_per_minute']}/min)",
                f"{share * 100:.1f}% of R" if share is not None else "n/a",
                f"{_fmt(limited['drain_per_minute'], '/min')} steady; {limited['alerts']} "
                f"alerts in {limited['seconds']} s; bridge at its default "
                f"{limited['bridge_rate_per_minute']:.0f}/min, not told R",
            ),
            (
                "Rate-limited drain: calls answered 429",
                f"{share_429 * 100:.2f}%" if share_429 is not None else "n/a",
                f"{limited['answered_429']} of {limited['calls']} calls",
            ),
        ]
    cost = results.get("cost")
    if cost:
        database_cpu = cost["database_cpu_s_per_1000_alerts"]
        rows.append(
            (
                "Cost: CPU s per 1,000 alerts",
                _fmt(cost["bridge_cpu_s_per_1000_alerts"], " s"),
                "api + worker (main + pool) + beat, user+sys, steady delivery window; "
                f"{_fmt(cost['bridge_cpu_s_per_1000_alerts_including_worker_start'], ' s')} "
                "incl. worker start"
                + (
                    f"; PostgreSQL backends +{_fmt(database_cpu, ' s')}"
                    if database_cpu is not None
                    else ""
                ),
            )
        )
    if resolve:
        rows.append(
            (
                "Cost: CPU s per 1,000 resolves",
                _fmt(resolve["bridge_cpu_s_per_1000_resolves"], " s"),
                "api + worker + beat from the burst to the last resolve (api takes the burst)",
            )
        )
    for name, value in (results.get("peak_rss_mib") or {}).items():
        rows.append((f"Peak RSS: {name}", _fmt(value, " MiB"), "VmHWM"))
    shares = results.get("pss_mib") or {}
    if shares:
        rows.append(
            (
                "Memory (PSS) at the end, all bridge processes",
                _fmt(_bridge_total(shares), " MiB"),
                "shared pages divided among their sharers: "
                + ", ".join(f"{name} {_fmt(value, '')}" for name, value in shares.items()),
            )
        )
    rate = settings["pagerduty_rate_per_minute"]
    rows.append(
        (
            "Settings: bridge's PagerDuty rate limit",
            "lifted" if rate >= LIFTED_RATE_PER_MINUTE else f"{rate:,.0f}/min",
            f"PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE={rate:g} (bridge default "
            f"{PRODUCTION_RATE_PER_MINUTE:.0f}); simulator latency "
            f"{settings['pagerduty_latency_ms']} ms per call; {settings['database']}",
        )
    )
    build = report["machine"].get("python_build")
    if build:
        rows.append(
            (
                "Machine: Python",
                build["implementation"],
                f"{build['executable']}: configured with PGO "
                f"{'yes' if build['configured_pgo'] else 'no'}, LTO "
                f"{'yes' if build['configured_lto'] else 'no'}; libpython "
                f"{'shared' if build['libpython_shared'] else 'linked in'}; every Python "
                "process of the run (bridge and simulator) runs on it",
            )
        )
    busy = report["machine"].get("cpu_busy_before_start_percent")
    if busy is not None:
        rows.append(
            (
                "Machine: busy before start",
                f"{busy:.0f}% of all CPUs",
                "sampled for 1 s before anything started; other jobs skew every figure",
            )
        )
    lines = ["| figure | value | note |", "|---|---|---|"]
    lines += [f"| {figure} | {value} | {note} |" for figure, value, note in rows]
    lines += _peer_table(results)
    lines += _storm_table(results)
    lines += _cpu_table(results)
    lines += _switches_table(results)
    return "\n".join(lines)


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours and theirs else "n/a"


def _peer_table(results: dict[str, Any]) -> list[str]:
    """The bridge and Alertmanager side by side, under the same loads."""
    peer = results.get("alertmanager")
    if not peer or "ingest" not in peer:
        return []
    ingest, theirs = results.get("ingest", {}), peer["ingest"]
    lines = [
        "",
        f"Side by side with {peer['version']} (same machine, same run, same simulator; "
        "ratio = pagerbridge / Alertmanager, higher is better for rates):",
        "",
        "| figure | pagerbridge | Alertmanager | ratio |",
        "|---|---|---|---|",
        f"| ingest: accepted/s (32 clients, one alert per request) "
        f"| {_fmt(ingest.get('accepted_per_s'), '/s')} | {_fmt(theirs['accepted_per_s'], '/s')} "
        f"| {_ratio(ingest.get('accepted_per_s'), theirs['accepted_per_s'])} |",
        f"| ingest: latency p50 / p99 "
        f"| {_fmt(ingest.get('latency_ms', {}).get('p50'), ' ms')} / "
        f"{_fmt(ingest.get('latency_ms', {}).get('p99'), ' ms')} "
        f"| {_fmt(theirs['latency_ms']['p50'], ' ms')} / {_fmt(theirs['latency_ms']['p99'], ' ms')}"
        " | |",
    ]
    live, their_live = results.get("live"), peer.get("live")
    if live and their_live:
        lines += [
            f"| delivery: incidents/s, {live['alerts']:,} alerts sent with everything running "
            f"| {_fmt(live['incidents_per_s'], '/s')} "
            f"| {_fmt(their_live['incidents_per_s'], '/s')} "
            f"| {_ratio(live['incidents_per_s'], their_live['incidents_per_s'])} |",
            f"| delivery: CPU s per 1,000 alerts "
            f"| {_fmt(live['bridge_cpu_s_per_1000_alerts'], ' s')} "
            f"| {_fmt(their_live['cpu_s_per_1000_alerts'], ' s')} | |",
            f"| delivery: context switches per alert, the whole machine "
            f"| {_fmt(_machine_switches(live))} | {_fmt(_machine_switches(their_live))} | |",
        ]
    delivery = results.get("delivery")
    if delivery and their_live:
        lines.append(
            f"| delivery: pagerbridge draining a queued backlog (steady) "
            f"| {_fmt(delivery['incidents_per_s'], '/s')} | (no equivalent) "
            f"| {_ratio(delivery['incidents_per_s'], their_live['incidents_per_s'])} |"
        )
    lines.append(
        f"| peak RSS, all processes | {_fmt(_bridge_total(results.get('peak_rss_mib')), ' MiB')} "
        f"| {_fmt(peer.get('peak_rss_mib'), ' MiB')} | |"
    )
    lines.append(
        f"| memory (PSS) at the end, all processes | "
        f"{_fmt(_bridge_total(results.get('pss_mib')), ' MiB')} "
        f"| {_fmt(peer.get('pss_mib'), ' MiB')} | |"
    )
    return lines


def _storm_table(results: dict[str, Any]) -> list[str]:
    """The storm phase, the bridge and Alertmanager side by side."""
    found = results.get("storm")
    if not found or "bridge" not in found:
        return []
    sides = [("pagerbridge", "bridge")]
    if "alertmanager" in found:
        sides.insert(0, (found.get("alertmanager_version", "Alertmanager"), "alertmanager"))
    lines = [
        "",
        f"Storm: {found['alerts']} alerts at once, {found['latency_ms']} ms an answer, "
        f"{found['rest_limit_per_minute']} REST calls/min per token "
        f"({found['events_limit_per_minute_per_key']}/min per Events API key); the bridge at "
        f"its default {found['bridge_rate_per_minute']:.0f}/min, not told the limit",
        "",
        "| | seconds to all incidents | physical limit | share of it | 429s per alert "
        "| share of calls 429 | calls per alert |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in sides:
        side = found.get(key)
        if not side:
            continue
        share = side["share_of_physical_limit"]
        lines.append(
            f"| {label} ({side['credentials']} key{'s' if side['credentials'] > 1 else ''}) "
            f"| {side['seconds_to_all_incidents']} | {side['physical_limit_s']} s "
            f"| {'n/a' if share is None else f'{share * 100:.1f}%'} | {side['per_alert_429']} "
            f"| {_fmt(side['share_429'])} | {side['calls_per_alert']} |"
        )
    lines += [
        "",
        "Mixed storm: N triggers, then resolves of the first N/2 while creates drain",
        "",
        "| | seconds until no incident open whose alert resolved | incidents for resolved "
        "alerts | created after their resolve | seconds to all firing incidents "
        "| share of calls 429 |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in sides:
        mixed = found.get(f"{key}_mixed")
        if not mixed:
            continue
        lines.append(
            f"| {label} | {mixed['seconds_until_no_resolved_alert_open']} "
            f"| {mixed['incidents_for_resolved_alerts']} | {mixed['created_after_their_resolve']} "
            f"| {_fmt(mixed['seconds_to_all_firing_incidents'])} | {_fmt(mixed['share_429'])} |"
        )
    return lines


def _machine_switches(phase: dict[str, Any]) -> float | None:
    count = phase.get("context_switches_per_alert", {}).get(MACHINE, {}).get("all")
    return None if count is None else float(count)


def _switches_table(results: dict[str, Any]) -> list[str]:
    """Context switches per alert in the two live phases, by process: each one a process
    waiting (voluntary) or preempted (involuntary), and on a VM a wake-up costs CPU."""
    phases = [
        (title, phase["context_switches_per_alert"])
        for title, phase in (
            ("pagerbridge", results.get("live") or {}),
            ("Alertmanager", (results.get("alertmanager") or {}).get("live") or {}),
        )
        if phase.get("context_switches_per_alert")
    ]
    if not phases:
        return []
    names: list[str] = []
    for _, switches in phases:
        names += [name for name in switches if name not in names and name != MACHINE]
    lines = [
        "",
        "Context switches per alert in the live phases (voluntary / involuntary; live threads "
        "only):",
        "",
        "| process | " + " | ".join(title for title, _ in phases) + " |",
        "|---|" + "---|" * len(phases),
    ]
    for name in [*names, MACHINE]:
        cells = []
        for _, switches in phases:
            counts = switches.get(name)
            if counts is None:
                cells.append("")
            elif "all" in counts:
                cells.append(f"{counts['all']:.2f} (all)")
            else:
                cells.append(f"{counts['voluntary']:.2f} / {counts['involuntary']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _bridge_total(per_process: dict[str, float | None] | None) -> float | None:
    """The bridge's processes together (not the simulator). The pool's children are in
    "worker (pool, sum)"; the largest child is one of them."""
    if not per_process:
        return None
    return sum(
        value or 0.0
        for name, value in per_process.items()
        if name not in ("simulator", "worker (pool, largest child)")
    )


def _cpu_table(results: dict[str, Any]) -> list[str]:
    """CPU seconds (and share of one CPU) by process, one column per phase."""
    phases: list[tuple[str, dict[str, float], float]] = []
    if "ingest" in results:
        ingest = results["ingest"]
        phases.append(("ingest", ingest["cpu_s_by_process"], ingest["seconds"]))
    if "delivery" in results:
        delivery = results["delivery"]
        phases.append(
            ("delivery (steady)", delivery["cpu_s_steady_by_process"], delivery["steady_seconds"])
        )
    if "resolve" in results:
        resolve = results["resolve"]
        phases.append(("resolve", resolve["cpu_s_by_process"], resolve["seconds_to_all_resolved"]))
    if not phases:
        return []
    names: list[str] = []
    for _, cpu, _ in phases:
        names += [name for name in cpu if name not in names]
    # The bridge first, the machine's total last.
    order = [*BRIDGE_GROUPS, "simulator", "postgres (bench db backends)"]
    names.sort(key=lambda name: (name == MACHINE, order.index(name) if name in order else 99))
    lines = [
        "",
        "CPU seconds by process in each phase (in brackets: % of one CPU over the phase):",
        "",
        "| process | "
        + " | ".join(f"{title} ({seconds} s)" for title, _, seconds in phases)
        + " |",
        "|---|" + "---|" * len(phases),
    ]
    for name in names:
        cells = []
        for _, cpu, seconds in phases:
            value = cpu.get(name, 0.0)
            cells.append(f"{value:.2f} ({value / seconds * 100:.0f}%)" if seconds else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def wait_for_quiet(seconds: float) -> float:
    """Wait up to ``seconds`` for the machine to be quiet; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        busy = busy_percent(2.0)
        if busy < BUSY_WARNING_PERCENT:
            break
        print(f"[bench] machine {busy:.0f}% busy, waiting…", file=sys.stderr, flush=True)
    return round(time.monotonic() - started, 1)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run_bench(options: Options, workdir: Path, report: dict[str, Any]) -> None:
    """Set up, run every phase, tear down. Results land in ``report`` as they come, so a
    failure still leaves the figures measured so far."""
    wrk = shutil.which("wrk") if options.load_generator != "httpx" else None
    if options.load_generator == "wrk" and wrk is None:
        raise BenchError("--load-generator wrk, but wrk is not on PATH (apt-get install wrk)")
    redis_client = redis.Redis.from_url(options.redis_url, socket_connect_timeout=3)
    try:
        redis_client.ping()
    except (redis.RedisError, OSError) as exc:
        raise BenchError(f"Redis at {options.redis_url}: {exc}") from exc
    redis_client.flushdb()
    redis_info = redis_client.info("server")
    with ExitStack() as cleanup:
        cleanup.callback(redis_client.close)
        cleanup.callback(redis_client.flushdb)
        database = cleanup.enter_context(
            fresh_database(options.database, options.postgres_admin_url, workdir)
        )
        report["machine"]["database_server"] = database.server_version
        report["machine"]["redis_server"] = f"Redis {redis_info.get('redis_version', '?')}"
        sim_port, api_port = free_port(), free_port()
        simulator_url = f"http://127.0.0.1:{sim_port}"
        env = bridge_env(
            database_url=database.url,
            redis_url=options.redis_url,
            simulator_url=simulator_url,
            workdir=workdir,
            rate_per_minute=options.rate_per_minute,
            extra={"PAGERBRIDGE_PAGERDUTY_CALLS_IN_FLIGHT": str(options.calls_in_flight)},
        )
        migrate(env, workdir)

        services = Services(env, workdir)
        cleanup.callback(services.stop_all)
        probe = SimulatorProbe(simulator_url)
        cleanup.callback(probe.close)
        simulator = services.start(
            "simulator",
            [
                "simulate",
                f"--port={sim_port}",
                f"--token={PAGERDUTY_TOKEN}",
                *(
                    [f"--latency-ms={options.pagerduty_latency_ms}"]
                    if options.pagerduty_latency_ms
                    else []
                ),
            ],
        )
        wait_until(simulator, lambda: http_ok(f"{simulator_url}/_simulator/health"))
        # Beat before the api: it has no health check, and its start-up (imports) then
        # overlaps the api's instead of landing in the ingest phase's CPU figures.
        beat = services.start("beat", ["beat"])
        api_url = f"http://127.0.0.1:{api_port}"
        api = services.start(
            "api", ["api", "--port", str(api_port), "--workers", str(options.api_workers)]
        )
        wait_until(api, lambda: http_ok(f"{api_url}/healthz"))
        time.sleep(1.0)
        beat.check_alive()

        run = Run(
            options=options,
            run_id=uuid.uuid4().hex[:8],
            workdir=workdir,
            env=env,
            services=services,
            database=database,
            redis_client=redis_client,
            probe=probe,
            meter=CpuMeter(services, database, int(redis_info.get("process_id", 0)) or None),
            api_url=api_url,
            wrk=wrk,
            results=report["results"],
            notes=report["notes"],
        )
        phases: dict[str, Callable[[Run], None]] = {
            "ingest": phase_ingest,
            "backlog": phase_backlog,
            "delivery": phase_delivery,
            "resolve": phase_resolve,
            "live": phase_live,
            "latency": phase_latency,
            "rate-limited": phase_rate_limited,
            "storm": phase_storm,
            "alertmanager": phase_alertmanager,
        }
        for name in options.phases:
            print(f"[bench] {name}…", file=sys.stderr, flush=True)
            phases[name](run)
            if name == "resolve":
                # Stops the worker, so that the resolve phase's commits can be counted.
                finish(run)
        if "peak_rss_mib" not in run.results:
            read_memory(run)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        with single_run():
            return run_and_report(options)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


def run_and_report(options: Options) -> int:
    waited_s = wait_for_quiet(options.wait_quiet) if options.wait_quiet > 0 else 0.0
    clean_up_on_signals()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "machine": {**machine_info(), "waited_for_quiet_s": waited_s},
        "settings": {
            "alerts": options.alerts,
            "concurrency": options.concurrency,
            "duration_s": options.duration,
            "database": options.database,
            "workers": options.workers,
            "calls_in_flight": options.calls_in_flight,
            "api_workers": options.api_workers,
            "load_generator": options.load_generator,
            "pagerduty_rate_per_minute": options.rate_per_minute,
            "pagerduty_latency_ms": options.pagerduty_latency_ms,
            "phase_timeout_s": options.phase_timeout,
            "phases": list(options.phases),
            "storm_limit_per_minute": options.storm_limit,
            "redis_url": options.redis_url,
            "feeder_concurrency": FEEDER_CONCURRENCY,
            "wrk_threads": WRK_THREADS,
            "cpu_count": os.cpu_count(),
            "log_level": "WARNING",
        },
        "results": {},
        "notes": [],
    }
    busy = report["machine"]["cpu_busy_before_start_percent"]
    if busy > BUSY_WARNING_PERCENT:
        report["notes"].append(
            f"the machine was {busy:.0f}% busy before the run started (other jobs): "
            "the figures are likely low and vary between runs"
        )
    workdir = Path(tempfile.mkdtemp(prefix="pagerbridge-bench-"))
    started = time.monotonic()
    failed: BaseException | None = None
    try:
        run_bench(options, workdir, report)
    except (BenchError, KeyboardInterrupt) as exc:
        failed = exc
        report["error"] = str(exc) or type(exc).__name__
    except Exception as exc:  # a bug or an unexpected answer: still report what was measured
        failed = exc
        report["error"] = traceback.format_exc()
    report["wall_s"] = round(time.monotonic() - started, 1)
    write_json(options.json_path, report)
    print(markdown_tables(report))
    for note in report["notes"]:
        print(f"\nNote: {note}")
    print(f"\nJSON: {options.json_path} (run took {report['wall_s']} s)")
    if failed is not None:
        # Keep the services' logs for a look; a clean run removes them.
        print(f"\nbench FAILED: {report['error']}\nlogs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
