"""Whether Redis can say an event it took is on disk, and asking it to.

While the database is unavailable an accepted event lives only in Redis, so the api answers 2xx
only once Redis has it durably. How Redis can confirm that depends on its version and its
persistence settings (https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/):

- ``WAITAOF numlocal numreplicas timeout`` (Redis ≥ 7.2) blocks until the client's prior writes
  are fsynced to the local AOF (https://redis.io/docs/latest/commands/waitaof/). It covers the
  writes of the connection that sends it, and the queue's message goes out on the Celery
  producer's connection: so the api writes a mark of its own, on its own connection, after the
  message is taken. The AOF is one log, fsynced in order: once the later mark is on disk, the
  message is too.
- ``appendfsync always``: Redis fsyncs the AOF before it answers a write, so an acknowledged
  message is on disk already.
- anything else (no AOF, or an AOF without WAITAOF): Redis cannot confirm it, the api says so at
  start and in ``/readyz``, and answers 503 while the database is unavailable.

Which one applies is a pure function of what ``INFO`` and ``CONFIG GET`` say
(:func:`durability_of`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import redis

from worker.errors import NotDurable

log = logging.getLogger(__name__)

WAITAOF_SINCE = (7, 2)
# Milliseconds WAITAOF waits for the fsync: `appendfsync everysec` fsyncs once a second.
CONFIRM_TIMEOUT_MS = 1000

Confirmation = Literal["waitaof", "fsync-always", "none", "unknown"]


@dataclass(frozen=True)
class RedisDurability:
    """How this Redis confirms that a write is on disk, and why."""

    confirmation: Confirmation
    reason: str

    @property
    def can_confirm(self) -> bool:
        return self.confirmation in ("waitaof", "fsync-always")


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def durability_of(version: str, aof_enabled: bool, appendfsync: str | None) -> RedisDurability:
    """The confirmation a Redis of ``version`` with these persistence settings can give."""
    if not aof_enabled:
        return RedisDurability(
            "none",
            f"Redis {version} runs without an AOF (appendonly no): an event kept only in Redis "
            "would not survive its restart, so while the database is unavailable events are "
            "answered 503",
        )
    if _version(version) >= WAITAOF_SINCE:
        return RedisDurability(
            "waitaof", f"Redis {version} with an AOF: WAITAOF confirms each event is on disk"
        )
    if appendfsync == "always":
        return RedisDurability(
            "fsync-always",
            f"Redis {version} with an AOF fsynced before each answer (appendfsync always)",
        )
    return RedisDurability(
        "none",
        f"Redis {version} has no WAITAOF (7.2 and later) and its AOF is fsynced "
        f"{appendfsync or 'on a schedule'} (not `appendfsync always`): while the database is "
        "unavailable events are answered 503",
    )


def detect(client: redis.Redis) -> RedisDurability:
    """What ``client``'s Redis can confirm; ``unknown`` when it does not answer."""
    try:
        server = client.info("server")
        persistence = client.info("persistence")
        try:
            appendfsync: str | None = str(client.config_get("appendfsync").get("appendfsync"))
        except redis.ResponseError:  # CONFIG disabled (managed Redis): assume the default
            appendfsync = None
    except (redis.RedisError, OSError) as exc:
        return RedisDurability("unknown", f"Redis did not answer: {type(exc).__name__}")
    return durability_of(
        str(server.get("redis_version", "0")),
        bool(int(persistence.get("aof_enabled", 0))),
        appendfsync,
    )


class DurableQueueCheck:
    """Confirms that what the queue took is on Redis's disk (``confirm``), with the detected
    capability (``durability``) kept for ``/readyz``."""

    def __init__(
        self, client: redis.Redis, namespace: str, *, timeout_ms: int = CONFIRM_TIMEOUT_MS
    ) -> None:
        self._client = client
        self._mark = f"{namespace}:ingress:durability-mark"
        self._timeout_ms = timeout_ms
        self.durability = detect(client)

    def confirm(self) -> None:
        """Return once the queue's last write is on disk; ``NotDurable`` saying
        why when it cannot be confirmed."""
        if not self.durability.can_confirm:
            self.durability = detect(self._client)  # Redis may have been down, or reconfigured
        if self.durability.confirmation == "fsync-always":
            return
        if self.durability.confirmation != "waitaof":
            raise NotDurable(
                f"the database is unavailable and Redis cannot confirm the event is on disk "
                f"({self.durability.reason})"
            )
        try:
            self._client.set(self._mark, repr(time.time()))
            local, _replicas = self._client.waitaof(1, 0, self._timeout_ms)
        except (redis.RedisError, OSError) as exc:
            raise NotDurable(
                f"the database is unavailable and Redis did not confirm the event is on disk "
                f"({type(exc).__name__})"
            ) from exc
        if int(local) < 1:
            raise NotDurable(
                "the database is unavailable and Redis did not fsync the event within "
                f"{self._timeout_ms} ms"
            )
