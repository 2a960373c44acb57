"""The ``pagerbridge`` command."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from worker.errors import BridgeError
from worker.settings import ENV_PREFIX, Settings, get_settings

cli = typer.Typer(
    name="pagerbridge",
    help="Forward CoScale alert events to PagerDuty through Redis and Celery.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

SIMULATOR_TOKEN = "simulated-pagerduty-token"  # noqa: S105  (the simulator's, not a secret)
SIMULATOR_SERVICE = "PSIMULA"


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # One INFO line per HTTP request would double the log volume of a storm; our own delivery
    # lines already say what was sent and what PagerDuty answered.
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
    from worker.migrate import upgrade

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
) -> None:
    """Serve the ingress (CoScale's Webhook and API contacts)."""
    import uvicorn

    from worker.ingress.app import build_app
    from worker.preflight import check_database, check_redis

    settings = _settings()
    _configure_logging(settings)
    try:
        settings.require("ingress_tokens")
        check_redis(settings.redis_url)
        check_database(settings.database_url)
        application = build_app(settings)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    processes = workers or settings.api_workers
    if processes > 1:
        # Each process builds its own app (its own connections) from the environment.
        uvicorn.run(
            "worker.ingress.app:app_from_environment",
            factory=True,
            workers=processes,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
        )
        return
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="worker processes (default PAGERBRIDGE_WORKER_CONCURRENCY)")
    ] = None,
) -> None:
    """Run a Celery worker that delivers events to PagerDuty."""
    from worker.preflight import check_database, check_redis

    settings = _settings()
    _configure_logging(settings)
    try:
        settings.require("pagerduty_token", "pagerduty_from")
        check_redis(settings.redis_url)
        check_database(settings.database_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    from worker.celery_app import app

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
    """Run the scheduler that sweeps due retries back onto the queue."""
    from worker.preflight import check_redis

    settings = _settings()
    _configure_logging(settings)
    try:
        check_redis(settings.redis_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    from worker.celery_app import app

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
) -> None:
    """Serve a PagerDuty REST API simulator (no PagerDuty account needed).

    The fault options set the faults it starts with; POST /_simulator/faults changes them while
    it runs.
    """
    from worker.pagerduty.simulator import FaultSettings, FaultSettingsError, serve

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
    """Run api, worker and beat together (and the simulator with --simulate)."""
    settings = _settings()
    env = dict(os.environ)
    if simulate:
        env[f"{ENV_PREFIX}PAGERDUTY_URL"] = f"http://127.0.0.1:{simulator_port}"
        env[f"{ENV_PREFIX}PAGERDUTY_TOKEN"] = SIMULATOR_TOKEN
        env.setdefault(f"{ENV_PREFIX}PAGERDUTY_FROM", "pagerbridge@example.com")
        if not settings.pagerduty_service_id:
            env[f"{ENV_PREFIX}PAGERDUTY_SERVICE_ID"] = SIMULATOR_SERVICE
        if not settings.ingress_tokens:
            token = secrets.token_urlsafe(24)
            env[f"{ENV_PREFIX}INGRESS_TOKENS"] = token
            console.print(f"ingress token for this run: [bold]{token}[/]")
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
    """Alerts by delivery state, and the oldest pending delivery."""
    from worker.report import delivery_report

    settings = _settings()
    try:
        report = delivery_report(settings.database_url)
    except BridgeError as exc:
        raise _fail(str(exc)) from exc
    report["pagerduty"] = _gate_report(settings)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="pagerbridge deliveries")
    table.add_column("state")
    table.add_column("alerts", justify="right")
    for state, count in report["by_state"].items():
        table.add_row(state, str(count))
    Console().print(table)
    pagerduty = report["pagerduty"]
    Console().print(
        f"PagerDuty: breaker {pagerduty.get('breaker', 'unknown')}, "
        f"credentials {pagerduty.get('credentials', 'unknown')}, "
        f"rate-limit tokens left {pagerduty.get('rate_limit_tokens', 'unknown')}"
        + (f" — {pagerduty['credentials_error']}" if pagerduty.get("credentials_error") else "")
    )
    oldest = report["oldest_pending"]
    if oldest:
        Console().print(
            f"oldest pending: {oldest['alert']} since {oldest['since']} "
            f"({oldest['attempts']} attempts) — last error: {oldest['last_error'] or 'none'}"
        )
    else:
        Console().print("nothing pending")


@cli.command()
def replay(
    alert_ids: Annotated[list[str] | None, typer.Argument(help="alert ids to replay")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="replay every failed alert")] = False,
) -> None:
    """Put failed alerts back into delivery (the sweeper sends them within seconds)."""
    from models import make_engine, make_session_factory, utcnow
    from worker.replay import replay as replay_alerts

    if bool(alert_ids) == failed:
        raise _fail("give alert ids, or --failed (not both)")
    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        replayed = replay_alerts(
            make_session_factory(engine), utcnow(), alert_ids=alert_ids or (), all_failed=failed
        )
    finally:
        engine.dispose()
    for name in replayed:
        typer.echo(f"replayed {name}")
    missing = set(alert_ids or ()) - {name.split(":", 1)[1] for name in replayed}
    for alert_id in sorted(missing):
        console.print(f"[yellow]not replayed:[/] {alert_id} (unknown, or already delivered)")
    typer.echo(f"{len(replayed)} alert(s) put back into delivery")
    if missing:
        raise typer.Exit(code=1)


@cli.command()
def demo(
    port: Annotated[int, typer.Option(help="api port for the demo")] = 8180,
    simulator_port: Annotated[int, typer.Option(help="simulator port for the demo")] = 8189,
) -> None:
    """Watch the whole flow for a minute: simulator + bridge + a storyline of CoScale alerts."""
    from worker.demo import run_demo

    raise typer.Exit(code=run_demo(_settings().redis_url, api_port=port, sim_port=simulator_port))


def _gate_report(settings: Settings) -> dict[str, object]:
    """What the workers' shared gate says, or why it cannot be read."""
    import redis

    from worker.gate import DeliveryGate

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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
