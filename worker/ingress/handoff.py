"""Group commit for the ingest path: concurrent requests share one database write and one queue
message.

Storing an event costs a database commit and a Redis round trip whatever the number of events
in it, and during an alert storm those fixed costs were most of the api's CPU: one inbox row and
one Celery message per webhook held the api to about 100 webhooks a second. Here the first
request stores its event at once (a batch of one: nothing is added to a quiet minute's
latency), and the requests that arrive while that write is in flight wait and go together in the
next one. The batch grows exactly as fast as the store is slow, with no timer to tune.

Every request still waits until its own event is stored, and is answered 2xx only then: the
batching changes how many writes there are, not what an answer promises.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worker.event import AlertEventMessage
from worker.queue import EventQueue, QueuedIn

log = logging.getLogger(__name__)

# Events per write at most: one INSERT and one queue message of this many stays well under a
# second of work for a worker, and a few hundred kB for Redis.
MAX_BATCH = 200


@dataclass
class _Lane:
    """The events waiting on one event loop, and whether a flush is under way there."""

    waiting: list[tuple[AlertEventMessage, asyncio.Future[QueuedIn]]] = field(default_factory=list)
    flushing: asyncio.Task[None] | None = None


class GroupCommitHandoff:
    """Hands events to an :class:`EventQueue` from async code, batching concurrent ones.

    The store is called in one background thread, so the event loop keeps taking requests while
    a batch is written. Its errors (``ServiceUnavailable`` when neither the database nor Redis
    took the batch) are raised in every request of that batch.
    """

    def __init__(self, queue: EventQueue, *, max_batch: int = MAX_BATCH) -> None:
        self._queue = queue
        self._max_batch = max_batch
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        # One lane per event loop: uvicorn runs one, but a test client may start a loop per
        # request, and a future must be resolved on the loop that awaits it.
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane] = (
            weakref.WeakKeyDictionary()
        )

    async def publish(self, event: AlertEventMessage) -> QueuedIn:
        return (await self.publish_all([event]))[0]

    async def publish_all(self, events: Sequence[AlertEventMessage]) -> list[QueuedIn]:
        """Store ``events`` (in one batch or more, with others') and say where each went."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.setdefault(loop, _Lane())
        futures: list[asyncio.Future[QueuedIn]] = []
        for event in events:
            future: asyncio.Future[QueuedIn] = loop.create_future()
            lane.waiting.append((event, future))
            futures.append(future)
        if lane.flushing is None:
            lane.flushing = loop.create_task(self._flush(lane))
        return list(await asyncio.gather(*futures))

    async def _flush(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.waiting:
                batch = lane.waiting[: self._max_batch]
                del lane.waiting[: self._max_batch]
                events = [event for event, _ in batch]
                try:
                    where = await loop.run_in_executor(
                        self._writer, self._queue.publish_many, events
                    )
                except Exception as exc:  # every request of the batch answers with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():  # its request may have been cancelled
                            future.set_result(where)
        finally:
            lane.flushing = None

    def close(self) -> None:
        self._writer.shutdown(wait=True)
