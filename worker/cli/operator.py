"""The operator's commands on alerts and requests: alerts, alert, replay, rejected, prune,
test-trigger, demo."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from worker.cli.common import _database, _fail, _settings, cli, console
from worker.cli.rejected import _replay_rejected, _show_rejected, printable
from worker.cli.tables import _short, _state, _stdout, _when
from worker.pipeline.message import SOURCE_API, SOURCE_COSCALE
from worker.settings import ENV_PREFIX
from worker.vocabulary import DeliveryState


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
