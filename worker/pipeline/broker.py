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

Its acknowledgement emulation is kept too, except for the messages that do not need it. kombu
copies every message a worker takes into Redis (a hash of unacknowledged messages, restored to
the queue after the visibility timeout), so that a worker killed with SIGKILL loses none, and
deletes the copy at the acknowledgement: a transaction and a round trip each way, per message.
An apply message whose events the api also wrote to the inbox table is marked so
(:data:`INBOX_BACKED_HEADER`), and this transport keeps no copy of it: the inbox is already that
copy, and it gives the events back sooner (the sweeper applies what the queue has not within
10 s; the visibility timeout is 300 s). Every other message keeps kombu's copy: the events the
api could only queue (the database was away), retries, reconcile messages. In the bench's live
phase (3,000 alerts, about 240 apply messages) that took Redis's MULTI/EXEC from 491 to 27 and
ZADD, ZREM and HDEL from about 240 each to under 10: the consumer's CPU -29%, Redis's -17%
(six alternated pairs).

Everything else is kombu's: the messages, the visibility timeout, and the acknowledgement
bookkeeping of every unmarked message are unchanged, and Celery is pointed at this class with
``broker_transport``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

TRANSPORT = "worker.pipeline.broker:Transport"
# The header of an apply message whose every event is also in the inbox table
# (worker/pipeline/inbox.py).
INBOX_BACKED_HEADER = "pagerbridge_inbox"


def inbox_backed(message: Any) -> bool:
    """Whether a message the worker took is marked as kept by the inbox table."""
    headers = getattr(message, "headers", None)
    return bool(headers and headers.get(INBOX_BACKED_HEADER))


def transport_for(broker_url: str) -> str | None:
    """Celery's ``broker_transport`` for ``broker_url``: this module's for plain ``redis://``;
    None (kombu's choice by scheme) for the rest, ``rediss://`` above all, whose TLS kombu
    turns on from the scheme's name, and Sentinel."""
    return TRANSPORT if urlsplit(broker_url).scheme == "redis" else None


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, without a Redis copy of inbox-backed messages: those
    are tracked in memory only (kombu's base bookkeeping, which also counts the prefetch), and
    put back on the queue when rejected or left unacknowledged at shutdown, as the others are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._inbox_backed: set[Any] = set()

    def append(self, message: Any, delivery_tag: Any) -> None:
        if inbox_backed(message):
            self._inbox_backed.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if delivery_tag in self._inbox_backed:
            self._inbox_backed.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        else:
            super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if delivery_tag in self._inbox_backed:
            self._inbox_backed.discard(delivery_tag)
            # Requeued from memory by the channel's _restore (below).
            virtual.QoS.reject(self, delivery_tag, requeue)  # type: ignore[no-untyped-call]
        else:
            super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> None:
        try:
            # kombu's restores from the Redis copies; the inbox-backed messages have none.
            for tag in [tag for tag in self._delivered if tag in self._inbox_backed]:
                self.channel._restore(self._delivered.pop(tag))
            self._inbox_backed.clear()
            super().restore_unacked(client)  # type: ignore[no-untyped-call]
        finally:
            if self.channel._closing:
                # At close the channel has let its pool go before it restores, so restoring
                # made a pool anew: let that one go too, or its connection stays open.
                self.channel._disconnect_pools()


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        """Put a message back on its queue: an inbox-backed one from memory, since Redis holds
        no copy of it; the others from their copy, as kombu does."""
        if not (self.ack_emulation and inbox_backed(message)):
            super()._restore(message, leftmost)  # type: ignore[no-untyped-call]
            return
        delivery = message.delivery_info
        exchange, routing_key = delivery["exchange"], delivery["routing_key"]
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            self._do_restore_message(  # type: ignore[no-untyped-call]
                message.serializable(), exchange, routing_key, pipe, leftmost
            )
            pipe.execute()

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
