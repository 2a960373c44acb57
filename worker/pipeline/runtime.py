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
from worker.delivery.answers import Backend
from worker.delivery.gate import DeliveryGate
from worker.delivery.reconcile import Reconciler
from worker.pagerduty import PagerDutyClient
from worker.pagerduty.events import EventsClient
from worker.pipeline.message import DEFAULT_ROUTE
from worker.routes_file import Route, RouteTable, credential_key, load_route_table
from worker.settings import Settings, get_settings


@dataclass
class Runtime:
    settings: Settings
    _reconciler: Reconciler | None = field(default=None, init=False)
    _gates: dict[str, DeliveryGate] = field(default_factory=dict, init=False)
    _backends: dict[str, Backend] = field(default_factory=dict, init=False)

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine, self.settings.namespace)

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
        """The default route's gate (the PAGERBRIDGE_PAGERDUTY_TOKEN's)."""
        settings = self.settings
        settings.require("pagerduty_token")
        assert settings.pagerduty_token is not None
        return self._gate(
            settings.pagerduty_token.get_secret_value(),
            settings.pagerduty_rate_per_minute,
            REST_RATE_LIMIT_BACKOFF,
        )

    @cached_property
    def routes(self) -> RouteTable:
        """The routes file's routes (none without PAGERBRIDGE_ROUTES_FILE)."""
        return load_route_table(self.settings)

    def gate_for(self, route: Route) -> DeliveryGate:
        """The gate of the route's credential: routes that share an API token or integration
        key share its breaker and rate budget, and one broken key stalls only its routes."""
        if route.events is not None:
            # docs/pagerduty.md: after an Events API 429, wait minutes rather than seconds.
            return self._gate(
                credential_key(route), route.events.rate_per_minute, EVENTS_RATE_LIMIT_BACKOFF
            )
        return self._gate(
            credential_key(route), self.settings.pagerduty_rate_per_minute, REST_RATE_LIMIT_BACKOFF
        )

    def _gate(self, key: str, rate_per_minute: float, backoff: float) -> DeliveryGate:
        """One gate object per credential in this process."""
        if key not in self._gates:
            settings = self.settings
            self._gates[key] = DeliveryGate(
                self.redis,
                key,
                namespace=settings.namespace,
                failure_threshold=settings.breaker_threshold,
                probe_interval=settings.breaker_probe_interval,
                rate_per_minute=rate_per_minute,
                # A burst of 2 s worth: bulk updates make bursts rare, and PagerDuty counts per
                # minute, so a small bucket keeps every minute under its limit.
                burst=max(1.0, rate_per_minute / 30),
                rate_limit_backoff=backoff,
            )
        return self._gates[key]

    def backend(self, name: str) -> Backend | None:
        """The clients and gate of a named route; None if the routes file has no such route."""
        if name in self._backends:
            return self._backends[name]
        route = self.routes.by_name(name)
        if route is None:
            return None
        settings = self.settings
        connect, read = settings.pagerduty_connect_timeout, settings.pagerduty_read_timeout
        if route.rest is not None:
            backend = Backend(
                rest=PagerDutyClient(
                    str(route.rest.api_url).rstrip("/"),
                    route.rest.api_token.get_secret_value(),
                    route.rest.from_email,
                    connect_timeout=connect,
                    read_timeout=read,
                ),
                gate=self.gate_for(route),
                services=frozenset({route.rest.service_id}),
                reads_before_acknowledge=settings.read_before_acknowledge
                and not route.webhook_secrets,
            )
        else:
            assert route.events is not None
            backend = Backend(
                events=EventsClient(
                    route.events.routing_key.get_secret_value(),
                    url=str(route.events.events_url),
                    connect_timeout=connect,
                    read_timeout=read,
                ),
                gate=self.gate_for(route),
            )
        self._backends[name] = backend
        return backend

    def gates(self) -> dict[str, DeliveryGate]:
        """Every route's gate by route name, the default route's too when it is configured."""
        gates = {route.name: self.gate_for(route) for route in self.routes}
        if self.settings.pagerduty_token is not None:
            gates[DEFAULT_ROUTE] = self.gate
        return gates

    def reconciler(self, requeue: Callable[[list[int]], None] | None = None) -> Reconciler:
        if self._reconciler is None:
            settings = self.settings
            # With a routes file the default route is optional: without its token its alerts
            # (if any) park, saying so; without routes it is required (and refused if missing).
            default_configured = not len(self.routes) or (
                settings.pagerduty_token is not None and settings.pagerduty_from is not None
            )
            self._reconciler = Reconciler(
                self.sessions,
                self.pagerduty if default_configured else None,
                self.settings,
                gate=self.gate if default_configured else None,
                requeue=requeue,
                backends=self.backend,
            )
        return self._reconciler

    def close(self) -> None:
        for backend in self._backends.values():
            for client in (backend.rest, backend.events):
                if client is not None:
                    client.close()
        if "pagerduty" in self.__dict__:
            self.pagerduty.close()
        if "redis" in self.__dict__:
            self.redis.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


# The first pause after a 429 that names no reset time.
REST_RATE_LIMIT_BACKOFF = 5.0
EVENTS_RATE_LIMIT_BACKOFF = 30.0

_runtime: tuple[int, Runtime] | None = None


def current_runtime() -> Runtime:
    """This process's runtime; a forked child gets a fresh one."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), Runtime(get_settings()))
    return _runtime[1]
