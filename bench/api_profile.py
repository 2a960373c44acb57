"""Where the api's CPU goes, per webhook: the api's line of "where the rest goes".

It runs the api's ASGI application in this process (no uvicorn, no sockets), wired as
``pagerbridge api`` wires it (the real PostgreSQL inbox, the real Redis broker), and sends it
CoScale triggers in waves of ``--concurrency`` requests at once, as the bench's load tool does.
Each request is the bench's live-phase body (bench/webhook.lua); each must be answered 202.

It prints this process's CPU time (user + sys) per webhook, and with ``--cprofile N`` the N
functions with the most own time. PostgreSQL's and Redis's CPU are not in it; uvicorn's HTTP
parsing is not either (about 27 µs a request, measured apart). For repeatable figures, count
instructions instead of seconds (the method is in bench/README.md):

    .venv/bin/python bench/api_profile.py                       # 3,000 webhooks, waves of 16
    .venv/bin/python bench/api_profile.py --cprofile 30

Only one run at a time on a machine (it shares the lock of ``bench/run.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from run import trigger_body
from stack import INGRESS_TOKEN, BenchError, git_revision, single_run
from worker_profile import bridge

WARM_UP_WAVES = 10


def _body(alert_id: str) -> bytes:
    """The live phase's trigger (bench/run.py), as a request body."""
    return json.dumps(trigger_body(alert_id), separators=(",", ":")).encode()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=3000, help="webhooks measured (3000)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight at once (16)"
    )
    parser.add_argument("--cprofile", type=int, default=0, metavar="N")
    parser.add_argument(
        "--postgres-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args(argv)
    if options.webhooks < 1 or options.concurrency < 1:
        parser.error("--webhooks and --concurrency must be at least 1")
    return options


async def post(app: Any, path: str, body: bytes) -> int:
    """One request through the ASGI application, as uvicorn hands it over: its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {INGRESS_TOKEN}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    status = 0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # no disconnect while the request is served
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise BenchError(f"api did not start: {started}")
    return inbox, task


async def drive(app: Any, options: argparse.Namespace) -> dict[str, Any]:
    inbox, task = await lifespan(app)
    run_id = uuid.uuid4().hex[:10]
    wave = options.concurrency

    async def waves(first: int, count: int) -> None:
        for start in range(first, first + count, wave):
            stop = min(start + wave, first + count)
            statuses = await asyncio.gather(
                *(
                    post(app, "/webhooks/coscale", _body(f"{run_id}-b{i}"))
                    for i in range(start, stop)
                )
            )
            if any(status != 202 for status in statuses):
                raise BenchError(f"webhooks answered {sorted(set(statuses))}, not all 202")

    await waves(0, WARM_UP_WAVES * wave)
    profiler = cProfile.Profile() if options.cprofile else None
    cpu = time.process_time()
    wall = time.perf_counter()
    if profiler:
        profiler.enable()
    await waves(WARM_UP_WAVES * wave, options.webhooks)
    if profiler:
        profiler.disable()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    await inbox.put({"type": "lifespan.shutdown"})
    await task
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(options.cprofile)
    return {
        "revision": git_revision(),
        "webhooks": options.webhooks,
        "concurrency": wave,
        "cpu_us_per_webhook": round(cpu / options.webhooks * 1e6, 1),
        "wall_us_per_webhook": round(wall / options.webhooks * 1e6, 1),
    }


def run(options: argparse.Namespace) -> dict[str, Any]:
    from worker.ingress.app import build_app
    from worker.settings import get_settings

    get_settings.cache_clear()
    app = build_app(get_settings())
    return asyncio.run(drive(app, options))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        with single_run(), tempfile.TemporaryDirectory(prefix="pagerbridge-api-") as tmp:
            redis.Redis.from_url(options.redis_url).flushdb()
            try:
                with bridge(options, Path(tmp)):
                    figures = run(options)
            finally:
                redis.Redis.from_url(options.redis_url).flushdb()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(
        f"api, in process, {figures['webhooks']:,} webhooks in waves of {figures['concurrency']}:"
        f" {figures['cpu_us_per_webhook']} µs CPU per webhook"
        f" ({figures['wall_us_per_webhook']} µs wall)"
    )
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
