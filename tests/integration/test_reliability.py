"""Delivery that survives PagerDuty: one test per behaviour, each failing if it breaks.

Outage then recovery; lost answers on create and on update; 429 with and without headers; 401;
SIGKILL of a worker during a drain; Redis flushed mid-backlog; events shuffled across several
workers. Real Redis, PostgreSQL, worker processes and the simulator.

Tests that need their own worker settings, or that do something a shared bridge would not
survive (a SIGKILL, a flushed Redis), run a bridge of their own: its own database, namespace
and simulator, so that what a test counts in the tables is its own bridge's doing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from models import Alert, make_engine, make_session_factory, utcnow
from tests.integration.conftest import (
    PAGERDUTY_TOKEN,
    SERVICE_ID,
    Bridge,
    Service,
    _http_ok,
    as_default_key,
    bridge_env,
    free_port,
    fresh_database,
    start_service,
    wait_until_up,
)
from worker.pipeline.celery_app import VISIBILITY_TIMEOUT, create_celery, intake_queue
from worker.pipeline.message import SOURCE_COSCALE, AlertEventMessage, new_event_id
from worker.pipeline.queue import CeleryEventQueue
from worker.settings import Settings
from worker.simulator.control import SimulatorControl
from worker.vocabulary import AlertStatus

pytestmark = pytest.mark.integration

CONCURRENCY = 2  # worker processes of every bridge here


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def eventually(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    diagnose: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> Any:
    """Poll ``condition`` until truthy; on timeout fail with ``what`` and ``diagnose()``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnose()}")
        time.sleep(interval)


def new_alert_ids(count: int) -> list[str]:
    run = uuid.uuid4().hex[:10]
    return [f"rel-{run}-{n}" for n in range(count)]


def key_prefix(alert_id: str) -> str:
    return f"pagerbridge/{SOURCE_COSCALE}/{alert_id}/"


def webhook(alert_id: str, action: str) -> dict[str, str]:
    return {
        "alert_id": alert_id,
        "action": action,
        "message": f"disk full {alert_id}",
        "metric": "disk",
        "app": "shop",
    }


def send(api: httpx.Client, alert_ids: list[str], action: str) -> None:
    for alert_id in alert_ids:
        answer = api.post("/webhooks/coscale", json=webhook(alert_id, action))
        assert answer.status_code == 202, answer.text


def counts(bridge: Bridge) -> dict[str, Any]:
    result: dict[str, Any] = bridge.simulator.state()["counts"]
    return result


def lost_updates(state: dict[str, Any]) -> int:
    """PUTs PagerDuty applied but answered 502 (``lost`` only turns a 2xx into a 502)."""
    return sum(
        call["count"]
        for call in state["calls"]
        if call["method"] == "PUT" and call["status"] == 502
    )


def total_calls(bridge: Bridge) -> int:
    return sum(call["count"] for call in counts(bridge)["calls"])


def alert_rows(bridge: Bridge, alert_ids: list[str]) -> dict[str, Alert]:
    """The newest cycle of each of these CoScale alerts, straight from SQL."""
    with bridge.sessions() as session:
        rows = session.scalars(
            select(Alert)
            .where(Alert.source == SOURCE_COSCALE, Alert.source_alert_id.in_(alert_ids))
            .order_by(Alert.cycle)
        ).all()
        session.expunge_all()
    return {row.source_alert_id: row for row in rows}


def all_delivered(bridge: Bridge, alert_ids: list[str], status: str) -> bool:
    rows = alert_rows(bridge, alert_ids)
    return len(rows) == len(alert_ids) and all(
        row.delivery_state.value == "delivered" and row.desired_status.value == status
        for row in rows.values()
    )


def describe_alerts(bridge: Bridge, alert_ids: list[str]) -> str:
    rows = alert_rows(bridge, alert_ids)
    states = Counter(
        f"{row.desired_status.value}/{row.delivery_state.value}" for row in rows.values()
    )
    stuck = [
        f"{row.source_alert_id}: {row.desired_status.value}/{row.delivery_state.value} "
        f"attempts={row.attempts} next={row.next_attempt_at} lease={row.lease_expires_at} "
        f"error={row.last_error}"
        for row in rows.values()
        if row.delivery_state.value != "delivered"
    ][:10]
    return f"{len(rows)}/{len(alert_ids)} alerts in SQL; states {dict(states)}\n" + "\n".join(stuck)


def wait_delivered(bridge: Bridge, alert_ids: list[str], status: str, *, timeout: float) -> None:
    eventually(
        lambda: all_delivered(bridge, alert_ids, status),
        timeout=timeout,
        what=f"{len(alert_ids)} alerts delivered as {status}",
        diagnose=lambda: (
            describe_alerts(bridge, alert_ids) + f"\nsimulator: {counts(bridge)}\n{bridge.logs()}"
        ),
    )


def views(api: httpx.Client, alert_ids: list[str]) -> dict[str, dict[str, Any]]:
    """GET /alerts/{id} of every alert."""
    found = {}
    for alert_id in alert_ids:
        answer = api.get(f"/alerts/{alert_id}")
        assert answer.status_code == 200, answer.text
        found[alert_id] = answer.json()
    return found


def incidents_of(bridge: Bridge, alert_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The simulator's incidents of each alert (by its incident_key)."""
    found: dict[str, list[dict[str, Any]]] = {alert_id: [] for alert_id in alert_ids}
    wanted = {key_prefix(alert_id): alert_id for alert_id in alert_ids}
    for incident in bridge.simulator.state()["incidents"]:
        key = as_default_key(str(incident.get("incident_key") or ""))
        prefix = key.rsplit("/", 1)[0] + "/"
        if prefix in wanted:
            found[wanted[prefix]].append(incident)
    return found


def assert_one_incident_each(
    bridge: Bridge, api: httpx.Client, alert_ids: list[str], status: str
) -> dict[str, dict[str, Any]]:
    """Exactly one incident per alert, in ``status``, the one the mapping names; every alert
    delivered according to GET /alerts/{id}."""
    incidents = incidents_of(bridge, alert_ids)
    doubled = {a: [i["id"] for i in found] for a, found in incidents.items() if len(found) > 1}
    missing = [a for a, found in incidents.items() if not found]
    assert not doubled, f"duplicate incidents for one alert: {doubled}"
    assert not missing, f"{len(missing)} alert(s) have no incident: {missing[:10]}"
    keys = Counter(found[0]["incident_key"] for found in incidents.values())
    assert max(keys.values()) == 1
    shown = views(api, alert_ids)
    for alert_id, view in shown.items():
        incident = incidents[alert_id][0]
        assert view["delivery_state"] == "delivered", view
        assert view["desired_status"] == status, view
        assert view["pagerduty_incident_id"] == incident["id"], (view, incident)
        assert incident["status"] == status, incident
    return shown


def purge_namespace(client: redis.Redis, namespace: str) -> list[str]:
    """What FLUSHDB would do to one bridge, leaving other sessions sharing the db alone: its
    queue (all priorities), its gate, its exchange's bindings, and its unacknowledged messages.
    Returns the keys deleted."""
    keys = [key.decode() for key in client.scan_iter(match=f"{namespace}*")]
    keys += [
        name
        for name in (f"_kombu.binding.{namespace}", f"_kombu.binding_permanent.{namespace}")
        if client.exists(name)
    ]
    if keys:
        client.delete(*keys)
    for tag, raw in client.hscan_iter("unacked"):
        _message, exchange, routing_key = json.loads(raw)
        if _of_namespace(namespace, exchange, routing_key):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
            keys.append(f"unacked[{tag.decode()}]")
    return keys


def _of_namespace(namespace: str, exchange: str, routing_key: str) -> bool:
    """Whether a message taken went to one of ``namespace``'s queues (intake or delivery)."""
    queues = (namespace, intake_queue(namespace))
    return exchange in queues or routing_key in queues


def _summary(messages: list[str], shown: int = 5) -> str:
    return (
        f"{len(messages)}\n  "
        + "\n  ".join(messages[:shown])
        + ("\n  ..." if len(messages) > shown else "")
    )


def unacked_of(client: redis.Redis, namespace: str) -> list[str]:
    """The messages of ``namespace`` a worker took and never acknowledged, as ``task args``
    (invisible to every worker until the broker's visibility timeout restores them)."""
    found = []
    for _tag, raw in client.hscan_iter("unacked"):
        message, exchange, routing_key = json.loads(raw)
        if _of_namespace(namespace, exchange, routing_key):
            headers = message.get("headers", {})
            found.append(f"{headers.get('task')} {headers.get('argsrepr', '')[:120]}")
    return found


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def api(bridge: Bridge) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10) as client:
        yield client


@pytest.fixture
def gate_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def leave_shared_bridge_healthy(
    bridge: Bridge, namespace: str, gate_redis: redis.Redis
) -> Iterator[None]:
    """After each test: no simulator fault, no breaker, pause or refusal in the gate."""
    yield
    bridge.simulator.clear_faults()
    gate_keys = list(gate_redis.scan_iter(match=f"{namespace}:gate:*"))
    if gate_keys:
        gate_redis.delete(*gate_keys)


@dataclass
class OwnBridge:
    """A bridge of one test's own: database, namespace, simulator, api, beat, workers."""

    bridge: Bridge
    namespace: str
    logs: Path
    api: httpx.Client
    workers: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return self.bridge.env

    def start_worker(self, name: str = "worker") -> Service:
        worker = start_service(
            name, ["worker", "--concurrency", str(CONCURRENCY)], self.env, self.logs
        )
        self.bridge.services[name] = worker
        self.workers.append(worker)
        wait_until_up(worker, lambda: " ready." in worker.output())
        return worker


@pytest.fixture
def own_bridge(
    redis_url: str, gate_redis: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., OwnBridge]]:
    """Builds a bridge of this test's own (``own_bridge(start_worker=..., **env)``); stops it,
    drops its database and removes its keys from Redis afterwards."""
    stack = contextlib.ExitStack()

    def build(*, start_worker: bool = True, **env_overrides: str) -> OwnBridge:
        database_url = stack.enter_context(fresh_database())
        namespace = f"pagerbridge-rel-{uuid.uuid4().hex[:8]}"
        stack.callback(purge_namespace, gate_redis, namespace)
        sim_port, api_port = free_port(), free_port()
        env = bridge_env(database_url, redis_url, f"http://127.0.0.1:{sim_port}", namespace)
        env.update(env_overrides)
        logs = tmp_path / namespace
        logs.mkdir()
        simulator = SimulatorControl(f"http://127.0.0.1:{sim_port}")
        stack.callback(simulator.close)
        engine = make_engine(database_url)
        stack.callback(engine.dispose)
        bridge = Bridge(
            f"http://127.0.0.1:{api_port}", simulator, make_session_factory(engine), env=env
        )

        def stop_all() -> None:
            for service in reversed(list(bridge.services.values())):
                if service.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(service.process.pid, signal.SIGTERM)
                service.stop()

        stack.callback(stop_all)
        sim = start_service(
            "simulator",
            ["simulate", "--port", str(sim_port), "--token", PAGERDUTY_TOKEN],
            env,
            logs,
        )
        bridge.services["simulator"] = sim
        wait_until_up(sim, lambda: simulator.state() is not None)
        api_service = start_service("api", ["api", "--port", str(api_port)], env, logs)
        bridge.services["api"] = api_service
        wait_until_up(api_service, lambda: _http_ok(f"{bridge.api_url}/healthz"))
        beat_env = {**env, "PAGERBRIDGE_BEAT_SCHEDULE_PATH": str(logs / "beat-schedule")}
        beat = start_service("beat", ["beat"], beat_env, logs)
        bridge.services["beat"] = beat
        wait_until_up(beat, lambda: "beat: Starting" in beat.output())
        client = stack.enter_context(
            httpx.Client(base_url=bridge.api_url, headers=bridge.headers, timeout=10)
        )
        own = OwnBridge(bridge, namespace, logs, client)
        if start_worker:
            own.start_worker()
        return own

    with stack:
        yield build


def threshold_of(bridge: Bridge) -> int:
    default = Settings.model_fields["breaker_threshold"].default
    return int(bridge.env.get("PAGERBRIDGE_BREAKER_THRESHOLD", default))


# ---------------------------------------------------------------------------------------------
# 5. Outage breaker
# ---------------------------------------------------------------------------------------------


def test_outage_parks_deliveries_then_drains_on_recovery(bridge: Bridge, api: httpx.Client) -> None:
    threshold = threshold_of(bridge)
    alert_ids = new_alert_ids(30)
    calls_before = total_calls(bridge)
    started = time.time()
    bridge.simulator.set_faults(down=True)

    send(api, alert_ids, "triggered")
    eventually(
        lambda: len(alert_rows(bridge, alert_ids)) == len(alert_ids),
        timeout=10,
        what="every trigger applied",
    )
    time.sleep(max(0.0, 8 - (time.time() - started)))

    # While down: the breaker opened after `threshold` failures, then one probe a second.
    state = counts(bridge)
    down_for = time.time() - started
    down_calls = sum(call["count"] for call in state["calls"]) - calls_before
    per_second = [
        entry["count"]
        for entry in state["calls_per_second"]
        if entry["second"] >= int(started) + 2  # past the calls that opened the breaker
    ]
    assert down_calls <= threshold + CONCURRENCY + math.ceil(down_for), (
        f"{down_calls} calls to a PagerDuty down for {down_for:.1f}s "
        f"(breaker threshold {threshold}); per second: {state['calls_per_second'][-12:]}"
    )
    assert max(per_second, default=0) <= 1, state["calls_per_second"][-12:]

    down_views = views(api, alert_ids)
    delivery_states = Counter(view["delivery_state"] for view in down_views.values())
    assert delivery_states["failed"] == 0, delivery_states
    assert delivery_states["delivered"] == 0, delivery_states
    # The calls that opened the breaker failed for real: those alerts wait out their backoff
    # (pending) before they too meet the open breaker and park.
    assert delivery_states["parked"] >= len(alert_ids) - threshold, delivery_states
    # Parking spends no attempt: only calls PagerDuty actually refused did.
    attempts = [view["attempts"] for view in down_views.values()]
    assert sum(attempts) <= down_calls, attempts
    assert attempts.count(0) >= len(alert_ids) // 2, attempts

    # PagerDuty is back: the next probe closes the breaker and the parked alerts drain at
    # once, not at their next recheck (30 s later).
    bridge.simulator.clear_faults()
    recovered = time.monotonic()
    wait_delivered(bridge, alert_ids, "triggered", timeout=10)
    drained_in = time.monotonic() - recovered
    assert_one_incident_each(bridge, api, alert_ids, "triggered")
    assert drained_in < 10


# ---------------------------------------------------------------------------------------------
# 1. Idempotent create, and updates whose answers are lost
# ---------------------------------------------------------------------------------------------


def test_lost_answers_on_create_and_on_update(bridge: Bridge, api: httpx.Client) -> None:
    alert_ids = new_alert_ids(20)
    before = counts(bridge)

    # Half of the successful calls answer 502: PagerDuty created the incident, we never heard.
    bridge.simulator.set_faults(lost=0.5, seed=3)
    send(api, alert_ids, "triggered")
    eventually(
        lambda: counts(bridge)["duplicate_creates_refused"] > before["duplicate_creates_refused"],
        timeout=20,
        what="a retried create refused as a duplicate while answers are lost",
        diagnose=lambda: str(counts(bridge)) + describe_alerts(bridge, alert_ids),
    )
    time.sleep(2)
    bridge.simulator.clear_faults()
    wait_delivered(bridge, alert_ids, "triggered", timeout=20)

    after_create = counts(bridge)
    assert after_create["faults"]["lost"] > before["faults"]["lost"]
    assert after_create["duplicate_creates_refused"] > before["duplicate_creates_refused"]
    shown = assert_one_incident_each(bridge, api, alert_ids, "triggered")
    assert all(view["delivery_state"] == "delivered" for view in shown.values())

    # Then resolve them all while every update PagerDuty applies loses its answer (resolves
    # leave in a few bulk calls: with a fraction, none might be lost).
    bridge.simulator.set_faults(lost=1.0)
    send(api, alert_ids, "resolved")
    eventually(
        lambda: lost_updates(counts(bridge)) > lost_updates(after_create),
        timeout=20,
        what="an update applied by PagerDuty whose answer was lost",
        diagnose=lambda: str(counts(bridge)),
    )
    time.sleep(1)
    bridge.simulator.clear_faults()
    wait_delivered(bridge, alert_ids, "resolved", timeout=20)

    after_resolve = counts(bridge)
    assert after_resolve["reopened"] == before["reopened"]
    assert_one_incident_each(bridge, api, alert_ids, "resolved")
    for alert_id, (incident,) in incidents_of(bridge, alert_ids).items():
        history = [change["to"] for change in incident["status_history"]]
        assert history == ["triggered", "resolved"], (alert_id, incident["status_history"])
        assert not any(change["reopened"] for change in incident["status_history"])


# ---------------------------------------------------------------------------------------------
# 6. Rate limit: a 429 pauses the token, spends no attempt
# ---------------------------------------------------------------------------------------------


def _deliver_through_rate_limit(bridge: Bridge, api: httpx.Client, **headers: bool) -> None:
    alert_ids = new_alert_ids(15)
    before = counts(bridge)
    # Two calls a second after a burst of 5: the bridge's own budget (900/min) is far above it.
    bridge.simulator.set_faults(rate_limit_per_minute=120, rate_limit_burst=5, **headers)
    send(api, alert_ids, "triggered")

    seen_waiting: dict[str, int] = {}

    def delivered_noting_waits() -> bool:
        for alert_id, row in alert_rows(bridge, alert_ids).items():
            if row.delivery_state.value == "pending" and row.last_error:
                seen_waiting[alert_id] = row.attempts
        return all_delivered(bridge, alert_ids, "triggered")

    eventually(
        delivered_noting_waits,
        timeout=45,
        what="every alert delivered through the rate limit",
        diagnose=lambda: describe_alerts(bridge, alert_ids) + f"\n{counts(bridge)}",
    )
    after = counts(bridge)
    rate_limited = after["faults"]["rate_limited"] - before["faults"]["rate_limited"]
    if headers.get("rate_limit_headers"):
        # Every answer carries ratelimit-*: the workers pace by them (tests/integration/
        # test_pacing.py); only a process's first calls, before any answer taught the pace, may
        # meet a 429. The 429 pause is the headerless case's.
        assert rate_limited <= CONCURRENCY, rate_limited
    else:
        assert rate_limited > 0, "the simulator never answered 429: the test proves nothing"
        # Each 429 paused every worker: not one 429 per waiting alert per retry.
        assert rate_limited <= len(alert_ids), rate_limited
        assert seen_waiting, "no alert was seen waiting for the rate limit"
        assert set(seen_waiting.values()) == {0}, seen_waiting

    shown = assert_one_incident_each(bridge, api, alert_ids, "triggered")
    assert {view["attempts"] for view in shown.values()} == {0}, {
        alert_id: view["attempts"] for alert_id, view in shown.items()
    }


def test_429_with_ratelimit_headers_pauses_without_spending_attempts(
    bridge: Bridge, api: httpx.Client
) -> None:
    _deliver_through_rate_limit(bridge, api, rate_limit_headers=True, rate_limit_retry_after=True)


def test_429_without_headers_pauses_without_spending_attempts(
    bridge: Bridge, api: httpx.Client
) -> None:
    _deliver_through_rate_limit(bridge, api, rate_limit_headers=False, rate_limit_retry_after=False)


# ---------------------------------------------------------------------------------------------
# 7. Credentials
# ---------------------------------------------------------------------------------------------


def test_refused_token_parks_and_a_restart_resumes(
    bridge: Bridge, api: httpx.Client, tmp_path: Path
) -> None:
    alert_ids = new_alert_ids(5)
    before = counts(bridge)
    bridge.simulator.set_faults(unauthorized_tokens=[PAGERDUTY_TOKEN])
    send(api, alert_ids, "triggered")

    def all_parked() -> bool:
        rows = alert_rows(bridge, alert_ids).values()
        return len(rows) == len(alert_ids) and all(
            row.delivery_state.value == "parked" for row in rows
        )

    eventually(
        all_parked,
        timeout=15,
        what="every alert parked",
        diagnose=lambda: describe_alerts(bridge, alert_ids),
    )
    time.sleep(2)  # parked stays parked: nothing fails, nothing is retried against a 401
    parked = views(api, alert_ids)
    assert {view["delivery_state"] for view in parked.values()} == {"parked"}, parked
    assert {view["attempts"] for view in parked.values()} == {0}, parked
    refusals = counts(bridge)["faults"]["unauthorized"] - before["faults"]["unauthorized"]
    assert 1 <= refusals <= CONCURRENCY + 1, f"{refusals} calls with a refused token"
    assert bridge.incidents(key_prefix(alert_ids[0])) == []

    # The token is fixed and a worker (re)starts: it forgets the refusal and wakes the parked.
    bridge.simulator.clear_faults()
    restarted = start_service(
        "worker-restarted", ["worker", "--concurrency", "1"], bridge.env, tmp_path
    )
    try:
        wait_until_up(restarted, lambda: " ready." in restarted.output())
        wait_delivered(bridge, alert_ids, "triggered", timeout=15)
    finally:
        restarted.stop()
    assert_one_incident_each(bridge, api, alert_ids, "triggered")


# ---------------------------------------------------------------------------------------------
# 4. Durable scheduling: Redis flushed mid-backlog
# ---------------------------------------------------------------------------------------------


def test_redis_flushed_mid_backlog_loses_nothing(
    own_bridge: Callable[..., OwnBridge], gate_redis: redis.Redis
) -> None:
    own = own_bridge()
    bridge = own.bridge
    bridge.simulator.set_faults(down=True)
    alert_ids = new_alert_ids(20)
    send(own.api, alert_ids, "triggered")
    eventually(
        lambda: len(alert_rows(bridge, alert_ids)) == len(alert_ids),
        timeout=15,
        what="every trigger applied",
        diagnose=lambda: describe_alerts(bridge, alert_ids),
    )
    assert bridge.simulator.state()["incidents"] == []

    # FLUSHDB, as far as this bridge is concerned (other sessions share the Redis db).
    deleted = purge_namespace(gate_redis, own.namespace)
    assert f"_kombu.binding.{own.namespace}" in deleted, deleted
    bridge.simulator.clear_faults()

    # The breaker's state went with Redis, so no recovery drains the parked alerts: the
    # sweeper finds them in SQL at their recheck (30 s; up to 60 s for one it had queued as a
    # probe, its message flushed).
    wait_delivered(bridge, alert_ids, "triggered", timeout=70)
    assert_one_incident_each(bridge, own.api, alert_ids, "triggered")


# ---------------------------------------------------------------------------------------------
# 2. Events shuffled across several workers
# ---------------------------------------------------------------------------------------------


def test_shuffled_events_across_workers_end_resolved(bridge: Bridge, api: httpx.Client) -> None:
    alert_ids = new_alert_ids(30)
    before = counts(bridge)
    queue = CeleryEventQueue(
        create_celery(
            Settings(
                redis_url=bridge.env["PAGERBRIDGE_REDIS_URL"],
                namespace=bridge.env["PAGERBRIDGE_NAMESPACE"],
            )
        )
    )
    now = utcnow()
    seed = random.randrange(10**6)
    shuffler = random.Random(seed)
    # Each alert's three events in a random order, published in three rounds (one event of
    # every alert per round, alerts in a random order), a moment apart: the worker takes each
    # round as a batch of its own, so both worker processes handle events of the same alerts
    # at the same time, and PagerDuty answers slowly enough for their calls to overlap.
    rounds: list[list[AlertEventMessage]] = [[], [], []]
    for alert_id in alert_ids:
        cycle = [
            AlertEventMessage(
                event_id=new_event_id(),
                source=SOURCE_COSCALE,
                alert_id=alert_id,
                action=action,
                received_at=now + timedelta(milliseconds=10 * step),  # the true order
                title=f"disk full {alert_id}" if action is AlertStatus.TRIGGERED else None,
                service_id=SERVICE_ID,
            )
            for step, action in enumerate(
                (AlertStatus.TRIGGERED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED)
            )
        ]
        shuffler.shuffle(cycle)
        for round_, event in zip(rounds, cycle, strict=True):
            round_.append(event)
    bridge.simulator.set_faults(latency_ms=100)
    for round_ in rounds:
        shuffler.shuffle(round_)
        for event in round_:
            queue.publish(event)
        time.sleep(0.3)

    # Up to a lease (60 s) longer than the others: a worker that stalls is replaced by the
    # sweeper once its lease expires, and this test must see that recovery, not fail before it.
    wait_delivered(bridge, alert_ids, "resolved", timeout=75)
    incidents = incidents_of(bridge, alert_ids)
    shown = views(api, alert_ids)
    for alert_id, found in incidents.items():
        view = shown[alert_id]
        assert view["delivery_state"] == "delivered" and view["desired_status"] == "resolved"
        assert len(found) <= 1, (seed, alert_id, found)
        if not found:
            # Its resolve was applied before anything was sent: nobody is paged for it.
            assert view["pagerduty_incident_id"] is None, (seed, view)
            continue
        (incident,) = found
        assert view["pagerduty_incident_id"] == incident["id"], (seed, view, incident)
        assert incident["title"] == f"disk full {alert_id}", (seed, incident)  # the trigger's
        assert incident["status"] == "resolved", (seed, incident)
        history = [change["to"] for change in incident["status_history"]]
        assert "acknowledged" not in history[history.index("resolved") :], (seed, history)
        assert history.count("resolved") == 1, (seed, history)
    assert sum(len(found) for found in incidents.values()) > 0, seed
    assert counts(bridge)["reopened"] == before["reopened"], seed


# ---------------------------------------------------------------------------------------------
# 8. A worker killed with SIGKILL during a drain
# ---------------------------------------------------------------------------------------------


def _sigkill_a_worker_mid_drain(own: OwnBridge) -> list[str]:
    """200 triggers queued while no worker runs; a worker started, and killed with SIGKILL (its
    whole process group) once it has created 30 incidents. Returns the alert ids."""
    bridge = own.bridge
    bridge.simulator.set_faults(latency_ms=50)  # calls slow enough to kill a worker mid-batch
    alert_ids = new_alert_ids(200)
    send(own.api, alert_ids, "triggered")  # queued while no worker runs

    worker = own.start_worker("worker")
    eventually(
        lambda: len(bridge.simulator.state()["incidents"]) >= 30,
        timeout=30,
        what="30 incidents created by the first worker",
        diagnose=bridge.logs,
    )
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    return alert_ids


def test_sigkill_of_a_worker_during_a_drain(
    own_bridge: Callable[..., OwnBridge], gate_redis: redis.Redis
) -> None:
    own = own_bridge(
        start_worker=False,
        PAGERBRIDGE_LEASE_SECONDS="5",
        PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE="60000",
    )
    bridge = own.bridge
    alert_ids = _sigkill_a_worker_mid_drain(own)
    killed_with = {
        "incidents": len(bridge.simulator.state()["incidents"]),
        "alerts in SQL": len(alert_rows(bridge, alert_ids)),
        "unacked messages": len(unacked_of(gate_redis, own.namespace)),
    }

    own.start_worker("worker-2")
    # An alert the killed worker was reconciling waits for its lease and the sweeper's grace
    # (30 s); nothing may wait for the broker's visibility timeout.
    eventually(
        lambda: all_delivered(bridge, alert_ids, "triggered"),
        timeout=60,
        what="all 200 alerts delivered after the SIGKILL",
        diagnose=lambda: (
            f"at the kill: {killed_with}\nnow: {describe_alerts(bridge, alert_ids)}\n"
            "unacked messages of this namespace in Redis (invisible until the broker's "
            f"visibility timeout, {VISIBILITY_TIMEOUT} s, restores them): "
            + _summary(unacked_of(gate_redis, own.namespace))
        ),
    )
    assert_one_incident_each(bridge, own.api, alert_ids, "triggered")
    assert len(bridge.simulator.state()["incidents"]) == len(alert_ids)


def test_a_worker_started_after_a_sigkill_takes_back_the_dead_workers_leases(
    own_bridge: Callable[..., OwnBridge],
) -> None:
    # Leases far longer than the test may wait: only taking them back can deliver in time
    own = own_bridge(
        start_worker=False,
        PAGERBRIDGE_LEASE_SECONDS="300",
        PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE="60000",
    )
    bridge = own.bridge
    alert_ids = _sigkill_a_worker_mid_drain(own)
    leased = [row for row in alert_rows(bridge, alert_ids).values() if row.lease_owner is not None]
    assert leased, "the SIGKILL left no alert leased: nothing to take back"

    replacement = own.start_worker("worker-2")
    eventually(
        lambda: all_delivered(bridge, alert_ids, "triggered"),
        timeout=60,
        what="all 200 alerts delivered, long before the killed worker's 300 s leases expire",
        diagnose=lambda: describe_alerts(bridge, alert_ids),
    )
    assert "took back" in replacement.output()
    assert_one_incident_each(bridge, own.api, alert_ids, "triggered")
