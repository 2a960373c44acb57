"""What Redis can promise about an event it took (worker/pipeline/durability.py)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import ServiceUnavailable
from worker.pipeline.durability import DurableQueueCheck, durability_of


@pytest.mark.parametrize(
    ("version", "aof", "appendfsync", "confirmation"),
    [
        ("7.4.1", True, "everysec", "waitaof"),
        ("7.2.0", True, "everysec", "waitaof"),
        ("7.0.15", True, "always", "fsync-always"),
        ("7.0.15", True, "everysec", "none"),
        ("6.2.6", True, None, "none"),
        ("7.4.1", False, "everysec", "none"),
    ],
)
def test_what_each_redis_can_confirm(
    version: str, aof: bool, appendfsync: str | None, confirmation: str
) -> None:
    known = durability_of(version, aof, appendfsync)
    assert known.confirmation == confirmation
    assert known.can_confirm == (confirmation != "none")
    assert version in known.reason


class FakeRedis:
    """INFO, CONFIG GET, SET and WAITAOF as a Redis 7.4 with an AOF answers them."""

    def __init__(self, *, fsynced: int = 1, version: str = "7.4.1", aof: int = 1) -> None:
        self.fsynced = fsynced
        self.version = version
        self.aof = aof
        self.calls: list[str] = []

    def info(self, section: str) -> dict[str, Any]:
        return {
            "server": {"redis_version": self.version},
            "persistence": {"aof_enabled": self.aof},
        }[section]

    def config_get(self, _name: str) -> dict[str, str]:
        return {"appendfsync": "everysec"}

    def set(self, key: str, _value: str) -> bool:
        self.calls.append(f"SET {key}")
        return True

    def waitaof(self, local: int, replicas: int, timeout: int) -> list[int]:
        self.calls.append(f"WAITAOF {local} {replicas} {timeout}")
        return [self.fsynced, 0]


def test_a_mark_is_written_after_the_message_and_waited_for_on_disk() -> None:
    client = FakeRedis()
    check = DurableQueueCheck(client, "ns")  # type: ignore[arg-type]
    check.confirm()
    assert client.calls == ["SET ns:ingress:durability-mark", "WAITAOF 1 0 1000"]


def test_an_aof_that_is_not_fsynced_in_time_is_a_refusal() -> None:
    check = DurableQueueCheck(FakeRedis(fsynced=0), "ns")  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable, match="did not fsync"):
        check.confirm()


def test_a_redis_without_an_aof_is_a_refusal_saying_why() -> None:
    client = FakeRedis(aof=0)
    check = DurableQueueCheck(client, "ns")  # type: ignore[arg-type]
    assert not check.durability.can_confirm
    with pytest.raises(ServiceUnavailable, match="without an AOF"):
        check.confirm()
    assert client.calls == []
