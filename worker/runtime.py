"""Per-process resources: one engine, one session factory, one PagerDuty client.

Created lazily in the process that uses them: a Celery prefork child must not inherit its
parent's database connections or HTTP connection pool across ``fork()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from worker.pagerduty import PagerDutyClient
from worker.reconcile import Reconciler
from worker.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings

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
    def reconciler(self) -> Reconciler:
        return Reconciler(self.sessions, self.pagerduty, self.settings)

    def close(self) -> None:
        if "pagerduty" in self.__dict__:
            self.pagerduty.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


_runtime: tuple[int, Runtime] | None = None


def current_runtime() -> Runtime:
    """This process's runtime; a forked child gets a fresh one."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), Runtime(get_settings()))
    return _runtime[1]
