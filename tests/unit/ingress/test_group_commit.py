"""The ingest path's group commit: concurrent requests share writes, and none is answered before
its event is stored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from tests.fakes import ListQueue
from worker.errors import ServiceUnavailable
from worker.ingress.group_commit import GroupCommitHandoff
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.queue import QueuedIn
from worker.vocabulary import AlertStatus


def event(alert_id: str) -> AlertEventMessage:
    return AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=AlertStatus.TRIGGERED,
        received_at=datetime.now(UTC),
    )


class SlowQueue(ListQueue):
    """A store that holds each write until the test lets it go, so requests pile up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def publish_many(self, events: Sequence[AlertEventMessage]) -> QueuedIn:
        self.writing.set()
        assert self.release.wait(5), "the test never released the write"
        return super().publish_many(events)


def test_a_lone_event_is_written_at_once_in_a_batch_of_one() -> None:
    queue = ListQueue()
    handoff = GroupCommitHandoff(queue)
    assert asyncio.run(handoff.publish(event("1"))) == "queue"
    assert queue.batches == [1]
    handoff.close()


def test_events_arriving_during_a_write_go_together_in_the_next_one() -> None:
    queue = SlowQueue()
    handoff = GroupCommitHandoff(queue)

    async def storm() -> list[QueuedIn]:
        first = asyncio.ensure_future(handoff.publish(event("first")))
        await asyncio.to_thread(queue.writing.wait, 5)
        rest = [asyncio.ensure_future(handoff.publish(event(str(n)))) for n in range(50)]
        await asyncio.sleep(0.01)
        assert not any(task.done() for task in [first, *rest]), "answered before stored"
        queue.release.set()
        return list(await asyncio.gather(first, *rest))

    answers = asyncio.run(storm())
    assert answers == ["queue"] * 51
    assert queue.batches == [1, 50]
    assert [e.alert_id for e in queue.events] == ["first", *map(str, range(50))]
    handoff.close()


def test_batches_are_capped() -> None:
    queue = SlowQueue()
    handoff = GroupCommitHandoff(queue, max_batch=20)

    async def storm() -> None:
        first = asyncio.ensure_future(handoff.publish(event("first")))
        await asyncio.to_thread(queue.writing.wait, 5)
        rest = [asyncio.ensure_future(handoff.publish(event(str(n)))) for n in range(45)]
        await asyncio.sleep(0)
        queue.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(storm())
    assert queue.batches == [1, 20, 20, 5]
    handoff.close()


def test_a_failed_write_fails_every_request_of_its_batch_and_only_those() -> None:
    queue = ListQueue(broken=True)
    handoff = GroupCommitHandoff(queue)

    async def two() -> list[object]:
        return await asyncio.gather(
            handoff.publish(event("a")), handoff.publish(event("b")), return_exceptions=True
        )

    answers = asyncio.run(two())
    assert all(isinstance(answer, ServiceUnavailable) for answer in answers)
    queue.broken = False
    assert asyncio.run(handoff.publish(event("c"))) == "queue"
    assert [e.alert_id for e in queue.events] == ["c"]
    handoff.close()


def test_several_events_of_one_request_are_kept_in_order() -> None:
    queue = ListQueue()
    handoff = GroupCommitHandoff(queue)
    answers = asyncio.run(handoff.publish_all([event("x"), event("y"), event("z")]))
    assert answers == ["queue"] * 3
    assert [e.alert_id for e in queue.events] == ["x", "y", "z"]
    handoff.close()


def test_each_event_loop_gets_its_own_lane() -> None:
    # A test client may run each request on a new loop: a future must never be resolved from
    # another loop's flush.
    queue = ListQueue()
    handoff = GroupCommitHandoff(queue)
    for n in range(3):
        assert asyncio.run(handoff.publish(event(str(n)))) == "queue"
    assert len(queue.events) == 3
    handoff.close()


def test_a_lone_event_never_waits_for_the_storm_linger() -> None:
    queue = ListQueue()
    handoff = GroupCommitHandoff(queue, linger=2.0)

    async def lone() -> float:
        started = time.monotonic()
        assert await handoff.publish(event("alone")) == "queue"
        return time.monotonic() - started

    assert asyncio.run(lone()) < 1.0
    assert queue.batches == [1]
    handoff.close()


def test_in_a_storm_the_next_batch_waits_for_requests_on_their_way() -> None:
    queue = SlowQueue()
    handoff = GroupCommitHandoff(queue, linger=0.4)

    async def storm() -> None:
        first = asyncio.ensure_future(handoff.publish(event("first")))
        await asyncio.to_thread(queue.writing.wait, 5)
        during = [asyncio.ensure_future(handoff.publish(event(f"d{n}"))) for n in range(3)]
        await asyncio.sleep(0)
        queue.release.set()  # the first batch is stored; the next one lingers
        await first
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in during)
        later = [asyncio.ensure_future(handoff.publish(event(f"l{n}"))) for n in range(2)]
        await asyncio.gather(*during, *later)

    asyncio.run(storm())
    # Without the linger: [1, 3, 2], one more write and one more queue message
    assert queue.batches == [1, 5]
    assert [e.alert_id for e in queue.events] == ["first", "d0", "d1", "d2", "l0", "l1"]
    handoff.close()


def test_a_full_batch_does_not_linger() -> None:
    queue = SlowQueue()
    handoff = GroupCommitHandoff(queue, max_batch=3, linger=5.0)

    async def storm() -> float:
        first = asyncio.ensure_future(handoff.publish(event("first")))
        await asyncio.to_thread(queue.writing.wait, 5)
        rest = [asyncio.ensure_future(handoff.publish(event(str(n)))) for n in range(6)]
        await asyncio.sleep(0)
        started = time.monotonic()
        queue.release.set()
        await asyncio.gather(first, *rest)
        return time.monotonic() - started

    assert asyncio.run(storm()) < 2.0
    assert queue.batches == [1, 3, 3]
    handoff.close()
