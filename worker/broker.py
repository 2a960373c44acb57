"""The Redis transport Celery talks through: kombu's, keeping one redis-py client per
connection pool instead of making one for every command.

kombu's Redis channel makes a new ``redis.Redis`` for each command it sends outside its event
loop (``conn_or_acquire`` → ``_create_client``): publishing a message, and in the worker's
consumer recording each message it takes as unacknowledged, then removing it at the ack. Each
new client copies redis-py's ~170 response callbacks into a fresh case-insensitive dict. In an
alert storm that was a fifth of the consumer process's CPU (py-spy) and a fifth of a publish
from the api (cProfile). A redis-py client holds nothing but its connection pool and takes a
connection from it for every command (it is safe to share between threads), so one per pool
sends the same commands on the same connections. The channel replaces its pool after a fork
and on a lost connection; a client is made anew for the new pool.

Everything else is kombu's: the messages, the visibility timeout and the acknowledgement
bookkeeping are unchanged, and Celery is pointed at this class with ``broker_transport``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis

TRANSPORT = "worker.broker:Transport"


def transport_for(broker_url: str) -> str | None:
    """Celery's ``broker_transport`` for ``broker_url``: this module's for plain ``redis://``;
    None (kombu's choice by scheme) for the rest, ``rediss://`` above all, whose TLS kombu
    turns on from the scheme's name, and Sentinel."""
    return TRANSPORT if urlsplit(broker_url).scheme == "redis" else None


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client, made once per channel already
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
