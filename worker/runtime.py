"""Per-process resources: one engine, one session factory, one PagerDuty client.

Created lazily in the process that uses them: a Celery prefork child must not inherit its
parent's database connections or HTTP connection pool across ``fork()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from worker.gate import DeliveryGate
from worker.pagerduty import PagerDutyClient
from worker.reconcile import Reconciler
from worker.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    _reconciler: Reconciler | None = field(default=None, init=False)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def pagerduty(self) -> PagerDutyClient:
        settings = self.settings
        settings.require("pagerduty_token", "pagerduty_from")
        assert settings.pagerduty_token is not None and settings.pagerduty_from is not None
        return PagerDutyClient(
            settings.pagerduty_url,
            settings.pagerduty_token.get_secret_value(),
            settings.pagerduty_from,
            connect_timeout=settings.pagerduty_connect_timeout,
            read_timeout=settings.pagerduty_read_timeout,
        )

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )

    @cached_property
    def gate(self) -> DeliveryGate:
        settings = self.settings
        settings.require("pagerduty_token")
        assert settings.pagerduty_token is not None
        return DeliveryGate(
            self.redis,
            settings.pagerduty_token.get_secret_value(),
            namespace=settings.namespace,
            failure_threshold=settings.breaker_threshold,
            probe_interval=settings.breaker_probe_interval,
            rate_per_minute=settings.pagerduty_rate_per_minute,
            # A burst of 2 s worth: bulk updates make bursts rare, and PagerDuty counts per
            # minute, so a small bucket keeps every minute under its limit.
            burst=max(1.0, settings.pagerduty_rate_per_minute / 30),
        )

    def reconciler(self, requeue: Callable[[list[int]], None] | None = None) -> Reconciler:
        if self._reconciler is None:
            self._reconciler = Reconciler(
                self.sessions, self.pagerduty, self.settings, gate=self.gate, requeue=requeue
            )
        return self._reconciler

    def close(self) -> None:
        if "pagerduty" in self.__dict__:
            self.pagerduty.close()
        if "redis" in self.__dict__:
            self.redis.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


_runtime: tuple[int, Runtime] | None = None


def current_runtime() -> Runtime:
    """This process's runtime; a forked child gets a fresh one."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), Runtime(get_settings()))
    return _runtime[1]
