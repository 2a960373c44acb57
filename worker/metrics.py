"""Prometheus metrics: what happened, counted in the process where it happened, and what is now,
read from the shared state when Prometheus scrapes.

Counted (``Counter``/``Histogram``, one line at the place they count):

- ``pagerbridge_events_received_total{source, action}``: the api (``worker/ingress/context.py``);
- ``pagerbridge_deliveries_total{outcome}``: alerts reconciled by a worker, by the outcome
  ``worker/delivery/reconcile.py`` returns (``delivered``, ``retry``, ``parked``, ``waiting``,
  ``failed``, ``busy``, ``missing``);
- ``pagerbridge_retries_total{reason}``: retries scheduled after a failed PagerDuty call;
- ``pagerbridge_pagerduty_calls_total{endpoint, status_class}``,
  ``pagerbridge_pagerduty_call_duration_seconds{endpoint}`` and
  ``pagerbridge_pagerduty_rate_limited_total{endpoint}``: every request of the PagerDuty client,
  counted at its one exit (``worker/pagerduty/client.py``).

Read at scrape time (:class:`BridgeStateCollector`, on the api's ``/metrics``): queue depth,
the events waiting in the queue and in the inbox and the oldest one's age in each
(``worker/pipeline/backlog.py``), alerts by delivery state, the oldest pending delivery's age,
the outage breaker, refused credentials, the rate-limit budget. They describe the whole bridge,
not a process, so one place serves them; a part that cannot be read within ``SCRAPE_TIMEOUT``
is left out of that scrape and counted in ``pagerbridge_scrape_errors_total{part}`` instead of
failing the scrape.

Workers: Celery's prefork pool runs tasks in child processes, each with its own copy of every
counter, and Celery replaces children at will. So a worker uses prometheus-client's
*multiprocess mode* (what gunicorn deployments use, for the same reason): every pool process
writes its values to memory-mapped files in one directory, and the worker's main process sums
the files when scraped, on ``PAGERBRIDGE_WORKER_METRICS_PORT``. One port per worker, and totals
that survive a pool process being replaced (one port per pool process would need a scrape target
per child, and would lose a child's counts when it is replaced). Beat serves no metrics: it only
re-queues due alerts, which the queue depth and oldest-pending gauges already show.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import redis
from celery.signals import worker_init, worker_process_init, worker_shutdown
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, utcnow
from models.namespace import namespace_of
from worker.delivery.gate import DeliveryGate
from worker.pipeline.backlog import QUEUE_SCAN_LIMIT, inbox_backlog, queue_backlog
from worker.pipeline.message import DEFAULT_ROUTE
from worker.prometheus_multiprocess import choose_value_class_again
from worker.settings import Settings, get_settings
from worker.vocabulary import DeliveryState

log = logging.getLogger(__name__)

# Seconds each part of the shared state may take to read (the parts are read concurrently):
# well under Prometheus' default scrape timeout of 10 s.
SCRAPE_TIMEOUT = 2.0
# Covers PagerDuty's usual answer (~0.1-0.5 s) up to our connect + read timeouts (5 + 10 s).
CALL_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
SCRAPE_PARTS = ("queue", "pagerduty_gate", "database")

# -- counted in worker processes -----------------------------------------------------------
# Every one has labels: see enable_multiprocess() for why that matters. Not in the default
# registry: the worker's port serves them from its pool processes' files, and the api, which
# never counts them, would only show them empty.

DELIVERIES = Counter(
    "pagerbridge_deliveries_total",
    "Alerts reconciled by a worker, by outcome: delivered (the incident has the alert's "
    "status), retry (a retry is scheduled), parked (PagerDuty down or refusing the token), "
    "waiting (rate limit, or an acknowledge waiting for its trigger), failed (given up), "
    "busy (another worker had it), missing",
    ["outcome"],
    registry=None,
)
RETRIES = Counter(
    "pagerbridge_retries_total",
    "Retries scheduled after a failed PagerDuty call, by reason: server_error (5xx), "
    "rate_limited (429), network (no answer: timeout, refused, reset), other",
    ["reason"],
    registry=None,
)
PAGERDUTY_CALLS = Counter(
    "pagerbridge_pagerduty_calls_total",
    "PagerDuty REST calls by endpoint (create, update, bulk_update, find) and answer "
    "(2xx, 4xx, 5xx, network: no answer)",
    ["endpoint", "status_class"],
    registry=None,
)
PAGERDUTY_CALL_SECONDS = Histogram(
    "pagerbridge_pagerduty_call_duration_seconds",
    "Time from sending a PagerDuty call to its answer (or to giving up on it), seconds",
    ["endpoint"],
    buckets=CALL_SECONDS_BUCKETS,
    registry=None,
)
PAGERDUTY_RATE_LIMITED = Counter(
    "pagerbridge_pagerduty_rate_limited_total",
    "PagerDuty calls answered 429 (rate limit); every worker then pauses",
    ["endpoint"],
    registry=None,
)
WORKER_METRICS: tuple[Counter | Histogram, ...] = (
    DELIVERIES,
    RETRIES,
    PAGERDUTY_CALLS,
    PAGERDUTY_CALL_SECONDS,
    PAGERDUTY_RATE_LIMITED,
)

# Not in the default registry: BridgeStateCollector yields it after counting this scrape's
# errors, so a failure shows in the very scrape it happened in.
SCRAPE_ERRORS = Counter(
    "pagerbridge_scrape_errors_total",
    "Parts of the shared state (queue, pagerduty_gate, database) a /metrics scrape could not "
    "read in time; their gauges are missing from that scrape",
    ["part"],
    registry=None,
)
for _part in SCRAPE_PARTS:
    SCRAPE_ERRORS.labels(_part)  # present at 0, so rate() sees the first error


def status_class(status: int | None) -> str:
    """``2xx``, ``4xx``, ``5xx``... of an HTTP status; ``network`` when no answer came."""
    if status is None:
        return "network"
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def retry_reason(status: int | None) -> str:
    if status is None:
        return "network"
    if status == 429:
        return "rate_limited"
    return "server_error" if 500 <= status <= 599 else "other"


def observe_pagerduty_call(endpoint: str, status: int | None, seconds: float) -> None:
    """One PagerDuty request: its answer's status (``None``: no answer) and its duration."""
    calls, call_seconds = _call_series(endpoint, status_class(status))
    calls.inc()
    call_seconds.observe(seconds)
    if status == 429:
        PAGERDUTY_RATE_LIMITED.labels(endpoint).inc()


# The label children of one kind of call, looked up once: ``labels()`` checks and locks on
# every call, a tenth of a create's CPU in the client. Emptied whenever the metrics' children
# are (enable_multiprocess); a child made before a fork counts in the child process's file.
_CALL_SERIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def _call_series(endpoint: str, status: str) -> tuple[Any, Any]:
    series = _CALL_SERIES.get((endpoint, status))
    if series is None:
        series = PAGERDUTY_CALLS.labels(endpoint, status), PAGERDUTY_CALL_SECONDS.labels(endpoint)
        _CALL_SERIES[endpoint, status] = series
    return series


def count_deliveries(outcomes: Iterable[str]) -> None:
    for outcome in outcomes:
        DELIVERIES.labels(outcome).inc()


def count_retry(status: int | None) -> None:
    """A retry was scheduled after a call that failed with ``status`` (``None``: no answer)."""
    RETRIES.labels(retry_reason(status)).inc()


# -- the shared state, read at scrape time -------------------------------------------------


class BridgeStateCollector(Collector):
    """Gauges of what all processes share, read from Redis and the database when scraped.

    ``gate`` is the api's delivery gate when it has one (its Redis client is then reused); else
    one is made when the PagerDuty token is known here, and without it the gate's gauges are
    left out.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        gate: DeliveryGate | None = None,
        route_gates: Mapping[str, DeliveryGate] | None = None,
        redis_client: redis.Redis | None = None,
        timeout: float = SCRAPE_TIMEOUT,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._gate = gate
        self._route_gates = dict(route_gates or {})
        self._redis = redis_client or (gate.redis if gate is not None else None)
        self._timeout = timeout
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        reads = {
            "queue": self._queue,
            "pagerduty_gate": self._pagerduty_gate,
            "database": self._database,
        }
        for part, result in read_concurrently(reads, self._timeout).items():
            if isinstance(result, Exception):
                SCRAPE_ERRORS.labels(part).inc()
                log.warning("/metrics left out the %s: %s: %s", part, type(result).__name__, result)
            else:
                yield from result
        yield from SCRAPE_ERRORS.collect()

    def _redis_client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self._settings.redis_url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
        return self._redis

    def _queue(self) -> list[Metric]:
        # Celery's Redis transport keeps a queue's messages in a list named after the queue.
        depth, events, _, oldest = queue_backlog(
            self._redis_client(), self._settings.namespace, self._clock()
        )
        return [
            GaugeMetricFamily(
                "pagerbridge_queue_depth",
                "Messages waiting in the Celery queue (not yet taken by a worker)",
                value=float(depth),
            ),
            GaugeMetricFamily(
                "pagerbridge_queue_events",
                "Events waiting in the queue's apply messages, not yet applied (a message holds "
                f"a batch; counted in the first {QUEUE_SCAN_LIMIT} messages)",
                value=float(events),
            ),
            GaugeMetricFamily(
                "pagerbridge_queue_oldest_event_seconds",
                "Age of the oldest event waiting in the queue, seconds; 0 when none is",
                value=oldest or 0.0,
            ),
        ]

    def _pagerduty_gate(self) -> list[Metric]:
        """The gate of every route's token or key, labelled with the route's name (``default``:
        the PAGERBRIDGE_PAGERDUTY_* settings)."""
        gate = self._gate
        if gate is None and self._settings.pagerduty_token is not None:
            gate = self._gate = DeliveryGate(
                self._redis_client(),
                self._settings.pagerduty_token.get_secret_value(),
                namespace=self._settings.namespace,
            )
        gates = {**({DEFAULT_ROUTE: gate} if gate is not None else {}), **self._route_gates}
        if not gates:
            return []  # no PagerDuty token in this process: the gate's key is unknown
        breaker = GaugeMetricFamily(
            "pagerbridge_breaker_open",
            "1 while the outage breaker is open (PagerDuty failing: deliveries park)",
            labels=["route"],
        )
        refused = GaugeMetricFamily(
            "pagerbridge_pagerduty_credentials_refused",
            "1 while PagerDuty refuses the route's API token or integration key (deliveries park)",
            labels=["route"],
        )
        paused = GaugeMetricFamily(
            "pagerbridge_rate_limit_paused_seconds",
            "Seconds left of the pause every worker observes after a 429",
            labels=["route"],
        )
        tokens = GaugeMetricFamily(
            "pagerbridge_rate_limit_tokens",
            "Calls the route's shared rate limit still allowed at once, as the last call left it",
            labels=["route"],
        )
        for route, route_gate in gates.items():
            status = route_gate.status()
            breaker.add_metric([route], float(status.breaker_open))
            refused.add_metric([route], float(status.credentials_error is not None))
            paused.add_metric([route], status.paused_for)
            if status.tokens is not None:  # None until the first call
                tokens.add_metric([route], status.tokens)
        return [breaker, refused, paused, tokens]

    def _database(self) -> list[Metric]:
        owed = [DeliveryState.PENDING, DeliveryState.PARKED]
        with self._sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                # Ends the statement server-side too, not just our wait for it.
                session.execute(text(f"SET LOCAL statement_timeout = {int(self._timeout * 1000)}"))
            ours = Alert.namespace == namespace_of(session)
            counts: dict[DeliveryState, int] = {
                state: count
                for state, count in session.execute(
                    select(Alert.delivery_state, func.count())
                    .where(ours)
                    .group_by(Alert.delivery_state)
                )
            }
            oldest: datetime | None = session.scalar(
                select(func.min(Alert.pending_since)).where(ours, Alert.delivery_state.in_(owed))
            )
            inbox, inbox_oldest = inbox_backlog(session, self._clock())
        by_state = GaugeMetricFamily(
            "pagerbridge_alerts",
            "Alerts (one per alert cycle) by delivery state",
            labels=["state"],
        )
        for state in DeliveryState:
            by_state.add_metric([state.value], float(counts.get(state, 0)))
        age = 0.0 if oldest is None else max(0.0, (self._clock() - oldest).total_seconds())
        return [
            by_state,
            GaugeMetricFamily(
                "pagerbridge_oldest_pending_seconds",
                "Age of the oldest delivery still owed to PagerDuty (pending or parked), "
                "seconds; 0 when none is",
                value=age,
            ),
            GaugeMetricFamily(
                "pagerbridge_inbox_events",
                "Events accepted and kept in the database inbox that no worker applied yet",
                value=float(inbox),
            ),
            GaugeMetricFamily(
                "pagerbridge_inbox_oldest_event_seconds",
                "Age of the oldest event in the inbox, seconds; 0 when none is",
                value=inbox_oldest or 0.0,
            ),
        ]


def read_concurrently(
    reads: dict[str, Callable[[], list[Metric]]], timeout: float
) -> dict[str, list[Metric] | Exception]:
    """Run each read in a thread of its own and wait at most ``timeout`` seconds for them all.

    A read still running then is reported as a ``TimeoutError`` and left to finish on its own,
    in a daemon thread (one never holds up the process's exit). The drivers' own timeouts
    (Redis socket timeouts, PostgreSQL's statement timeout) end it soon after.
    """
    results: dict[str, list[Metric] | Exception] = {}

    def run(name: str, read: Callable[[], list[Metric]]) -> None:
        try:
            results[name] = read()
        except Exception as exc:  # reported per part by the caller
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=item, name=f"pagerbridge-scrape-{item[0]}", daemon=True)
        for item in reads.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {
        name: results.get(name, TimeoutError(f"no answer within {timeout:g} s")) for name in reads
    }


# -- the worker's metrics port ---------------------------------------------------------------

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable
_worker_metrics: dict[str, Any] = {}  # this worker's metrics server and directory


def enable_multiprocess(directory: str) -> None:
    """Count in files under ``directory`` from now on, in this process and those it forks.

    prometheus-client picks where values live (memory or files) when it is imported, from
    PROMETHEUS_MULTIPROC_DIR; a worker process learns it is one only later (Celery's
    ``worker_init``, before the pool forks). So: drop the label children made so far, set the
    variable, pick again. Metrics with labels make their values at ``labels()`` time, which is
    why every worker metric has labels (tests/unit/test_metrics.py checks it).
    """
    for metric in WORKER_METRICS:
        metric.clear()  # first: prometheus-client warns about clearing in multiprocess mode
    _CALL_SERIES.clear()
    os.environ[MULTIPROC_ENV] = directory
    choose_value_class_again()


def worker_registry(directory: str) -> CollectorRegistry:
    """What the worker's port serves: the sum of every pool process's counts."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def serve_worker_metrics(port: int, directory: str, *, address: str = "127.0.0.1") -> bool:
    """Serve the counts of the processes writing to ``directory`` on ``address``:``port``, in a
    thread of this process; ``False`` (and an error logged) if the port is taken: a worker that
    cannot be scraped must still deliver."""
    try:
        server, _thread = start_http_server(port, addr=address, registry=worker_registry(directory))
    except OSError as exc:
        log.error(
            "worker metrics not served: %s port %d: %s (set PAGERBRIDGE_WORKER_METRICS_ADDRESS "
            "and PAGERBRIDGE_WORKER_METRICS_PORT to a free address and port, or the port to 0 "
            "for none)",
            address,
            port,
            exc,
        )
        return False
    _worker_metrics["server"] = server
    log.info("worker metrics on %s port %d (/metrics)", address, port)
    return True


def _on_worker_init(**_: Any) -> None:
    settings = get_settings()
    if settings.worker_metrics_port == 0:
        return
    directory = tempfile.mkdtemp(prefix="pagerbridge-metrics-")
    _worker_metrics["directory"] = directory
    enable_multiprocess(directory)
    serve_worker_metrics(
        settings.worker_metrics_port, directory, address=settings.worker_metrics_address
    )


def _on_pool_process_init(**_: Any) -> None:
    """A pool process inherits the metrics server's listening socket with the fork: close its
    copy, so that only the main process holds the port (a main process killed with SIGKILL
    then frees it for its successor even while its children finish)."""
    server = _worker_metrics.pop("server", None)
    if server is not None:
        server.socket.close()
    _worker_metrics.pop("directory", None)  # the main process removes it


def _on_worker_shutdown(**_: Any) -> None:
    server = _worker_metrics.pop("server", None)
    if server is not None:
        server.shutdown()
        server.server_close()
    directory = _worker_metrics.pop("directory", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


# Celery sends worker_init in the worker's main process before the pool forks,
# worker_process_init in each pool process it forks, and worker_shutdown in the main process
# after the pool has stopped. worker/pipeline/celery_app.py imports this module, so every worker has
# them connected.
worker_init.connect(_on_worker_init, weak=False)
worker_process_init.connect(_on_pool_process_init, weak=False)
worker_shutdown.connect(_on_worker_shutdown, weak=False)
