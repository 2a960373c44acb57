"""The ``pagerbridge`` command."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.errors import BridgeError
from worker.pipeline.message import SOURCE_API, SOURCE_COSCALE
from worker.settings import ENV_PREFIX, Settings, get_settings
from worker.vocabulary import DeliveryState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from worker.ops.tryout import TryoutRedis

cli = typer.Typer(
    name="pagerbridge",
    help="Forward CoScale alert events to PagerDuty through Redis and Celery.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

SIMULATOR_TOKEN = "simulated-pagerduty-token"  # noqa: S105  (the simulator's, not a secret)
SIMULATOR_SERVICE = "PSIMULA"
PIPED_WIDTH = 200  # columns of a table printed to a pipe or a file


def _configure_logging(settings: Settings) -> None:
    # PAGERBRIDGE_LOG_FORMAT (text or JSON lines) and token redaction on every record.
    from worker.logs import configure_logging

    configure_logging(settings)
    # Python's warnings (a library's deprecation) become log lines too: same format, redacted.
    logging.captureWarnings(True)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]pagerbridge:[/] {message}")
    return typer.Exit(code=2)


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's ValidationError names the variable and the problem
        raise _fail(f"invalid settings: {exc}") from exc


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


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="worker processes (default PAGERBRIDGE_WORKER_CONCURRENCY)")
    ] = None,
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
    from worker.pipeline.celery_app import app

    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--loglevel={settings.log_level}",
            f"--queues={settings.namespace}",
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


@cli.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Alerts by delivery state, oldest pending, PagerDuty breaker, rate budget, last error."""
    from models import utcnow
    from worker.ops.preflight import check_redis
    from worker.ops.report import delivery_report

    settings = _settings()
    with _database(settings) as sessions, sessions() as session:
        report = delivery_report(session, utcnow())
        report["backlog"] = _backlog_report(settings, session)
    try:
        check_redis(settings.redis_url)
    except BridgeError as exc:
        report["redis"] = {"error": str(exc)}
    else:
        report["redis"] = {"status": "answers"}
    report["pagerduty"] = _gate_report(settings)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _stdout().print(_status_table(report))
    if "error" in report["redis"]:
        # The queue, the gate and the workers all live on Redis: not a healthy bridge.
        raise typer.Exit(code=1)


@cli.command()
def alerts(
    state: Annotated[
        DeliveryState | None, typer.Option(help="only alerts in this delivery state")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="show at most N alerts")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Alert cycles, newest first, with where their delivery stands."""
    from worker.ops.report import list_alerts

    settings = _settings()
    with _database(settings) as sessions, sessions() as session:
        rows = list_alerts(session, state=state, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        title=f"alerts{f' {state.value}' if state else ''}, newest first", box=box.SIMPLE_HEAD
    )
    for column in ("source", "alert id", "cycle", "desired", "confirmed", "state", "attempts"):
        table.add_column(column, justify="right" if column in ("cycle", "attempts") else "left")
    table.add_column("incident")
    table.add_column("last error", overflow="fold")
    table.add_column("updated")
    for row in rows:
        table.add_row(
            row["source"],
            escape(row["alert_id"]),
            str(row["cycle"]),
            row["desired_status"],
            row["confirmed_status"] or "-",
            escape(row.get("responder") or "-"),
            _state(row["delivery_state"]),
            str(row["attempts"]),
            row["pagerduty_incident_id"] or "-",
            escape(_short(row["last_error"])),
            _when(row["updated_at"]),
        )
    _stdout().print(table if rows else "no alerts" + (f" {state.value}" if state else ""))


class Source(StrEnum):
    COSCALE = SOURCE_COSCALE
    API = SOURCE_API


@cli.command()
def alert(
    alert_id: Annotated[str, typer.Argument(help="CoScale's alert id, or the bridge's (API)")],
    source: Annotated[
        Source | None, typer.Option(help="which contact the alert came through")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """One alert: every cycle (PagerDuty incident) and the whole timeline of its events."""
    from worker.ops.report import alert_histories

    settings = _settings()
    with _database(settings) as sessions, sessions() as session:
        histories = alert_histories(session, alert_id, source=source.value if source else None)
    if not histories:
        console.print(
            f"no alert {escape(repr(alert_id))}{f' from {source.value}' if source else ''}: "
            "unknown, pruned, or an event just accepted is still in the queue",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    if len(histories) > 1:
        found = ", ".join(history["source"] for history in histories)
        raise _fail(f"alert {alert_id!r} exists for sources {found}: give --source")
    history = histories[0]
    if as_json:
        typer.echo(json.dumps(history, indent=2))
        return
    name = f"{history['source']}:{escape(alert_id)}"
    cycles = Table(title=f"{name}: {len(history['cycles'])} cycle(s)", box=box.SIMPLE_HEAD)
    for column in ("cycle", "desired", "confirmed", "responder", "state", "attempts", "incident"):
        cycles.add_column(column)
    cycles.add_column("last error", overflow="fold")
    cycles.add_column("created")
    cycles.add_column("updated")
    for row in history["cycles"]:
        incident = " ".join(
            part for part in (row["pagerduty_incident_id"], row["pagerduty_incident_url"]) if part
        )
        cycles.add_row(
            str(row["cycle"]),
            row["desired_status"],
            row["confirmed_status"] or "-",
            _state(row["delivery_state"]),
            str(row["attempts"]),
            incident or "-",
            escape(row["last_error"] or "-"),
            _when(row["created_at"]),
            _when(row["updated_at"]),
        )
    title = history["cycles"][-1]["title"]
    if title:
        cycles.caption = escape(title)
    timeline = Table(title="timeline", box=box.SIMPLE_HEAD)
    for column in ("at", "cycle", "kind", "action", "outcome"):
        timeline.add_column(column)
    timeline.add_column("detail", overflow="fold")
    for entry in history["timeline"]:
        timeline.add_row(
            _when(entry["at"]),
            str(entry["cycle"] or "-"),
            entry["kind"],
            entry["action"] or "-",
            entry["outcome"],
            escape(entry["detail"] or ""),
        )
    out = _stdout()
    out.print(cycles)
    out.print(timeline)


@cli.command()
def replay(
    alert_ids: Annotated[list[str] | None, typer.Argument(help="alert ids to replay")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="replay every failed alert")] = False,
) -> None:
    """Put failed alerts back into delivery (the sweeper sends them within seconds)."""
    from rich.progress import Progress

    from models import utcnow
    from worker.ops.replay import replay as replay_alerts

    if alert_ids and failed:
        raise _fail("give alert ids or --failed, not both")
    if not alert_ids and not failed:
        raise _fail("give the alert ids to replay, or --failed for every failed alert")
    settings = _settings()
    with _database(settings) as sessions, Progress(console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=None)
        replayed = replay_alerts(
            sessions,
            utcnow(),
            alert_ids=alert_ids or (),
            all_failed=failed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    for name in replayed:
        typer.echo(f"replayed {name}")
    missing = set(alert_ids or ()) - {name.split(":", 1)[1] for name in replayed}
    for alert_id in sorted(missing):
        console.print(
            f"[yellow]not replayed:[/] {escape(alert_id)} (unknown, or already delivered)"
        )
    typer.echo(f"{len(replayed)} alert(s) put back into delivery")
    if missing:
        raise typer.Exit(code=1)


@cli.command()
def rejected(
    replay: Annotated[
        int | None,
        typer.Option(
            "--replay",
            metavar="ID",
            help="send rejected request ID through the ingress's checks again and queue it "
            "(in this process: no running api needed, no token: you vouch for it)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="with --replay: replay a request replayed before")
    ] = False,
    show: Annotated[
        int | None,
        typer.Option(
            "--show",
            metavar="ID",
            help="print rejected request ID and its body, non-printable characters escaped",
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="with --show: write the body's bytes as they came")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="list at most N requests")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Requests the ingress rejected (4xx), newest first, kept with why; replay one once fixed."""
    from worker.ops.rejected import listing

    if replay is not None and show is not None:
        raise _fail("give --replay or --show, not both")
    if raw and show is None:
        raise _fail("--raw goes with --show ID")
    settings = _settings()
    if replay is not None:
        _replay_rejected(settings, replay, force=force)
        return
    if show is not None:
        _show_rejected(settings, show, as_json=as_json, raw=raw)
        return
    with _database(settings) as sessions, sessions() as session:
        rows = listing(session, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="rejected requests, newest first", box=box.SIMPLE_HEAD)
    for column in ("id", "received", "request", "answer"):
        table.add_column(column, justify="right" if column == "id" else "left")
    table.add_column("reason", overflow="fold")
    table.add_column("bytes", justify="right")
    table.add_column("replayed")
    for row in rows:
        replayed = "-"
        if row["replayed_at"]:
            replayed = f"{row['replay_status']} at {_when(row['replayed_at'])}"
        table.add_row(
            str(row["id"]),
            _when(row["received_at"]),
            escape(printable(f"{row['method']} {row['path']}")),
            str(row["status"]),
            escape(printable(_short(row["reason"], 120))),
            f"{row['size']}{'' if row['complete'] else ' (cut)'}",
            replayed,
        )
    _stdout().print(table if rows else "no rejected requests")


def printable(text: str, *, keep: str = "") -> str:
    """``text`` safe for a terminal: control characters (escape sequences among them) and other
    non-printable ones written as Python escapes, but for those in ``keep``."""
    return "".join(
        char if char.isprintable() or char in keep else repr(char)[1:-1] for char in text
    )


def _show_rejected(settings: Settings, request_id: int, *, as_json: bool, raw: bool) -> None:
    from worker.ops.rejected import describe, find

    with _database(settings) as sessions, sessions() as session:
        row = find(session, request_id)
        if row is None:
            console.print(f"no rejected request #{request_id} (unknown, or aged out)")
            raise typer.Exit(code=1)
        details, body = describe(row), row.body
    if raw:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
        return
    text = body.decode("utf-8", errors="replace")
    if as_json:  # JSON escapes every control character itself
        typer.echo(json.dumps({**details, "body": text}, indent=2))
        return
    for key, value in details.items():
        typer.echo(f"{key}: {printable(str(value))}")
    typer.echo("body:")
    typer.echo(printable(text, keep="\n\t"))


def _replay_rejected(settings: Settings, request_id: int, *, force: bool) -> None:
    from worker.ingress.replay_rejected import NotReplayable, replay_rejected
    from worker.pipeline.celery_app import app as celery_app
    from worker.pipeline.inbox import DurableEventQueue
    from worker.pipeline.queue import CeleryEventQueue

    with _database(settings) as sessions:
        queue = DurableEventQueue(CeleryEventQueue(celery_app), sessions)
        try:
            answer = replay_rejected(settings, sessions, request_id, queue=queue, force=force)
        except NotReplayable as exc:
            console.print(f"[yellow]not replayed:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(code=1) from exc
    if not answer.accepted:
        console.print(
            f"[bold red]rejected again ({answer.status}):[/] {escape(answer.outcome)}",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    typer.echo(f"replayed #{request_id}: {answer.status}, {answer.outcome}")


@cli.command()
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would be deleted, delete nothing")
    ] = False,
) -> None:
    """Delete alerts delivered and resolved over PAGERBRIDGE_RETENTION_DAYS ago.

    Their timelines (alert_events) go with them. Beat does this every hour.
    """
    from models import utcnow
    from worker.pipeline.retention import count_expired, retention_cutoff
    from worker.pipeline.retention import prune as prune_alerts

    settings = _settings()
    cutoff = retention_cutoff(utcnow(), settings.retention_days)
    with _database(settings) as sessions:
        result = count_expired(sessions, cutoff) if dry_run else prune_alerts(sessions, cutoff)
    typer.echo(
        f"{'would delete' if dry_run else 'deleted'} {result.alerts} alert(s) and "
        f"{result.events} event(s): delivered, resolved and last updated before "
        f"{cutoff:%Y-%m-%d %H:%M:%S} UTC ({settings.retention_days:g} days ago)"
    )


@cli.command("test-trigger")
def trigger_check(
    api_url: Annotated[
        str | None, typer.Option(help="the api's base URL (default PAGERBRIDGE_PUBLIC_URL)")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="seconds to wait for the incident, then for its resolve"),
    ] = 30.0,
    token: Annotated[
        str | None,
        typer.Option(
            help="the ingress token to call the api with (default: the first of "
            "PAGERBRIDGE_INGRESS_TOKENS)",
        ),
    ] = None,
) -> None:
    """CoScale's "Test trigger": a test alert's incident opened and resolved, end to end.

    Sends a trigger for a new alert id to the running api, waits for the PagerDuty incident,
    then sends its resolve and waits until PagerDuty confirms it.
    """
    import httpx

    from worker.ops.trigger_check import REQUEST_TIMEOUT, SmokeFailed, SmokeTest

    settings = _settings()
    token = token or next(iter(settings.ingress_token_values), None)
    if not token:
        raise _fail(
            f"no ingress token: give --token, or set {ENV_PREFIX}INGRESS_TOKENS (test-trigger "
            "calls the api with its first)"
        )
    url = (api_url or settings.public_url).rstrip("/")
    with httpx.Client(base_url=url, timeout=min(REQUEST_TIMEOUT, timeout)) as client:
        test = SmokeTest(
            client,
            token,
            timeout=timeout,
            say=lambda message: console.print(escape(message), soft_wrap=True),
        )
        try:
            result = test.run()
        except SmokeFailed as exc:
            console.print(f"[bold red]test trigger failed:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(code=1) from exc
    typer.echo(f"incident {result.incident_id} {result.incident_url or '(no URL)'}")
    typer.echo(
        f"test trigger ok: alert {result.alert_id} opened its incident in "
        f"{result.seconds_to_incident:g}s and resolved it in {result.seconds_to_resolved:g}s"
    )


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="api port for the demo")] = 8180,
    simulator_port: Annotated[int, typer.Option(help="simulator port for the demo")] = 8189,
) -> None:
    """Watch the whole flow for a minute: simulator + bridge + a storyline of CoScale alerts."""
    from worker.ops.demo import run_demo

    raise typer.Exit(code=run_demo(_settings().redis_url, api_port=port, sim_port=simulator_port))


def _backlog_report(settings: Settings, session: Session) -> dict[str, object]:
    """The events waiting to be applied, in the queue and the inbox, or why it is unknown."""
    import redis

    from models import utcnow
    from worker.pipeline.backlog import read_backlog

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        backlog = read_backlog(client, settings.namespace, session, utcnow())
        return {**backlog.as_dict(), "summary": backlog.summary()}
    except redis.RedisError as exc:
        return {"error": f"Redis does not answer: {exc}"}
    finally:
        client.close()


pagerduty_cli = typer.Typer(
    help="PagerDuty's webhook subscriptions: how the bridge hears what responders do.",
    no_args_is_help=True,
)
cli.add_typer(pagerduty_cli, name="pagerduty")


@pagerduty_cli.command("subscribe")
def pagerduty_subscribe(
    url: Annotated[
        str, typer.Option(help="the bridge's public URL, e.g. https://<bridge>/webhooks/pagerduty")
    ],
    route: Annotated[
        str | None, typer.Option(help="a REST route of the routes file (default: the default)")
    ] = None,
) -> None:
    """Subscribe the bridge to the route's service's incident events (one subscription)."""
    from worker.ops.subscriptions import secret_line, subscribe
    from worker.pagerduty import PagerDutyError

    settings = _settings()
    try:
        made = subscribe(settings, url, route)
    except (BridgeError, PagerDutyError, ValueError) as exc:
        raise _fail(escape(str(exc))) from exc
    name = route or "default"
    typer.echo(
        f"subscription {made.id}: {', '.join(made.events)} of {made.filter_id} -> {made.url}"
    )
    if made.secret is None:
        raise _fail("PagerDuty's answer carried no secret; delete the subscription and retry")
    # The one time PagerDuty shows the secret: it goes to stdout, for the operator to keep.
    typer.echo("The signing secret is shown this once. Set it where the api runs:")
    if name == "default":
        typer.echo(f"  {secret_line(name, made.secret)}")
        typer.echo("(keep the previous secrets in that comma-separated list until they are gone)")
    else:
        typer.echo(f"  in the [[route]] named {name!r} of the routes file:")
        typer.echo(f"  {secret_line(name, made.secret)}")


@pagerduty_cli.command("subscriptions")
def pagerduty_subscriptions(
    route: Annotated[
        str | None, typer.Option(help="a REST route of the routes file (default: the default)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the account's webhook subscriptions (PagerDuty never shows their secrets again)."""
    from worker.ops.subscriptions import subscriptions
    from worker.pagerduty import PagerDutyError

    settings = _settings()
    try:
        found = subscriptions(settings, route)
    except (BridgeError, PagerDutyError, ValueError) as exc:
        raise _fail(escape(str(exc))) from exc
    rows = [
        {
            "id": item.id,
            "url": item.url,
            "filter": f"{item.filter_type} {item.filter_id or ''}".strip(),
            "events": list(item.events),
            "description": item.description,
        }
        for item in found
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("id", "url", "filter", "events", "description"):
        table.add_column(column, overflow="fold")
    for item in found:
        table.add_row(
            item.id,
            escape(item.url),
            f"{item.filter_type} {item.filter_id or ''}".strip(),
            ", ".join(item.events),
            escape(item.description or ""),
        )
    _stdout().print(table if rows else "no webhook subscriptions")


def _gate_report(settings: Settings) -> dict[str, object]:
    """What the workers' shared gate says, or why it cannot be read."""
    import redis

    from worker.delivery.gate import DeliveryGate

    if settings.pagerduty_token is None:
        return {"error": "PAGERBRIDGE_PAGERDUTY_TOKEN unset here: gate state unknown"}
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        gate = DeliveryGate(
            client, settings.pagerduty_token.get_secret_value(), namespace=settings.namespace
        )
        return gate.status().as_dict()
    except redis.RedisError as exc:
        return {"error": f"Redis does not answer: {exc}"}
    finally:
        client.close()


@contextmanager
def _database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database; one that cannot be used stops the command."""
    from sqlalchemy.exc import SQLAlchemyError

    from models import make_engine, make_session_factory
    from worker.ops.preflight import check_database, check_database_exists, safe_database_url

    try:
        check_database_exists(settings.database_url)
        check_database(settings.database_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    engine = make_engine(settings.database_url)
    try:
        yield make_session_factory(engine, settings.namespace)
    except SQLAlchemyError as exc:
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise _fail(
            f"cannot use the database {safe_database_url(settings.database_url)} "
            f"({exc.__class__.__name__}: {cause})"
        ) from exc
    finally:
        engine.dispose()


def _stdout() -> Console:
    """The console the tables go to. Piped into a file or grep, rich would fold them to 80
    columns; there, a wide table on long lines reads better."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=PIPED_WIDTH)
    return out


def _status_table(report: dict[str, Any]) -> Table:
    table = Table(title="pagerbridge status", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for state, count in report["by_state"].items():
        table.add_row(f"alerts {state}", _state(state, str(count)))
    table.add_section()
    oldest = report["oldest_pending"]
    if oldest is None:
        table.add_row("oldest pending", "nothing pending")
    else:
        age = oldest["age_seconds"]
        table.add_row(
            "oldest pending",
            f"{escape(oldest['alert'])} (cycle {oldest['cycle']}, {_state(oldest['state'])}) "
            f"for {_age(age) if age is not None else '?'}, {oldest['attempts']} attempt(s); "
            f"last error: {escape(oldest['last_error'] or 'none')}",
        )
    backlog = report["backlog"]
    table.add_row(
        "waiting to be applied",
        escape(str(backlog["error"])) if "error" in backlog else escape(str(backlog["summary"])),
    )
    table.add_section()
    redis_state = report.get("redis", {})
    if "error" in redis_state:
        table.add_row("Redis", f"[red]{escape(str(redis_state['error']))}[/]")
    else:
        table.add_row("Redis", "answers")
    pagerduty = report["pagerduty"]
    if "error" in pagerduty:
        table.add_row("PagerDuty", escape(str(pagerduty["error"])))
    else:
        if pagerduty["breaker"] == "open":
            opened = pagerduty.get("breaker_opened_at")
            since = (
                f" since {datetime.fromtimestamp(opened, UTC):%Y-%m-%d %H:%M:%S}" if opened else ""
            )
            table.add_row("breaker", f"[red]open[/]{since}: PagerDuty failing, deliveries wait")
        else:
            table.add_row(
                "breaker", f"closed ({pagerduty['consecutive_failures']} consecutive failures)"
            )
        credentials = pagerduty["credentials"]
        table.add_row(
            "credentials",
            "ok"
            if credentials == "ok"
            else f"[red]refused[/]: {escape(str(pagerduty['credentials_error']))}",
        )
        tokens = pagerduty["rate_limit_tokens"]
        budget = "full (no call yet)" if tokens is None else f"{tokens:g} token(s) left"
        if pagerduty["rate_limit_paused_for"]:
            budget += f"; paused by a 429 for {pagerduty['rate_limit_paused_for']:g}s more"
        table.add_row("rate budget", budget)
    last = report["last_pagerduty_error"]
    table.add_row(
        "last PagerDuty error",
        "none recorded"
        if last is None
        else f"{_when(last['at'])} {escape(last['alert'])} ({last['outcome']}): "
        f"{escape(last['error'] or 'no detail')}",
    )
    return table


_STATE_STYLE = {
    DeliveryState.PENDING: "yellow",
    DeliveryState.DELIVERED: "green",
    DeliveryState.PARKED: "magenta",
    DeliveryState.FAILED: "red",
}


def _state(state: str, text: str | None = None) -> str:
    """``text`` (default: the state itself) in the colour of delivery state ``state``."""
    style = _STATE_STYLE.get(DeliveryState(state), "")
    return f"[{style}]{text or state}[/]" if style else text or state


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _when(iso: str | None) -> str:
    """An ISO timestamp as the tables show it: UTC, to the second."""
    return f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S}" if iso else "-"


def _age(seconds: float) -> str:
    """``3m12s``, ``2h05m``, ``4d03h``: two units are enough to see how late."""
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s"


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
