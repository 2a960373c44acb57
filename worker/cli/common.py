"""What every ``pagerbridge`` command shares: the Typer app, the console, settings, the
database, and the one way a command fails."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from worker.errors import BridgeError
from worker.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


cli = typer.Typer(
    name="pagerbridge",
    help="Forward CoScale alert events to PagerDuty through Redis and Celery.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


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
