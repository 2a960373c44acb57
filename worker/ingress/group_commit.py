"""Group commit for the ingest path: concurrent requests share one database write and one queue
message.

Storing an event costs a database commit and a Redis round trip whatever the number of events
in it, and during an alert storm those fixed costs were most of the api's CPU: one inbox row and
one Celery message per webhook held the api to about 100 webhooks a second. Here the first
request stores its event at once (a batch of one: nothing is added to a quiet minute's
latency), and the requests that arrive while that write is in flight wait and go together in the
next one. The batch grows exactly as fast as the store is slow.

In a storm, the writer waits a moment more before each next batch (``STORM_LINGER_S``) for the
requests still on their way to join it. Every batch costs a transaction and a queue message
whatever its size, and then a message for the worker's consumer to take and acknowledge, so
bigger batches spread those costs over more events. It never delays a quiet minute: the wait
only comes between batches, when requests arrived while the last one was being written.

Every request still waits until its own event is stored, and is answered 2xx only then: the
batching changes how many writes there are, not what an answer promises.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from worker.pipeline.message import AlertEventMessage
from worker.pipeline.queue import EventQueue, QueuedIn

log = logging.getLogger(__name__)

# Events per write at most: one INSERT and one queue message of this many stays well under a
# second of work for a worker, and a few hundred kB for Redis.
MAX_BATCH = 200
# Seconds the writer waits for more requests before each batch after the first of a storm.
# Measured in the bench's live phase (3,000 webhooks from 16 clients): 381 queue messages
# without it, 218 with 3 ms, 219 with 6 ms and 215 with 12 ms (the batches are as big as the
# clients in flight allow); the api's and the consumer's CPU per webhook fell by a quarter to a
# third; latency at 100 webhooks/s is unchanged (one request at a time never waits). A later
# round, timing the phase's end exactly: 1 ms against 3 ms, the live phase faster in 4 of 4
# alternated pairs (median 1,965/s against 1,793/s, the machine's CPU -6%). Each of the 16
# clients waits for its answer, so every millisecond the writer lingers is one they all wait.
STORM_LINGER_S = 0.001

Item = TypeVar("Item")
Answer = TypeVar("Answer")


@dataclass
class _Lane(Generic[Item, Answer]):
    """The items waiting on one event loop, and whether a flush is under way there."""

    waiting: list[tuple[Item, asyncio.Future[Answer]]] = field(default_factory=list)
    flushing: asyncio.Task[None] | None = None


class GroupCommit(Generic[Item, Answer]):
    """Hands items to a blocking ``write_many`` from async code, batching concurrent ones.

    ``write_many`` gets a batch and answers one value per item, in order. It is called in one
    background thread, so the event loop keeps taking requests while a batch is written; its
    errors are raised in every request of that batch. With ``linger``, a batch that follows
    another without a pause waits that long (unless it is full already) for more items.
    """

    def __init__(
        self,
        write_many: Callable[[Sequence[Item]], Sequence[Answer]],
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 0.0,
        thread_name: str = "group-commit",
    ) -> None:
        self._write_many = write_many
        self._max_batch = max_batch
        self._linger = linger
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        # One lane per event loop: uvicorn runs one, but a test client may start a loop per
        # request, and a future must be resolved on the loop that awaits it.
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane[Item, Answer]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: Item) -> Answer:
        return (await self.submit_all([item]))[0]

    async def submit_all(self, items: Sequence[Item]) -> list[Answer]:
        """Write ``items`` (in one batch or more, with others') and give each one's answer."""
        loop = asyncio.get_running_loop()
        lane = self._lanes.setdefault(loop, _Lane())
        futures: list[asyncio.Future[Answer]] = []
        for item in items:
            future: asyncio.Future[Answer] = loop.create_future()
            lane.waiting.append((item, future))
            futures.append(future)
        if lane.flushing is None:
            lane.flushing = loop.create_task(self._flush(lane))
        if len(futures) == 1:  # a webhook's one event: no gather() to set up per request
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def _flush(self, lane: _Lane[Item, Answer]) -> None:
        loop = asyncio.get_running_loop()
        in_storm = False  # the first batch goes at once: a lone request never waits
        try:
            while lane.waiting:
                if in_storm and self._linger and len(lane.waiting) < self._max_batch:
                    # Items arrived while the last batch was written: more are on their way.
                    await asyncio.sleep(self._linger)
                in_storm = True
                batch = lane.waiting[: self._max_batch]
                del lane.waiting[: self._max_batch]
                items = [item for item, _ in batch]
                try:
                    answers = await loop.run_in_executor(self._writer, self._write_many, items)
                except Exception as exc:  # every request of the batch answers with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), answer in zip(batch, answers, strict=True):
                        if not future.done():  # its request may have been cancelled
                            future.set_result(answer)
        finally:
            lane.flushing = None

    def close(self) -> None:
        self._writer.shutdown(wait=True)


class GroupCommitHandoff(GroupCommit[AlertEventMessage, QueuedIn]):
    """Hands events to an :class:`EventQueue`: concurrent requests share one database write and
    one queue message. ``ServiceUnavailable`` (neither the database nor Redis took the batch)
    is raised in every request of that batch."""

    def __init__(
        self, queue: EventQueue, *, max_batch: int = MAX_BATCH, linger: float = STORM_LINGER_S
    ) -> None:
        def publish_many(events: Sequence[AlertEventMessage]) -> list[QueuedIn]:
            where = queue.publish_many(events)
            return [where] * len(events)

        super().__init__(
            publish_many, max_batch=max_batch, linger=linger, thread_name="ingest-writer"
        )

    async def publish(self, event: AlertEventMessage) -> QueuedIn:
        return await self.submit(event)

    async def publish_all(self, events: Sequence[AlertEventMessage]) -> list[QueuedIn]:
        """Store ``events`` (in one batch or more, with others') and say where each went."""
        return await self.submit_all(events)
