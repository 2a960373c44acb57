"""The commands that run the bridge: migrate, api, worker, beat, simulate, and run (them all)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from worker.cli.common import _configure_logging, _fail, _settings, cli, console
from worker.errors import BridgeError
from worker.settings import ENV_PREFIX, Settings

if TYPE_CHECKING:
    from worker.ops.tryout import TryoutRedis

SIMULATOR_TOKEN = "simulated-pagerduty-token"  # noqa: S105  (the simulator's, not a secret)
SIMULATOR_SERVICE = "PSIMULA"


@cli.command()
def migrate(
    database_url: Annotated[
        str | None, typer.Option(help="overrides PAGERBRIDGE_DATABASE_URL")
    ] = None,
) -> None:
    """Create or upgrade the database schema (Alembic `upgrade head`)."""
    from worker.ops.migrate import upgrade

    settings = _settings()
    _configure_logging(settings)
    upgrade(database_url or settings.database_url)
    console.print("[green]database schema is up to date[/]")


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    workers: Annotated[
        int | None, typer.Option(help="api processes (default PAGERBRIDGE_API_WORKERS)")
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="serve every endpoint without an ingress token (a local try-out only; refused "
            f"while {ENV_PREFIX}INGRESS_TOKENS is set)",
        ),
    ] = False,
) -> None:
    """Serve the ingress (CoScale's Webhook and API contacts)."""
    import uvicorn

    from worker.ingress.app import INSECURE_WARNING, build_app
    from worker.ingress.connections import server_options
    from worker.ops.preflight import check_database, check_redis
    from worker.startup import freeze_startup_objects

    settings = _settings()
    _configure_logging(settings)
    try:
        if insecure_no_auth:
            if settings.ingress_tokens:
                raise _fail(
                    f"--insecure-no-auth while {ENV_PREFIX}INGRESS_TOKENS is set: drop one of them"
                )
            console.print(f"[bold red]{INSECURE_WARNING}[/]", soft_wrap=True)
        else:
            _require_ingress_token(settings)
        check_redis(settings.redis_url)
        check_database(settings.database_url)
        application = build_app(settings, insecure_no_auth=insecure_no_auth)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    options = server_options(settings)
    console.print(
        f"serving {'HTTPS' if settings.tls_certfile else 'plain HTTP'} on {host}:{port}",
        soft_wrap=True,
    )
    processes = workers or settings.api_workers
    if processes > 1:
        # Each process builds its own app (its own connections) from the environment.
        factory = "insecure_app_from_environment" if insecure_no_auth else "app_from_environment"
        uvicorn.run(
            f"worker.ingress.app:{factory}",
            factory=True,
            workers=processes,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            **options,
        )
        return
    freeze_startup_objects()  # the app is built: what exists now lives as long as the process
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False, **options)


def _require_ingress_token(settings: Settings) -> None:
    """The api refuses to start without a token: an ingress anyone can post to pages people."""
    try:
        settings.require("ingress_tokens")
    except BridgeError as exc:
        raise BridgeError(
            f"{exc}; the api needs one (to serve without a token on a machine of your own: "
            "--insecure-no-auth)"
        ) from exc


class WorkerQueues(StrEnum):
    """Which of the two queues a worker serves (worker/pipeline/celery_app.py)."""

    ALL = "all"  # both: one worker does everything
    INTAKE = "intake"  # applying events to the mapping; never waits on PagerDuty
    DELIVERY = "delivery"  # the PagerDuty calls, and the scheduled tasks


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="worker processes (default PAGERBRIDGE_WORKER_CONCURRENCY)")
    ] = None,
    queues: Annotated[
        WorkerQueues,
        typer.Option(
            help="the queues served: intake (applying events), delivery (PagerDuty calls), or "
            "all; an intake worker of its own applies a resolve at once during a storm"
        ),
    ] = WorkerQueues.ALL,
) -> None:
    """Run a Celery worker that delivers events to PagerDuty."""
    from worker.ops.preflight import check_database, check_redis
    from worker.routes_file import load_route_table

    settings = _settings()
    _configure_logging(settings)
    try:
        # The routes file is read (and refused, naming route and field) before anything starts;
        # with routes, the default route's PagerDuty settings are optional.
        if not len(load_route_table(settings)):
            settings.require("pagerduty_token", "pagerduty_from")
        check_redis(settings.redis_url)
        check_database(settings.database_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    from worker.pipeline.celery_app import app, delivery_queue, intake_queue

    served = {
        WorkerQueues.ALL: [intake_queue(settings.namespace), delivery_queue(settings.namespace)],
        WorkerQueues.INTAKE: [intake_queue(settings.namespace)],
        WorkerQueues.DELIVERY: [delivery_queue(settings.namespace)],
    }[queues]
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--loglevel={settings.log_level}",
            f"--queues={','.join(served)}",
            # Several workers on one host (intake and delivery) need names of their own.
            f"--hostname={queues.value}@%h",
            # The apply task takes up to 100 messages at once (celery_app.py); a reconcile task
            # is taken one at a time, so several delivery workers share a backlog.
            *(["--prefetch-multiplier=1"] if queues is WorkerQueues.DELIVERY else []),
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def beat() -> None:
    """Run the scheduler: the sweeper of due retries, and the hourly retention prune."""
    from worker.ops.preflight import check_redis

    settings = _settings()
    _configure_logging(settings)
    try:
        check_redis(settings.redis_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    from worker.pipeline.celery_app import app

    schedule = settings.beat_schedule_path or str(
        Path(tempfile.gettempdir()) / f"pagerbridge-beat-{os.getuid()}"
    )
    app.Beat(loglevel=settings.log_level, schedule=schedule).run()


@cli.command()
def simulate(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8089,
    token: Annotated[
        str | None, typer.Option(help="the only API token accepted (default: any)")
    ] = None,
    down: Annotated[bool, typer.Option("--down", help="answer every call 503")] = False,
    flaky: Annotated[
        float, typer.Option(metavar="F", help="fraction of calls answered 500/502/503 (0..1)")
    ] = 0.0,
    lost: Annotated[
        float,
        typer.Option(metavar="F", help="fraction of successful calls answered 502 anyway (0..1)"),
    ] = 0.0,
    latency_ms: Annotated[
        int, typer.Option(metavar="N", help="milliseconds added to every call")
    ] = 0,
    hang: Annotated[
        bool, typer.Option("--hang", help="never answer until the client gives up")
    ] = False,
    rate_limit: Annotated[
        int | None,
        typer.Option(metavar="N", help="calls per minute per API token, then 429 (default: none)"),
    ] = None,
    rate_limit_burst: Annotated[
        int | None,
        typer.Option(metavar="N", help="token bucket size (default: rate limit / 6, rounded up)"),
    ] = None,
    rate_limit_headers: Annotated[
        bool, typer.Option(help="ratelimit-limit/-remaining/-reset on 429s")
    ] = True,
    retry_after: Annotated[bool, typer.Option(help="Retry-After on 429s")] = False,
    unauthorized_token: Annotated[
        list[str] | None,
        typer.Option(metavar="T", help="answer calls with this token 401 (repeatable)"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(metavar="N", help="seed for the random faults")
    ] = None,
    routing_key: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY",
            help="accept only this Events API routing key (repeatable; default: any)",
        ),
    ] = None,
) -> None:
    """Serve a PagerDuty REST API and Events API v2 simulator (no PagerDuty account needed).

    The fault options set the faults it starts with; POST /_simulator/faults changes them while
    it runs.
    """
    from worker.simulator.faults import FaultSettings, FaultSettingsError
    from worker.simulator.server import serve

    try:
        faults = FaultSettings(
            down=down,
            flaky=flaky,
            lost=lost,
            latency_ms=latency_ms,
            hang=hang,
            rate_limit_per_minute=rate_limit,
            rate_limit_burst=rate_limit_burst,
            rate_limit_headers=rate_limit_headers,
            rate_limit_retry_after=retry_after,
            unauthorized_tokens=tuple(unauthorized_token or ()),
            seed=seed,
        )
    except FaultSettingsError as exc:
        raise _fail(f"invalid fault option: {exc}") from exc
    console.print(f"PagerDuty simulator on http://{host}:{port} (state: /_simulator/state)")
    if faults.changed():
        console.print(f"faults: {json.dumps(faults.changed())} (see /_simulator/faults)")
    if routing_key:
        serve(host=host, port=port, token=token, faults=faults, routing_keys=tuple(routing_key))
    else:  # serve's default accepts any routing key; left out, serve gets only the options used
        serve(host=host, port=port, token=token, faults=faults)


@cli.command()
def run(
    simulate: Annotated[
        bool, typer.Option("--simulate", help="also start the PagerDuty simulator and use it")
    ] = False,
    host: Annotated[str, typer.Option(help="api address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="api port")] = 8080,
    simulator_port: Annotated[int, typer.Option(help="simulator port with --simulate")] = 8089,
    concurrency: Annotated[int | None, typer.Option(help="worker processes")] = None,
) -> None:
    """Run api, worker and beat together (and the simulator with --simulate).

    With --simulate and no Redis at PAGERBRIDGE_REDIS_URL, a Redis of its own for the try-out.
    """
    settings = _settings()
    env = dict(os.environ)
    # SIGTERM stops the run as Ctrl-C does: its processes first, then a try-out's Redis.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        if simulate:
            tryout = _tryout_redis(stack, settings.redis_url)
            if tryout is not None:
                env[f"{ENV_PREFIX}REDIS_URL"] = tryout.url
            env[f"{ENV_PREFIX}PAGERDUTY_URL"] = f"http://127.0.0.1:{simulator_port}"
            env[f"{ENV_PREFIX}PAGERDUTY_TOKEN"] = SIMULATOR_TOKEN
            env.setdefault(f"{ENV_PREFIX}PAGERDUTY_FROM", "pagerbridge@example.com")
            if not settings.pagerduty_service_id:
                env[f"{ENV_PREFIX}PAGERDUTY_SERVICE_ID"] = SIMULATOR_SERVICE
            if not settings.ingress_tokens:
                token = secrets.token_urlsafe(32)
                env[f"{ENV_PREFIX}INGRESS_TOKENS"] = token
                console.print(f"ingress token for this run: [bold]{token}[/]")
            console.print(
                "for `pagerbridge status`, `test-trigger` and the rest in another terminal:\n"
                + _export_lines(env, settings),
                soft_wrap=True,
                highlight=False,
            )
        problems = _run_problems(env)
        if problems:
            raise _fail(
                "nothing started: "
                + "; ".join(problems)
                + " (set them in the environment or in .env)"
            )
        _run_processes(env, simulate, host, port, simulator_port, concurrency)


def _run_problems(env: dict[str, str]) -> list[str]:
    """Every reason api, worker or beat would stop at start, checked before any starts, so the
    operator fixes them all at once rather than one child's at a time."""
    from worker.ops.preflight import check_database, check_redis
    from worker.routes_file import load_route_table

    # What `run` sets for its children, over what the environment and .env say.
    overrides: dict[str, Any] = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX) and os.environ.get(name) != value
    }
    try:
        settings = Settings(**overrides)
    except Exception as exc:  # pydantic's ValidationError names each variable
        return [str(exc)]
    problems: list[str] = []
    try:
        routes = load_route_table(settings)
    except BridgeError as exc:
        return [str(exc)]
    needed = ["ingress_tokens"] if not len(routes) else []
    if not len(routes):
        needed += ["pagerduty_token", "pagerduty_from"]
    for name in needed:
        try:
            settings.require(name)
        except BridgeError as exc:
            problems.append(str(exc).split(" (set them")[0])
    for check, url in ((check_redis, settings.redis_url), (check_database, settings.database_url)):
        try:
            check(url)
        except BridgeError as exc:
            problems.append(str(exc))
    return problems


def _export_lines(env: dict[str, str], settings: Settings) -> str:
    """The shell lines that give another terminal what this run set for its processes."""
    names = ("INGRESS_TOKENS", "REDIS_URL", "PAGERDUTY_URL", "PAGERDUTY_TOKEN", "DATABASE_URL")
    lines = []
    for name in names:
        value = env.get(f"{ENV_PREFIX}{name}")
        if name == "DATABASE_URL" and value is None:
            value = _absolute_sqlite_url(settings.database_url)
        if value is not None:
            lines.append(f"  export {ENV_PREFIX}{name}={shlex.quote(value)}")
    return "\n".join(lines)


def _absolute_sqlite_url(url: str) -> str:
    """A relative SQLite URL made absolute, so that it names the same file from anywhere."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(
        hide_password=False
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _tryout_redis(stack: ExitStack, redis_url: str) -> TryoutRedis | None:
    """A Redis for the block of ``stack`` when none answers at ``redis_url``, said once."""
    from worker.ops.tryout import notice, tryout_redis

    try:
        tryout = stack.enter_context(tryout_redis(redis_url))
    except BridgeError as exc:
        raise _fail(escape(str(exc))) from exc
    if tryout is not None:
        console.print(f"[bold yellow]{escape(notice(redis_url, tryout))}[/]", soft_wrap=True)
    return tryout


def _run_processes(
    env: dict[str, str],
    simulate: bool,
    host: str,
    port: int,
    simulator_port: int,
    concurrency: int | None,
) -> None:
    me = [sys.executable, "-m", "worker.cli"]
    commands: list[tuple[str, list[str]]] = []
    if simulate:
        commands.append(
            (
                "simulator",
                [*me, "simulate", "--port", str(simulator_port), "--token", SIMULATOR_TOKEN],
            )
        )
    worker_args = [*me, "worker"] + (["--concurrency", str(concurrency)] if concurrency else [])
    commands += [
        ("api", [*me, "api", "--host", host, "--port", str(port)]),
        ("worker", worker_args),
        ("beat", [*me, "beat"]),
    ]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands:
            processes[name] = subprocess.Popen(command, env=env)
            if name == "simulator":
                time.sleep(1.0)  # let it listen before the worker's first call
        console.print(f"pagerbridge running: api on http://{host}:{port} (Ctrl-C stops)")
        while True:
            for name, process in processes.items():
                code = process.poll()
                if code is not None:
                    raise _fail(f"{name} exited with code {code}; stopping the others")
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        _stop(processes)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
