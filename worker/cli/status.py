"""``pagerbridge status``: delivery states, backlog, Redis and the PagerDuty gate in one view."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from worker.cli.common import _database, _settings, cli
from worker.cli.tables import _age, _state, _stdout, _when
from worker.errors import BridgeError
from worker.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


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
