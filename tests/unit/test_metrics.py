"""Metrics: what a delivery, a retry and a failure count; the shared-state gauges a scrape reads;
and the worker's multiprocess counting across forked pool processes."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fakeredis
import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from tests.fakes import TOKEN, FakePagerDuty, ListQueue
from worker import metrics
from worker.delivery.gate import DeliveryGate
from worker.delivery.outcomes import ReconcileResult
from worker.delivery.reconcile import Reconciler
from worker.ingress.app import create_app
from worker.pagerduty import PagerDutyClient, PagerDutyError
from worker.pipeline.intake import AppliedEvent, apply_event
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.settings import Settings
from worker.vocabulary import AlertStatus

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]

# -- helpers ----------------------------------------------------------------------------------


def worker_samples() -> dict[str, float]:
    """Every worker metric's current samples, as ``name{label="value",...}`` → value (the
    buckets, sums and creation times left out: counts say what happened)."""
    found: dict[str, float] = {}
    for metric in metrics.WORKER_METRICS:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_sum", "_created")):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


@pytest.fixture
def counted() -> Iterator[Callable[[], dict[str, float]]]:
    """What changed in the worker metrics since the test began (they are process-wide)."""
    before = worker_samples()

    def changes() -> dict[str, float]:
        return {
            name: value - before.get(name, 0.0)
            for name, value in worker_samples().items()
            if value != before.get(name, 0.0)
        }

    yield changes


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pagerduty() -> FakePagerDuty:
    return FakePagerDuty()


@pytest.fixture
def reconciler(
    sqlite_sessions: sessionmaker[Session], pagerduty: FakePagerDuty, clock: Clock
) -> Reconciler:
    settings = Settings(retry_min_backoff=5, retry_max_backoff=300, give_up_after=3600)
    return Reconciler(sqlite_sessions, pagerduty.client(), settings, clock=clock)


def trigger(
    sessions: sessionmaker[Session], clock: Clock, alert_id: str, *, title: str = "CPU high"
) -> int:
    event = AlertEventMessage(
        event_id=new_event_id(),
        source=SOURCE_COSCALE,
        alert_id=alert_id,
        action=AlertStatus.TRIGGERED,
        received_at=clock(),
        title=title,
        details="Message: CPU high",
        service_id="PSVC",
    )
    applied: AppliedEvent = apply_event(sessions, event, clock())
    assert applied.alert_pk is not None
    return applied.alert_pk


def client_answering(handler: Callable[[httpx.Request], httpx.Response]) -> PagerDutyClient:
    return PagerDutyClient(
        "https://pagerduty.test",
        TOKEN,
        "bridge@example.com",
        transport=httpx.MockTransport(handler),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what a delivery counts -------------------------------------------------------------------


def test_a_delivered_alert_counts_one_create_and_one_delivery(
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
    counted: Callable[[], dict[str, float]],
) -> None:
    # Given a triggered alert
    alert_pk = trigger(sqlite_sessions, clock, "42")

    # When a worker delivers it
    assert reconciler.reconcile(alert_pk) is ReconcileResult.DELIVERED

    # Then one create answered 2xx, timed, and one delivered alert were counted
    assert counted() == {
        'pagerbridge_pagerduty_calls_total{endpoint="create",status_class="2xx"}': 1,
        'pagerbridge_pagerduty_call_duration_seconds_count{endpoint="create"}': 1,
        'pagerbridge_deliveries_total{outcome="delivered"}': 1,
    }


def test_a_retried_alert_counts_the_5xx_and_the_retry(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
    counted: Callable[[], dict[str, float]],
) -> None:
    # Given PagerDuty answers the next create 503
    pagerduty.fail_next("create", "503")
    alert_pk = trigger(sqlite_sessions, clock, "43")

    # When a worker tries to deliver the alert
    assert reconciler.reconcile(alert_pk) is ReconcileResult.RETRY

    # Then the call counts as 5xx, and a retry is scheduled for a server error
    assert counted() == {
        'pagerbridge_pagerduty_calls_total{endpoint="create",status_class="5xx"}': 1,
        'pagerbridge_pagerduty_call_duration_seconds_count{endpoint="create"}': 1,
        'pagerbridge_retries_total{reason="server_error"}': 1,
        'pagerbridge_deliveries_total{outcome="retry"}': 1,
    }


def test_a_failed_alert_counts_the_4xx_and_the_failure(
    reconciler: Reconciler,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
    counted: Callable[[], dict[str, float]],
) -> None:
    # Given an alert whose title PagerDuty refuses (over 1,024 characters: 400, permanent)
    alert_pk = trigger(sqlite_sessions, clock, "44", title="x" * 1025)

    # When a worker tries to deliver it
    assert reconciler.reconcile(alert_pk) is ReconcileResult.FAILED

    # Then the call counts as 4xx, the alert as failed, and nothing as a retry
    assert counted() == {
        'pagerbridge_pagerduty_calls_total{endpoint="create",status_class="4xx"}': 1,
        'pagerbridge_pagerduty_call_duration_seconds_count{endpoint="create"}': 1,
        'pagerbridge_deliveries_total{outcome="failed"}': 1,
    }


def test_refused_credentials_count_as_parked(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
    counted: Callable[[], dict[str, float]],
) -> None:
    # Given PagerDuty refuses the token
    pagerduty.fail_next("create", "401")

    # When a worker tries to deliver an alert
    assert reconciler.reconcile(trigger(sqlite_sessions, clock, "45")) is ReconcileResult.PARKED

    # Then the alert counts as parked
    assert counted()['pagerbridge_deliveries_total{outcome="parked"}'] == 1


@pytest.mark.parametrize(
    ("call", "endpoint"),
    [
        (lambda c: c.create_incident(title="t", service_id="S", incident_key="k"), "create"),
        (lambda c: c.update_incident("P1", "resolved"), "update"),
        (lambda c: c.update_incidents([("P1", "resolved"), ("P2", "resolved")]), "bulk_update"),
        (lambda c: c.find_incidents("k"), "find"),
    ],
)
def test_calls_are_named_by_endpoint(
    call: Callable[[PagerDutyClient], object],
    endpoint: str,
    counted: Callable[[], dict[str, float]],
) -> None:
    # Given a PagerDuty that answers every call 500
    client = client_answering(lambda request: httpx.Response(500, json={}))

    # When the client makes the call
    with client, pytest.raises(PagerDutyError):
        call(client)

    # Then it counts under the endpoint's name
    assert (
        counted()[f'pagerbridge_pagerduty_calls_total{{endpoint="{endpoint}",status_class="5xx"}}']
        == 1
    )


def test_a_429_and_a_network_error_are_counted(counted: Callable[[], dict[str, float]]) -> None:
    # Given a PagerDuty that rate-limits, then one that cannot be reached
    limited = client_answering(lambda request: httpx.Response(429, headers={"Retry-After": "2"}))

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = client_answering(unreachable)

    # When a create and a find are tried
    with limited, pytest.raises(PagerDutyError):
        limited.create_incident(title="t", service_id="S", incident_key="k")
    with down, pytest.raises(PagerDutyError):
        down.find_incidents("k")

    # Then the 429 counts as 4xx and as rate-limited, and the find as a network failure
    assert counted() == {
        'pagerbridge_pagerduty_calls_total{endpoint="create",status_class="4xx"}': 1,
        'pagerbridge_pagerduty_call_duration_seconds_count{endpoint="create"}': 1,
        'pagerbridge_pagerduty_rate_limited_total{endpoint="create"}': 1,
        'pagerbridge_pagerduty_calls_total{endpoint="find",status_class="network"}': 1,
        'pagerbridge_pagerduty_call_duration_seconds_count{endpoint="find"}': 1,
    }


@pytest.mark.parametrize(
    ("status", "status_class", "reason"),
    [
        (None, "network", "network"),
        (201, "2xx", "other"),
        (408, "4xx", "other"),
        (429, "4xx", "rate_limited"),
        (503, "5xx", "server_error"),
        (999, "other", "other"),
    ],
)
def test_status_classes_and_retry_reasons(
    status: int | None, status_class: str, reason: str
) -> None:
    assert metrics.status_class(status) == status_class
    assert metrics.retry_reason(status) == reason


# -- the shared state, read at scrape time ------------------------------------------------------


def scrape(collector: metrics.BridgeStateCollector) -> dict[str, float]:
    """One scrape's gauges and error counts, as ``name{labels}`` → value."""
    found: dict[str, float] = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_collector_reads_queue_alerts_oldest_pending_and_gate(
    reconciler: Reconciler,
    pagerduty: FakePagerDuty,
    sqlite_sessions: sessionmaker[Session],
    clock: Clock,
) -> None:
    # Given alerts in every state but parked: one delivered, one failed, two pending (the
    # oldest pending since START), and three messages waiting in the Celery queue
    delivered = trigger(sqlite_sessions, clock, "1")
    reconciler.reconcile(delivered)
    reconciler.reconcile(trigger(sqlite_sessions, clock, "2", title="x" * 1025))
    trigger(sqlite_sessions, clock, "3")
    clock.now += timedelta(seconds=30)
    trigger(sqlite_sessions, clock, "4")
    redis = fakeredis.FakeRedis()
    settings = Settings(namespace="bridge-a", pagerduty_token="pd-token")  # type: ignore[arg-type]
    redis.rpush("bridge-a", "m1", "m2", "m3")
    redis.rpush("bridge-b", "another bridge's message")
    # And an open breaker, with one call's worth of rate-limit budget spent
    gate = DeliveryGate(redis, "pd-token", namespace="bridge-a", failure_threshold=1, burst=10)
    gate.admit()
    gate.failed()

    # When Prometheus scrapes, 90 s after the oldest pending alert became pending
    collector = metrics.BridgeStateCollector(
        settings,
        sqlite_sessions,
        redis_client=redis,
        clock=lambda: START + timedelta(seconds=90),
    )
    gauges = scrape(collector)

    # Then each gauge says so, and nothing failed
    assert gauges == {
        "pagerbridge_queue_depth": 3,
        # m1..m3 are not apply messages: no event counted, none aged
        "pagerbridge_queue_events": 0,
        "pagerbridge_queue_oldest_event_seconds": 0,
        "pagerbridge_inbox_events": 0,
        "pagerbridge_inbox_oldest_event_seconds": 0,
        'pagerbridge_alerts{state="pending"}': 2,
        'pagerbridge_alerts{state="delivered"}': 1,
        'pagerbridge_alerts{state="parked"}': 0,
        'pagerbridge_alerts{state="failed"}': 1,
        "pagerbridge_oldest_pending_seconds": 90,
        'pagerbridge_breaker_open{route="default"}': 1,
        'pagerbridge_pagerduty_credentials_refused{route="default"}': 0,
        'pagerbridge_rate_limit_paused_seconds{route="default"}': 0,
        'pagerbridge_rate_limit_tokens{route="default"}': 9,
        'pagerbridge_scrape_errors_total{part="queue"}': gauges[
            'pagerbridge_scrape_errors_total{part="queue"}'
        ],
        'pagerbridge_scrape_errors_total{part="pagerduty_gate"}': gauges[
            'pagerbridge_scrape_errors_total{part="pagerduty_gate"}'
        ],
        'pagerbridge_scrape_errors_total{part="database"}': gauges[
            'pagerbridge_scrape_errors_total{part="database"}'
        ],
    }


def test_collector_without_a_pagerduty_token_leaves_the_gate_out(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given an api that was not given the PagerDuty token (the gate's key is derived from it)
    collector = metrics.BridgeStateCollector(
        Settings(), sqlite_sessions, redis_client=fakeredis.FakeRedis()
    )

    # When scraped
    gauges = scrape(collector)

    # Then the queue and the database are there, the gate's gauges are not
    assert gauges["pagerbridge_queue_depth"] == 0
    assert gauges["pagerbridge_oldest_pending_seconds"] == 0
    assert not any(name.startswith(("pagerbridge_breaker", "pagerbridge_rate")) for name in gauges)


def test_unreadable_parts_become_scrape_errors_not_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis that is down and a database without the schema
    server = fakeredis.FakeServer()
    server.connected = False
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    collector = metrics.BridgeStateCollector(
        Settings(pagerduty_token="pd-token"),  # type: ignore[arg-type]
        make_session_factory(engine),
        redis_client=fakeredis.FakeRedis(server=server),
    )
    before = scrape(collector)

    # When scraped again
    with caplog.at_level(logging.WARNING, logger="worker.metrics"):
        gauges = scrape(collector)
    engine.dispose()

    # Then no gauge is made up, each part's error is counted once more, and logged
    assert set(gauges) == {
        f'pagerbridge_scrape_errors_total{{part="{part}"}}' for part in metrics.SCRAPE_PARTS
    }
    for name, value in gauges.items():
        assert value == before[name] + 1, name
    assert "left out the database" in caplog.text


def test_a_read_that_hangs_is_cut_short() -> None:
    # Given a read that would answer only when released, and one that answers at once
    release = threading.Event()

    def hangs() -> list[Metric]:
        release.wait(10)
        return []

    # When both are read with a 0.1 s budget
    started = time.monotonic()
    results = metrics.read_concurrently({"hangs": hangs, "quick": lambda: []}, timeout=0.1)
    elapsed = time.monotonic() - started
    release.set()

    # Then the scrape waited about the budget, the quick one answered, the other timed out
    assert elapsed < 1.0
    assert results["quick"] == []
    assert isinstance(results["hangs"], TimeoutError)


def test_metrics_endpoint_is_behind_the_token_unless_public(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    # Given two api apps, one with PAGERBRIDGE_METRICS_PUBLIC, neither with a reachable Redis
    def app(public: bool) -> TestClient:
        settings = Settings(
            ingress_tokens="t-0123456789abcdef0123456789abcdef",  # type: ignore[arg-type]
            metrics_public=public,
            redis_url="redis://127.0.0.1:1/0",
        )
        return TestClient(
            create_app(settings, queue=ListQueue(), sessions=sqlite_sessions, redis_ping=str)
        )

    # When each is scraped without a token
    with app(public=False) as private, app(public=True) as public:
        refused = private.get("/metrics")
        answered = public.get("/metrics")
        allowed = private.get(
            "/metrics", headers={"Authorization": "Bearer t-0123456789abcdef0123456789abcdef"}
        )

    # Then the default refuses, the public one answers, and Redis being away is a count, not a 500
    assert refused.status_code == 401
    assert answered.status_code == 200 and allowed.status_code == 200
    assert 'pagerbridge_alerts{state="pending"} 0.0' in answered.text
    assert 'pagerbridge_scrape_errors_total{part="queue"}' in answered.text
    assert "pagerbridge_queue_depth" not in answered.text


# -- the worker's port: prefork pool processes, one total ---------------------------------------


@pytest.mark.parametrize("metric", metrics.WORKER_METRICS, ids=lambda metric: metric._name)
def test_every_worker_metric_has_labels(metric: Counter | Histogram) -> None:
    # Values of a labelled metric are made at labels() time, after the worker switched to
    # multiprocess mode (worker/metrics.py, enable_multiprocess).
    assert metric._labelnames


PREFORK = textwrap.dedent(
    """
    import os, sys, urllib.request
    from worker import metrics

    directory, port = sys.argv[1], int(sys.argv[2])
    metrics.observe_pagerduty_call("create", 201, 0.1)  # in memory: before the switch
    # As the worker's main process does at Celery's worker_init, before the pool forks.
    metrics.enable_multiprocess(directory)
    assert metrics.serve_worker_metrics(port, directory)
    metrics.observe_pagerduty_call("find", 200, 0.1)  # the parent's own file, before the forks
    children = []
    for n in range(2):  # two pool processes, each delivering an alert
        pid = os.fork()
        if pid == 0:
            metrics.count_deliveries(["delivered"])
            metrics.observe_pagerduty_call("create", 201, 0.2)
            metrics.observe_pagerduty_call("find", 200, 0.2)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        sys.stdout.write(answer.read().decode())
    """
)


def test_worker_port_sums_the_pool_processes(tmp_path: Path) -> None:
    # Given a worker's main process that forks two pool processes, each counting a delivery
    port = free_port()

    # When its metrics port is scraped after they exit
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", PREFORK, str(tmp_path), str(port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then it shows both processes' counts, summed
    assert done.returncode == 0, done.stderr
    assert 'pagerbridge_deliveries_total{outcome="delivered"} 2.0' in done.stdout
    assert (
        'pagerbridge_pagerduty_calls_total{endpoint="create",status_class="2xx"} 2.0' in done.stdout
    )
    # The series a process made before it forked count in each process's own file
    found = 'pagerbridge_pagerduty_calls_total{endpoint="find",status_class="2xx"} 3.0'
    assert found in done.stdout


def test_a_taken_port_is_logged_and_the_worker_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given something already listens on the port
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104  (as the metrics server would)
        taken.listen()
        port = taken.getsockname()[1]

        # When the worker tries to serve its metrics there
        with caplog.at_level(logging.ERROR, logger="worker.metrics"):
            served = metrics.serve_worker_metrics(port, str(tmp_path))

    # Then it says so, and does not raise
    assert served is False
    assert "PAGERBRIDGE_WORKER_METRICS_PORT" in caplog.text


def test_worker_registry_reads_an_empty_directory(tmp_path: Path) -> None:
    # A worker scraped before any pool process counted anything answers, with no samples.
    registry: CollectorRegistry = metrics.worker_registry(str(tmp_path))
    assert generate_latest(registry) == b""


def test_worker_metrics_port_setting() -> None:
    assert Settings().worker_metrics_port == 9808
    assert Settings(worker_metrics_port=0).worker_metrics_port == 0
    with pytest.raises(ValueError, match="worker_metrics_port"):
        Settings(worker_metrics_port=70000)


def test_prometheus_client_still_chooses_its_value_class_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The internal worker/prometheus_multiprocess.py relies on: after a new choice, a metric made
    # with PROMETHEUS_MULTIPROC_DIR set counts in a file there; without it, in memory.
    from prometheus_client import CollectorRegistry, Counter, values

    from worker.prometheus_multiprocess import choose_value_class_again

    before = values.ValueClass
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    try:
        choose_value_class_again()
        counter = Counter("probe_total", "a probe", ["kind"], registry=CollectorRegistry())
        counter.labels("x").inc()
        assert list(tmp_path.glob("counter_*.db"))
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        assert choose_value_class_again() is values.MutexValue
    finally:
        values.ValueClass = before
