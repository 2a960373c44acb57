"""``pagerbridge pagerduty``: PagerDuty's webhook subscriptions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from worker.cli.common import _fail, _settings, cli
from worker.cli.tables import _stdout
from worker.errors import BridgeError

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
