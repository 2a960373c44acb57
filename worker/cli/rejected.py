"""The rejected requests ``pagerbridge rejected`` shows and replays."""

from __future__ import annotations

import json
import sys

import typer
from rich.markup import escape

from worker.cli.common import _database, console
from worker.settings import Settings


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
