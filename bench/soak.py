"""A soak: the whole bridge under a steady trickle of alerts for an hour or more, its memory and
its tables reported every minute.

A leak shows only over time: a pool process that grows a few MiB an hour passes a three-minute
benchmark unseen. This starts the bridge's processes as `bench/run.py` does (simulator, api,
beat, a worker with its pool), sends CoScale triggers and their resolves at a steady rate, and
every ``--report-every`` seconds prints one line per process (PSS and RSS, MiB) and the row
counts and sizes of the bridge's tables; the same lines go to ``--json`` as JSON lines. At the
end it prints each process's growth per hour over the second half of the run (the first half
is warm-up: caches, pools and the allocator's arenas fill).

    .venv/bin/python bench/soak.py                       # an hour, 4 alerts a second
    .venv/bin/python bench/soak.py --duration 600 --rate 8
    .venv/bin/python bench/soak.py --max-memory-mb 0     # the pool's memory guard off

The worker's pool processes are found as the worker's children; one replaced by the guard
(``PAGERBRIDGE_WORKER_MAX_MEMORY_MB``) shows as a new pid. Everything runs on 127.0.0.1, in a
fresh PostgreSQL database (dropped at the end) and a namespace of its own in Redis (its keys
deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from reliability import purge_namespace
from stack import (
    DEFAULT_POSTGRES_ADMIN_URL,
    DEFAULT_REDIS_URL,
    INGRESS_TOKEN,
    LIFTED_RATE_PER_MINUTE,
    PAGERDUTY_TOKEN,
    BenchError,
    Database,
    Services,
    bridge_env,
    children_of,
    free_port,
    fresh_database,
    http_ok,
    migrate,
    pss_mib,
    wait_until,
)

TABLES = ("alerts", "alert_events", "inbox_events", "quarantined_requests")


@dataclass(frozen=True)
class Options:
    duration: float
    rate: float
    report_every: float
    workers: int
    max_memory_mb: int
    json_path: Path
    postgres_admin_url: str
    redis_url: str


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def memory(processes: dict[str, int]) -> dict[str, dict[str, float | None]]:
    return {name: {"pss": pss_mib(pid), "rss": rss_mib(pid)} for name, pid in processes.items()}


def tables(database: Database) -> dict[str, dict[str, int]]:
    sizes = {}
    for table in TABLES:
        ((rows, size),) = database.query(
            f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}"  # noqa: S608
        )
        sizes[table] = {"rows": int(rows), "bytes": int(size)}
    return sizes


def growth_per_hour(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Each process's PSS growth, MiB an hour, over the second half of the samples (a least
    squares slope); a process not present in every one of them (replaced) is left out."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return {}
    names = set.intersection(*(set(sample["memory"]) for sample in half))
    slopes = {}
    for name in sorted(names):
        points = [
            (sample["elapsed_s"], sample["memory"][name]["pss"])
            for sample in half
            if sample["memory"][name]["pss"] is not None
        ]
        if len(points) < 2:
            continue
        mean_t = sum(t for t, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        if spread:
            slope = sum((t - mean_t) * (m - mean_m) for t, m in points) / spread
            slopes[name] = round(slope * 3600, 2)
    return slopes


def soak(options: Options, workdir: Path) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    with ExitStack() as cleanup:
        redis_client = redis.Redis.from_url(options.redis_url, socket_connect_timeout=3)
        try:
            redis_client.ping()
        except (redis.RedisError, OSError) as exc:
            raise BenchError(f"Redis at {options.redis_url}: {exc}") from exc
        cleanup.callback(redis_client.close)
        namespace = f"pagerbridge-soak-{uuid.uuid4().hex[:8]}"
        cleanup.callback(purge_namespace, redis_client, namespace)
        database = cleanup.enter_context(
            fresh_database("postgres", options.postgres_admin_url, workdir)
        )
        sim_port, api_port = free_port(), free_port()
        simulator_url = f"http://127.0.0.1:{sim_port}"
        env = bridge_env(
            database_url=database.url,
            redis_url=options.redis_url,
            simulator_url=simulator_url,
            workdir=workdir,
            rate_per_minute=LIFTED_RATE_PER_MINUTE,
            extra={
                "PAGERBRIDGE_NAMESPACE": namespace,
                "PAGERBRIDGE_WORKER_MAX_MEMORY_MB": str(options.max_memory_mb),
            },
        )
        migrate(env, workdir)
        services = Services(env, workdir)
        cleanup.callback(services.stop_all)
        simulator = services.start(
            "simulator", ["simulate", f"--port={sim_port}", f"--token={PAGERDUTY_TOKEN}"]
        )
        wait_until(simulator, lambda: http_ok(f"{simulator_url}/_simulator/health"))
        beat = services.start("beat", ["beat"])
        api_url = f"http://127.0.0.1:{api_port}"
        api_service = services.start("api", ["api", "--port", str(api_port)])
        wait_until(api_service, lambda: http_ok(f"{api_url}/healthz"))
        worker = services.start("worker", ["worker", "--concurrency", str(options.workers)])
        # Its log is at WARNING (as bench/run.py's): ready once its pool has forked.
        wait_until(
            worker, lambda: len(children_of(worker.process.pid)) >= options.workers, timeout=120
        )
        api = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {INGRESS_TOKEN}"}, timeout=10
        )
        cleanup.callback(api.close)

        started = time.monotonic()
        next_report = started
        sent = refused = 0
        open_alerts: list[str] = []
        interval = 1.0 / options.rate
        output = cleanup.enter_context(options.json_path.open("w"))
        while (now := time.monotonic()) - started < options.duration:
            for service in (simulator, beat, api_service, worker):
                service.check_alive()
            # Every other webhook resolves the oldest open alert: the tables see the whole
            # life of an alert, not only new rows.
            if open_alerts and sent % 2:
                alert_id, action = open_alerts.pop(0), "resolved"
            else:
                alert_id, action = f"soak-{sent}", "triggered"
                open_alerts.append(alert_id)
            answer = api.post(
                "/webhooks/coscale",
                json={"alert_id": alert_id, "action": action, "message": f"soak {alert_id}"},
            )
            sent += 1
            refused += answer.status_code != 202
            if now >= next_report:
                next_report += options.report_every
                processes = {
                    "api": api_service.process.pid,
                    "beat": beat.process.pid,
                    "worker": worker.process.pid,
                    **{f"pool-{pid}": pid for pid in children_of(worker.process.pid)},
                }
                sample = {
                    "elapsed_s": round(now - started, 1),
                    "sent": sent,
                    "refused": refused,
                    "memory": memory(processes),
                    "tables": tables(database),
                }
                samples.append(sample)
                output.write(json.dumps(sample) + "\n")
                output.flush()
                print(_line(sample), flush=True)
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
    return samples


def _line(sample: dict[str, Any]) -> str:
    memory_part = " ".join(
        f"{name}={values['pss']:.1f}/{values['rss']:.1f}"
        for name, values in sample["memory"].items()
        if values["pss"] is not None and values["rss"] is not None
    )
    table_part = " ".join(
        f"{name}={sizes['rows']}r/{sizes['bytes'] // 1024}KiB"
        for name, sizes in sample["tables"].items()
    )
    return (
        f"{sample['elapsed_s']:>7.0f}s sent={sample['sent']} refused={sample['refused']} "
        f"PSS/RSS MiB: {memory_part} | {table_part}"
    )


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (3600)")
    parser.add_argument("--rate", type=float, default=4.0, help="webhooks a second (4)")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--workers", type=int, default=2, help="pool processes (2)")
    parser.add_argument(
        "--max-memory-mb",
        type=int,
        default=200,
        help="PAGERBRIDGE_WORKER_MAX_MEMORY_MB (200, the default; 0: the guard off)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/soak.jsonl"))
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.report_every <= 0:
        parser.error("--duration, --rate and --report-every must be positive")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    return Options(
        duration=args.duration,
        rate=args.rate,
        report_every=args.report_every,
        workers=args.workers,
        max_memory_mb=args.max_memory_mb,
        json_path=args.json,
        postgres_admin_url=args.postgres_admin_url,
        redis_url=args.redis_url,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pagerbridge-soak-") as directory:
        try:
            samples = soak(options, Path(directory))
        except BenchError as exc:
            print(f"soak failed: {exc}", file=sys.stderr)
            return 1
    print("PSS growth over the second half, MiB an hour:", growth_per_hour(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
