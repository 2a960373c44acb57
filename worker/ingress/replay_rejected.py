"""Replaying a quarantined request (``pagerbridge rejected --replay ID``).

The request goes through the ingress itself, built in the command's own process: the same body
limit, JSON reading and repair, validation and event building as the running api, and then
straight to the queue (the inbox table and Redis) as the api would put it. No running api is
needed, and no token: the operator who replays vouches for the request, which is what fixing a
rotated token means. A replay that is rejected again adds no new quarantine row; the row
records each replay's answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from models import utcnow
from worker.ops.rejected import Rejection, find, record_replay
from worker.pipeline.queue import EventQueue
from worker.settings import Settings

# Seconds the in-process ingress may take to answer: it writes to the database and Redis.
REPLAY_TIMEOUT = 30.0


class NotReplayable(Exception):
    """The row is unknown, was cut at the size limit, or was already replayed."""


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    status: int
    outcome: str  # what the ingress said: the event queued, or why it refused again

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def replay_rejected(
    settings: Settings,
    sessions: sessionmaker[Session],
    request_id: int,
    *,
    queue: EventQueue,
    force: bool = False,
) -> ReplayAnswer:
    """Send quarantined request ``request_id`` through the ingress again; record its answer.

    ``force`` replays a request already replayed with success (its event is queued again).
    """
    with sessions() as session:
        row = find(session, request_id)
        if row is None:
            raise NotReplayable(f"no rejected request #{request_id} (unknown, or aged out)")
        if not row.complete:
            raise NotReplayable(
                f"rejected request #{request_id} was over the size limit: only {len(row.body)} "
                f"of its {row.size} bytes were kept, and a cut body cannot be replayed"
            )
        if row.replay_status is not None and 200 <= row.replay_status < 300 and not force:
            raise NotReplayable(
                f"rejected request #{request_id} was already replayed "
                f"({row.replayed_at:%Y-%m-%d %H:%M:%S} UTC: {row.replay_outcome}); "
                "--force replays it again"
            )
        method, path, body = row.method, row.path, row.body
    answer = asyncio.run(_through_ingress(settings, sessions, queue, method, path, body))
    with sessions.begin() as session:
        row = find(session, request_id)
        if row is not None:  # pruned meanwhile: nothing to record it on
            record_replay(session, row, answer.status, answer.outcome, utcnow())
    return answer


async def _through_ingress(
    settings: Settings,
    sessions: sessionmaker[Session],
    queue: EventQueue,
    method: str,
    path: str,
    body: bytes,
) -> ReplayAnswer:
    from worker.ingress.app import create_app

    async def refused_again(_rejection: Rejection) -> None:
        """The row being replayed records the answer; no new row."""

    app = create_app(
        settings,
        queue=queue,
        sessions=sessions,
        redis_ping=lambda: None,
        authenticate=False,
        rejections=refused_again,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://pagerbridge-replay", timeout=REPLAY_TIMEOUT
        ) as client,
    ):
        # Always as JSON: a request refused for its Content-Type is replayed once the operator
        # fixed the header in CoScale, and the body is JSON (or repairable) or it fails again.
        response = await client.request(
            method, path, content=body, headers={"Content-Type": "application/json"}
        )
    return ReplayAnswer(response.status_code, _outcome(response))


def _outcome(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except json.JSONDecodeError:
        return f"HTTP {response.status_code}"
    if not isinstance(answer, dict):
        return f"HTTP {response.status_code}"
    if "error" in answer:
        return str(answer["error"].get("message"))
    if "event_id" in answer:
        repaired = " (body repaired)" if answer.get("repaired") else ""
        return f"queued event {answer['event_id']} for alert {answer['alert_id']}{repaired}"
    if "incident" in answer:
        return f"queued: incident {answer['incident']['id']} {answer['incident']['status']}"
    if "incidents" in answer:
        return f"queued: {len(answer['incidents'])} incident update(s)"
    return f"HTTP {response.status_code}"
