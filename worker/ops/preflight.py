"""Start-up checks: fail fast and clearly when a service the command needs is missing."""

from __future__ import annotations

from pathlib import Path

import redis
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from models import make_engine
from worker.errors import ServiceUnavailable


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def safe_database_url(url: str) -> str:
    """The database URL with its password hidden, for messages."""
    return _safe_url(url)


def check_database_exists(database_url: str) -> None:
    """A SQLite file must exist before an operator command reads it: opening a missing one
    would create an empty database in whatever directory the command runs in."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database).resolve()
    if not path.exists():
        raise ServiceUnavailable(
            f"no database at {path}: run this command where the bridge runs, run "
            "`pagerbridge migrate` to make one, or set PAGERBRIDGE_DATABASE_URL"
        )


def check_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        safe = redis_url.split("@")[-1]
        raise ServiceUnavailable(
            f"Redis at {safe} does not answer ({exc}); start it or set PAGERBRIDGE_REDIS_URL"
        ) from exc
    finally:
        client.close()


def check_database(database_url: str, *, migrated: bool = True) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            if migrated and not inspect(connection).has_table("alerts"):
                raise ServiceUnavailable(
                    f"the database {_safe_url(database_url)} has no pagerbridge tables: "
                    "run `pagerbridge migrate` first"
                )
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(
            f"the database {_safe_url(database_url)} does not answer ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); start it or set PAGERBRIDGE_DATABASE_URL"
        ) from exc
    finally:
        engine.dispose()
