"""Engine and session factory, tuned per database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from models.namespace import NAMESPACE_INFO
from worker.vocabulary import DEFAULT_NAMESPACE

# SQLite: several worker processes share one file. WAL lets readers run beside the writer, and
# the busy timeout makes a writer wait for the lock instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000  # PostgreSQL: longest wait for a row lock
STATEMENT_TIMEOUT_MS = 60_000  # PostgreSQL: longest statement (migrations included)
# Client-side, so that they hold when the server cannot act (frozen, or gone with its host):
# libpq's connection parameters (https://www.postgresql.org/docs/current/libpq-connect.html).
CONNECT_TIMEOUT_S = 5  # the whole connection set-up, authentication included
KEEPALIVES_IDLE_S = 10  # TCP keepalives: an unreachable server is noticed on an idle link
KEEPALIVES_INTERVAL_S = 5
KEEPALIVES_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000  # data sent and not acknowledged this long: the link is dead


def normalize_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy would otherwise pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(
    url: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS, **kwargs: Any
) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _tune_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        # No statement of ours should wait long: a row lock held by a stuck session, or a
        # database in trouble, becomes an error the task retries, not a worker that hangs
        # holding its leases. Milliseconds.
        connect_args={
            "options": f"-c lock_timeout={LOCK_TIMEOUT_MS} "
            f"-c statement_timeout={statement_timeout_ms}",
            "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalives": 1,
            "keepalives_idle": KEEPALIVES_IDLE_S,
            "keepalives_interval": KEEPALIVES_INTERVAL_S,
            "keepalives_count": KEEPALIVES_COUNT,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        },
        **kwargs,
    )


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, open transactions (pysqlite's implicit BEGIN is
        # deferred and can deadlock when a reader later wants to write).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: our transactions are short read-then-write
        # steps, and the lock must be held from the read on (SQLite's stand-in for FOR UPDATE).
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(
    engine: Engine, namespace: str = DEFAULT_NAMESPACE
) -> sessionmaker[Session]:
    """Sessions for the bridge named ``namespace`` (models.namespace)."""
    return sessionmaker(engine, expire_on_commit=False, info={NAMESPACE_INFO: namespace})
