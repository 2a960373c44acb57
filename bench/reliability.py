#!/usr/bin/env python3
"""Delivery that survives PagerDuty: a scenario runner that prints figures.

    .venv/bin/python bench/reliability.py [--alerts N] [--json PATH]

Reproduces on demand, against a fresh PostgreSQL database, a Redis namespace of its own, and its
own simulator, api, beat and worker (``--concurrency 2``), with the bridge's default settings but
for the sweep interval (1 s) and the rate limit (lifted: the simulator has none here):

1. outage     PagerDuty goes down; N CoScale triggers arrive through the webhook; it stays down
              for 20 s. Measured: PagerDuty calls per second while down.
2. recovery   PagerDuty comes back, but 30% of its successful answers are lost (502, seeded).
3. SIGKILL    when about a third of the N incidents exist, the worker's whole process group is
              killed and a new worker started. Measured: seconds from recovery to all N
              incidents created.
4. updates    half the alerts are acknowledged and all resolved; a fifth of the acknowledges go
              AFTER their resolve (CoScale late). Answers are still being lost.
5. quiet      faults cleared once everything was sent; wait until every alert is delivered
              (GET /alerts/{id}) and PagerDuty hears nothing more, or a timeout.

Then it counts alerts lost, duplicate incidents, incidents reopened, incidents not resolved, and
prints them beside the issue's targets. Everything it started is stopped, the database dropped
and the namespace's Redis keys deleted at the end, whatever happens. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from stack import (
    DEFAULT_POSTGRES_ADMIN_URL,
    DEFAULT_REDIS_URL,
    INGRESS_TOKEN,
    LIFTED_RATE_PER_MINUTE,
    PAGERDUTY_TOKEN,
    REPO,
    BenchError,
    Database,
    Service,
    Services,
    bridge_env,
    clean_up_on_signals,
    free_port,
    fresh_database,
    git_revision,
    http_ok,
    machine_info,
    migrate,
    single_run,
    wait_until,
    write_json,
)

from worker.settings import Settings
from worker.simulator.control import SimulatorControl, SimulatorControlError

DEFAULT_JSON = REPO / "bench" / "results" / "reliability.json"

# The scenario (bench/README.md, "Reliability report").
DOWN_S = 20.0  # PagerDuty answers 503 for this long, counted from the moment it goes down
LOST_FRACTION = 0.3  # of the calls PagerDuty carries out, answered 502 after recovery
FAULT_SEED = 3  # the simulator's random choices of which answers are lost
KILL_AT_SHARE = 1 / 3  # of the N incidents created when the worker is killed
ACK_SHARE = 0.5  # of the alerts acknowledged
LATE_ACK_SHARE = 0.2  # of the acknowledged ones, sent after their resolve
ORDER_SEED = 7  # which alerts are acknowledged, and the order the updates are sent in
# Between the acknowledges and the resolves: CoScale's operators acknowledge, and resolve later.
ACK_TO_RESOLVE_S = 2.0
# Between the resolves and the late acknowledges.
RESOLVE_TO_LATE_ACK_S = 1.0
WORKER_CONCURRENCY = 2
SWEEP_INTERVAL_S = 1

# Polling. The simulator's state lists every incident (about 0.7 kB each): for a few hundred a
# poll takes milliseconds. The drain runs at a few hundred incidents a second, so until the kill
# the state is polled every 20 ms (the kill lands within a few incidents of a third), then every
# 100 ms (the drain is timed to a tenth of a second).
DRAIN_POLL_BEFORE_KILL_S = 0.02
DRAIN_POLL_S = 0.1
QUIET_POLL_S = 2.0
DRAIN_TIMEOUT_S = 180.0  # recovery → all N incidents; past it, the updates are sent anyway
QUIET_TIMEOUT_S = 240.0  # faults cleared → everything delivered

NAMESPACE_PREFIX = "pagerbridge-rel-"
# The gate's error line when the breaker opens (worker/delivery/gate.py).
BREAKER_OPENED_LOG = "breaker open after"
# How long a worker's claim on an alert lasts: what a killed worker's alerts wait for.
LEASE_SECONDS = Settings.model_fields["lease_seconds"].default
# worker.pipeline.message.SOURCE_COSCALE: the incident_key is pagerbridge/coscale/<id>/<n>
SOURCE = "coscale"


@dataclass(frozen=True)
class Target:
    figure: str
    limit: float
    unit: str = ""

    def met(self, value: float | None) -> bool:
        return value is not None and value <= self.limit

    def describe(self) -> str:
        return f"≤ {self.limit:g}{self.unit}" if self.limit else "0"


# The targets, for N=300 (bench/README.md, "Reliability report").
TARGETS: dict[str, Target] = {
    "alerts_lost": Target("Alerts lost", 0),
    "duplicate_incidents": Target("Duplicate incidents", 0),
    "incidents_reopened": Target("Incidents reopened", 0),
    "incidents_not_final": Target("Incidents not in their final state (resolved)", 0),
    "down_calls_per_s": Target("PagerDuty calls/s while down (calls in the window / 20 s)", 1),
    "down_calls_max_in_a_second": Target("PagerDuty calls while down, most in any second", 1),
    "recovery_to_drained_s": Target("Seconds from recovery to backlog drained", 10, " s"),
}


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    alerts: int
    json_path: Path
    postgres_admin_url: str
    redis_url: str
    workers: int = WORKER_CONCURRENCY


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Reliability report: outage, lost answers, SIGKILL, late acknowledges."
    )
    parser.add_argument("--alerts", type=int, default=300, help="alerts N (default 300)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, dest="json_path", help="where to write JSON"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKER_CONCURRENCY,
        help=f"processes of each worker (default {WORKER_CONCURRENCY}, as in every report so "
        "far; the bridge's default is 4)",
    )
    parser.add_argument("--postgres-admin-url", default=DEFAULT_POSTGRES_ADMIN_URL)
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="the run uses a namespace of its own there and deletes its keys at the end",
    )
    args = parser.parse_args(argv)
    if args.alerts < 3:
        parser.error("--alerts must be at least 3")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return Options(
        args.alerts, args.json_path, args.postgres_admin_url, args.redis_url, args.workers
    )


# --------------------------------------------------------------------------------------------
# The bridge under test
# --------------------------------------------------------------------------------------------


class Timeline:
    """What happened when, in seconds since the run started; echoed on stderr as it goes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.entries: list[dict[str, Any]] = []

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def note(self, what: str, **details: Any) -> None:
        entry = {"t": self.now(), "what": what, **details}
        self.entries.append(entry)
        extra = ", ".join(f"{key}={value}" for key, value in details.items())
        print(
            f"[reliability] t={entry['t']:7.2f}s {what}{f' ({extra})' if extra else ''}",
            file=sys.stderr,
            flush=True,
        )


def log_contains(service: Service, text: str) -> bool:
    try:
        return text in service.log.read_text(errors="replace")
    except OSError:
        return False


@dataclass
class Bridge:
    """The running bridge and what the harness reads it with."""

    services: Services
    simulator: SimulatorControl
    api: httpx.Client
    database: psycopg.Connection[Any]
    redis_client: redis.Redis
    namespace: str
    concurrency: int = WORKER_CONCURRENCY
    workers: list[Service] = field(default_factory=list)
    killed: list[Service] = field(default_factory=list)

    @property
    def worker(self) -> Service:
        return self.workers[-1]

    def start_worker(self) -> Service:
        name = "worker" if not self.workers else f"worker-{len(self.workers) + 1}"
        worker = self.services.start(name, ["worker", "--concurrency", str(self.concurrency)])
        self.workers.append(worker)
        return worker

    def delivery_states(self) -> dict[str, int]:
        """Alert rows (every cycle) by delivery state, plus how many hold a lease and how many
        are a second (or later) cycle of their alert."""
        rows = self.database.execute(
            "SELECT delivery_state::text, count(*) FROM alerts GROUP BY 1 ORDER BY 1"
        ).fetchall()
        states = {str(state): int(count) for state, count in rows}
        extra = self.database.execute(
            "SELECT count(*) FILTER (WHERE lease_owner IS NOT NULL), "
            "count(*) FILTER (WHERE cycle > 1) FROM alerts"
        ).fetchone()
        if extra is not None:
            states["leased"], states["cycle > 1"] = int(extra[0]), int(extra[1])
        return states

    def check_alive(self) -> None:
        """Every process still running, but the workers the scenario killed."""
        for service in self.services.running.values():
            if service not in self.killed:
                service.check_alive()

    def gate(self) -> dict[str, str]:
        """The shared delivery gate's Redis hash (breaker, failures, probe slot)."""
        for key in self.redis_client.scan_iter(match=f"{self.namespace}:gate:*"):
            raw: dict[bytes, bytes] = self.redis_client.hgetall(key)  # type: ignore[assignment]
            return {k.decode(): v.decode() for k, v in raw.items()}
        return {}


def purge_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete this run's Redis keys (queue, gate, kombu bindings) and its unacknowledged
    messages, leaving whatever else shares the Redis db alone. Returns the keys deleted."""
    keys: list[bytes | str] = list(client.scan_iter(match=f"{namespace}*"))
    keys += [
        name
        for name in (f"_kombu.binding.{namespace}", f"_kombu.binding_permanent.{namespace}")
        if client.exists(name)
    ]
    if keys:
        client.delete(*keys)
    for tag, raw in client.hscan_iter("unacked"):
        _message, exchange, routing_key = json.loads(raw)
        if namespace in (exchange, routing_key):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    return len(keys)


def start_bridge(options: Options, workdir: Path, cleanup: ExitStack) -> Bridge:
    redis_client = redis.Redis.from_url(options.redis_url, socket_connect_timeout=3)
    try:
        redis_client.ping()
    except (redis.RedisError, OSError) as exc:
        raise BenchError(f"Redis at {options.redis_url}: {exc}") from exc
    cleanup.callback(redis_client.close)
    namespace = f"{NAMESPACE_PREFIX}{uuid.uuid4().hex[:8]}"
    cleanup.callback(purge_namespace, redis_client, namespace)
    database: Database = cleanup.enter_context(
        fresh_database("postgres", options.postgres_admin_url, workdir)
    )
    sim_port, api_port = free_port(), free_port()
    simulator_url = f"http://127.0.0.1:{sim_port}"
    env = bridge_env(
        database_url=database.url,
        redis_url=options.redis_url,
        simulator_url=simulator_url,
        workdir=workdir,
        rate_per_minute=LIFTED_RATE_PER_MINUTE,
        log_level="INFO",  # the bridge's default; the logs are the timeline of a diagnosis
        extra={
            "PAGERBRIDGE_NAMESPACE": namespace,
            "PAGERBRIDGE_SWEEP_INTERVAL": str(SWEEP_INTERVAL_S),
        },
    )
    migrate(env, workdir)
    connection = psycopg.connect(database.url, autocommit=True, connect_timeout=3)
    cleanup.callback(connection.close)

    services = Services(env, workdir)
    cleanup.callback(services.stop_all)
    simulator = SimulatorControl(simulator_url)
    cleanup.callback(simulator.close)
    sim = services.start(
        "simulator", ["simulate", f"--port={sim_port}", f"--token={PAGERDUTY_TOKEN}"]
    )
    wait_until(sim, lambda: http_ok(f"{simulator_url}/_simulator/health"))
    beat = services.start("beat", ["beat"])
    api_url = f"http://127.0.0.1:{api_port}"
    api_service = services.start("api", ["api", "--port", str(api_port)])
    wait_until(api_service, lambda: http_ok(f"{api_url}/healthz"))
    wait_until(beat, lambda: log_contains(beat, "beat: Starting"))
    api = httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {INGRESS_TOKEN}"}, timeout=10.0
    )
    cleanup.callback(api.close)
    bridge = Bridge(services, simulator, api, connection, redis_client, namespace, options.workers)
    worker = bridge.start_worker()
    wait_until(worker, lambda: log_contains(worker, " ready."))
    return bridge


# --------------------------------------------------------------------------------------------
# CoScale's side
# --------------------------------------------------------------------------------------------


def webhook(alert_id: str, action: str) -> dict[str, str]:
    """What CoScale's Webhook contact sends; one Format serves every action (docs/coscale.md)."""
    return {
        "alert_id": alert_id,
        "action": action,
        "message": f"disk full {alert_id}",
        "metric": "disk/used",
        "subject": "server reliability",
        "app": "reliability",
    }


def send(bridge: Bridge, alert_ids: list[str], action: str) -> dict[str, int]:
    """POST ``action`` for each alert, one after another; the answer's status per alert (0: no
    answer)."""
    answers: dict[str, int] = {}
    for alert_id in alert_ids:
        try:
            answers[alert_id] = bridge.api.post(
                "/webhooks/coscale", json=webhook(alert_id, action)
            ).status_code
        except httpx.HTTPError:
            answers[alert_id] = 0
    return answers


# A bridge in a namespace of its own keys its incidents pagerbridge@<namespace>/...
# (worker/pagerduty/events.py dedup_key); read them as the default namespace spells them.
_NAMESPACE_ROOT = re.compile(r"^pagerbridge@[^/]+/")


def default_key(key: str) -> str:
    return _NAMESPACE_ROOT.sub("pagerbridge/", key)


def key_prefix(alert_id: str) -> str:
    return f"pagerbridge/{SOURCE}/{alert_id}/"


# --------------------------------------------------------------------------------------------
# The simulator's side
# --------------------------------------------------------------------------------------------


def total_calls(state: dict[str, Any]) -> int:
    return sum(int(call["count"]) for call in state["counts"]["calls"])


def incidents_by_alert(
    state: dict[str, Any], alert_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """The simulator's incidents of each alert, by the alert's incident_key prefix."""
    found: dict[str, list[dict[str, Any]]] = {alert_id: [] for alert_id in alert_ids}
    for incident in state["incidents"]:
        key = default_key(str(incident.get("incident_key") or ""))
        alert_id = key.removeprefix(f"pagerbridge/{SOURCE}/").rsplit("/", 1)[0]
        if alert_id in found and key.startswith(key_prefix(alert_id)):
            found[alert_id].append(incident)
    return found


def alerts_with_incident(state: dict[str, Any], alert_ids: list[str]) -> int:
    return sum(1 for found in incidents_by_alert(state, alert_ids).values() if found)


def calls_by_route(state: dict[str, Any]) -> dict[str, int]:
    return {
        f"{call['method']} {call['route']} → {call['status']}": int(call["count"])
        for call in state["counts"]["calls"]
    }


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    options: Options
    bridge: Bridge
    timeline: Timeline
    results: dict[str, Any]
    notes: list[str]
    alert_ids: list[str] = field(default_factory=list)
    accepted: dict[str, dict[str, int]] = field(default_factory=dict)  # action → status → n
    triggered: list[str] = field(default_factory=list)  # alerts whose trigger got a 202

    def record_answers(self, action: str, answers: dict[str, int]) -> None:
        tally = self.accepted.setdefault(action, {})
        for status in answers.values():
            tally[str(status)] = tally.get(str(status), 0) + 1
        refused = {alert_id: code for alert_id, code in answers.items() if code != 202}
        if refused:
            self.notes.append(
                f"{len(refused)} {action} webhook(s) not answered 202: "
                f"{dict(list(refused.items())[:5])}"
            )


def phase_outage(run: Scenario) -> None:
    """PagerDuty down for DOWN_S seconds; the N triggers arrive meanwhile."""
    bridge, timeline = run.bridge, run.timeline
    before = bridge.simulator.state()
    down_at = time.time()
    started = time.monotonic()
    bridge.simulator.set_faults(down=True)
    timeline.note("PagerDuty down (503)")
    answers = send(bridge, run.alert_ids, "triggered")
    run.record_answers("triggered", answers)
    run.triggered = [alert_id for alert_id, code in answers.items() if code == 202]
    timeline.note("triggers sent", accepted=len(run.triggered), of=len(run.alert_ids))
    sample_at = started + DOWN_S / 2
    time.sleep(max(0.0, sample_at - time.monotonic()))
    midway = bridge.delivery_states()
    timeline.note("midway through the outage", alert_rows=midway, gate=bridge.gate())
    time.sleep(max(0.0, started + DOWN_S - 0.3 - time.monotonic()))
    # The last look while down: every call counted so far was made to a PagerDuty that was down.
    state = bridge.simulator.state()
    down_s = time.monotonic() - started
    gate = bridge.gate()
    states = bridge.delivery_states()
    calls = total_calls(state) - total_calls(before)
    per_second = [
        (int(entry["second"]), int(entry["count"]))
        for entry in state["counts"]["calls_per_second"]
        if int(entry["second"]) >= int(down_at)
    ]
    opened_at = float(gate["opened_at"]) / 1000 if "opened_at" in gate else None
    after_open = [(s, n) for s, n in per_second if opened_at is not None and s > opened_at]
    after_open_s = (down_at + down_s - math.ceil(opened_at)) if opened_at is not None else None
    time.sleep(max(0.0, started + DOWN_S - time.monotonic()))
    run.results["outage"] = {
        "down_s": round(time.monotonic() - started, 2),
        "measured_over_s": round(down_s, 2),
        "pagerduty_calls": calls,
        "calls_per_s": round(calls / DOWN_S, 2),
        "max_calls_in_a_second": max((n for _, n in per_second), default=0),
        "calls_per_second": [{"t": round(s - down_at, 0), "calls": n} for s, n in per_second],
        "breaker_opened_after_s": round(opened_at - down_at, 2) if opened_at else None,
        "calls_after_breaker_opened": sum(n for _, n in after_open),
        "calls_per_s_after_breaker_opened": round(sum(n for _, n in after_open) / after_open_s, 2)
        if after_open_s
        else None,
        "max_calls_in_a_second_after_breaker_opened": max((n for _, n in after_open), default=0),
        "calls_by_route_status": calls_by_route(state),
        "alert_rows_at_end": states,
        "gate_at_end": gate,
    }
    timeline.note(
        "end of the outage",
        calls=calls,
        per_second=[n for _, n in per_second],
        alert_rows=states,
    )


def phase_recovery(run: Scenario) -> None:
    """PagerDuty back with lost answers; SIGKILL of the worker a third of the way through the
    drain; time until every alert has its incident."""
    bridge, timeline, wanted = run.bridge, run.timeline, len(run.triggered)
    bridge.simulator.set_faults(down=False, lost=LOST_FRACTION, seed=FAULT_SEED)
    recovered = time.monotonic()
    timeline.note("PagerDuty back, answers lost", lost=LOST_FRACTION, seed=FAULT_SEED)
    kill_at = math.ceil(wanted * KILL_AT_SHARE)
    progress: list[tuple[float, int]] = []
    killed: dict[str, Any] | None = None
    new_worker: Service | None = None
    new_worker_ready = False
    drained_s: float | None = None
    first_incident_s: float | None = None
    while True:
        sent = time.monotonic()
        state = bridge.simulator.state()
        seen = (sent + time.monotonic()) / 2 - recovered
        created = alerts_with_incident(state, run.triggered)
        if not progress or created != progress[-1][1]:
            progress.append((round(seen, 2), created))
        if first_incident_s is None and created:
            first_incident_s = round(seen, 2)
            timeline.note("first incident after recovery", after_s=first_incident_s)
        if killed is None and created >= kill_at:
            killed = kill_worker(run, created, seen)
            new_worker = bridge.start_worker()
        if killed is not None and new_worker is not None and not new_worker_ready:
            new_worker_ready = log_contains(new_worker, " ready.")
            if new_worker_ready:
                killed["new_worker_ready_after_kill_s"] = round(time.monotonic() - killed["_at"], 2)
                timeline.note("new worker ready")
        bridge.check_alive()
        if created >= wanted:
            drained_s = round(seen, 2)
            timeline.note("backlog drained: every alert has its incident", after_s=drained_s)
            break
        if time.monotonic() - recovered > DRAIN_TIMEOUT_S:
            timeline.note("drain timed out", created=created, of=wanted)
            run.notes.append(
                f"the backlog was not drained {DRAIN_TIMEOUT_S:.0f} s after recovery "
                f"({created} of {wanted} alerts had an incident); the updates were sent anyway"
            )
            break
        time.sleep(DRAIN_POLL_S if killed is not None else DRAIN_POLL_BEFORE_KILL_S)
    if killed is None:
        run.notes.append("the backlog drained before a third of it could be seen: no SIGKILL")
    if new_worker is not None:
        wait_until(new_worker, lambda: log_contains(new_worker, " ready."))
    state = bridge.simulator.state()
    run.results["recovery"] = {
        "first_incident_after_s": first_incident_s,
        "recovery_to_drained_s": drained_s,
        "kill_to_drained_s": round(drained_s - killed["after_recovery_s"], 2)
        if drained_s is not None and killed is not None
        else None,
        "alerts_with_incident": alerts_with_incident(state, run.triggered),
        "alerts": wanted,
        "progress": progress,  # (seconds since recovery, alerts with an incident)
        "sigkill": {k: v for k, v in (killed or {}).items() if not k.startswith("_")},
        "alert_rows_after_drain": bridge.delivery_states(),
        "not_drained": [] if drained_s is not None else undrained(run, state),
    }


def kill_worker(run: Scenario, created: int, seen: float) -> dict[str, Any]:
    """SIGKILL the worker's whole process group (its main process and its pool)."""
    worker = run.bridge.worker
    os.killpg(worker.process.pid, signal.SIGKILL)
    at = time.monotonic()
    worker.process.wait(timeout=10)
    run.bridge.killed.append(worker)
    states = run.bridge.delivery_states()
    run.timeline.note(
        "worker killed (SIGKILL, process group)", alerts_with_incident=created, alert_rows=states
    )
    return {
        "_at": at,
        "after_recovery_s": round(seen, 2),
        "alerts_with_incident_at_kill": created,
        "alert_rows_at_kill": states,
    }


def undrained(run: Scenario, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerts still without an incident, as SQL shows them (the first 20)."""
    missing = [a for a, found in incidents_by_alert(state, run.triggered).items() if not found]
    rows = run.bridge.database.execute(
        "SELECT source_alert_id, cycle, delivery_state::text, attempts, next_attempt_at, "
        "lease_owner, lease_expires_at, create_sent_at, last_error FROM alerts "
        "WHERE source_alert_id = ANY(%s) ORDER BY next_attempt_at LIMIT 20",
        (missing,),
    ).fetchall()
    names = (
        "alert",
        "cycle",
        "state",
        "attempts",
        "next_attempt_at",
        "lease_owner",
        "lease_expires_at",
        "create_sent_at",
        "last_error",
    )
    return [
        dict(zip(names, (str(v) if v is not None else None for v in row), strict=True))
        for row in rows
    ]


def phase_updates(run: Scenario) -> None:
    """Half acknowledged, all resolved; a fifth of the acknowledges after their resolve."""
    bridge, timeline = run.bridge, run.timeline
    order = list(run.triggered)
    random.Random(ORDER_SEED).shuffle(order)
    acked = order[: round(len(order) * ACK_SHARE)]
    late = acked[: round(len(acked) * LATE_ACK_SHARE)]
    on_time = acked[len(late) :]
    run.results["updates"] = {
        "acknowledged": len(acked),
        "acknowledged_after_resolve": len(late),
        "resolved": len(order),
        "late_acknowledged_alerts": late,
    }
    answers = send(bridge, on_time, "acknowledged")
    run.record_answers("acknowledged", answers)
    timeline.note("acknowledges sent", count=len(on_time))
    time.sleep(ACK_TO_RESOLVE_S)
    resolve_order = list(order)
    random.Random(ORDER_SEED + 1).shuffle(resolve_order)
    run.record_answers("resolved", send(bridge, resolve_order, "resolved"))
    timeline.note("resolves sent", count=len(resolve_order))
    time.sleep(RESOLVE_TO_LATE_ACK_S)
    run.record_answers("acknowledged (late)", send(bridge, late, "acknowledged"))
    timeline.note("late acknowledges sent (after their resolve)", count=len(late))
    bridge.simulator.clear_faults()
    run.results["updates"]["faults_cleared_at_s"] = timeline.now()
    timeline.note("faults cleared")


def phase_quiet(run: Scenario) -> None:
    """Wait until every alert is delivered (GET /alerts/{id}), no alert row in SQL is still
    pending, and PagerDuty heard nothing for a poll interval; or the timeout."""
    bridge, timeline = run.bridge, run.timeline
    started = time.monotonic()
    last_calls = -1
    while True:
        views = alert_views(bridge, run.triggered)
        states = bridge.delivery_states()
        calls = total_calls(bridge.simulator.state())
        delivered = sum(1 for view in views.values() if view.get("delivery_state") == "delivered")
        quiet = (
            delivered == len(run.triggered)
            and set(states) <= {"delivered", "leased", "cycle > 1"}
            and states.get("leased", 0) == 0
            and calls == last_calls
        )
        if quiet:
            timeline.note("quiet: everything delivered", alert_rows=states)
            break
        if time.monotonic() - started > QUIET_TIMEOUT_S:
            timeline.note("not quiet before the timeout", delivered=delivered, alert_rows=states)
            run.notes.append(
                f"not quiet {QUIET_TIMEOUT_S:.0f} s after the faults were cleared: "
                f"{delivered} of {len(run.triggered)} alerts delivered per GET /alerts/{{id}}, "
                f"alert rows {states}"
            )
            break
        last_calls = calls
        bridge.check_alive()
        time.sleep(QUIET_POLL_S)
    run.results["quiet_after_faults_cleared_s"] = round(time.monotonic() - started, 2)


def alert_views(bridge: Bridge, alert_ids: list[str]) -> dict[str, dict[str, Any]]:
    """GET /alerts/{id} of each alert (its newest cycle); ``{}`` when it did not answer 200."""
    views: dict[str, dict[str, Any]] = {}
    for alert_id in alert_ids:
        answer = bridge.api.get(f"/alerts/{alert_id}")
        views[alert_id] = answer.json() if answer.status_code == 200 else {}
    return views


# --------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------


def judge(run: Scenario) -> None:
    """Count what went wrong, alert by alert, from PagerDuty's side and from the bridge's."""
    bridge, results = run.bridge, run.results
    state = bridge.simulator.state()
    views = alert_views(bridge, run.triggered)
    incidents = incidents_by_alert(state, run.triggered)
    late = set(results.get("updates", {}).get("late_acknowledged_alerts", []))
    lost: dict[str, str] = {}
    duplicates: dict[str, list[str]] = {}
    for alert_id in run.triggered:
        found, view = incidents[alert_id], views[alert_id]
        if len(found) > 1:
            duplicates[alert_id] = [f"{i['incident_key']}={i['status']}" for i in found]
        in_pagerduty = bool(found) and all(i["status"] == "resolved" for i in found)
        in_bridge = (
            view.get("delivery_state") == "delivered"
            and view.get("desired_status") == "resolved"
            and view.get("pagerduty_incident_id") in {i["id"] for i in found}
        )
        if not (in_pagerduty and in_bridge):
            lost[alert_id] = (
                f"PagerDuty: {[i['status'] for i in found] or 'no incident'}; GET /alerts: "
                f"cycle {view.get('cycle')} {view.get('desired_status')}/"
                f"{view.get('delivery_state')} incident {view.get('pagerduty_incident_id')}"
            )
    ours = [incident for found in incidents.values() for incident in found]
    not_final = [i for i in ours if i["status"] != "resolved"]
    keys = Counter(str(i["incident_key"]) for i in ours)
    counts = state["counts"]
    results["figures"] = {
        "alerts_lost": len(lost),
        "duplicate_incidents": len(duplicates),
        "incidents_reopened": int(counts["reopened"]),
        "incidents_not_final": len(not_final),
        "down_calls_per_s": results.get("outage", {}).get("calls_per_s"),
        "down_calls_max_in_a_second": results.get("outage", {}).get("max_calls_in_a_second"),
        "recovery_to_drained_s": results.get("recovery", {}).get("recovery_to_drained_s"),
    }
    results["details"] = {
        "incidents": len(ours),
        "incidents_by_status": dict(Counter(str(i["status"]) for i in ours)),
        "same_incident_key_twice": sum(1 for n in keys.values() if n > 1),
        "alerts_with_a_second_cycle": sum(1 for v in views.values() if v.get("cycles", 1) > 1),
        "late_acknowledged_among_lost": len(late & set(lost)),
        "late_acknowledged_among_duplicates": len(late & set(duplicates)),
        "lost": dict(list(lost.items())[:20]),
        "duplicates": dict(list(duplicates.items())[:20]),
        "not_final": [
            {
                "incident_key": i["incident_key"],
                "status": i["status"],
                "history": [c["to"] for c in i["status_history"]],
            }
            for i in not_final[:20]
        ],
        "acknowledged_in_pagerduty": sum(
            1 for i in ours if any(c["to"] == "acknowledged" for c in i["status_history"])
        ),
        "delivery_states_get_alerts": dict(
            Counter(str(v.get("delivery_state")) for v in views.values())
        ),
        "attempts_max": max((int(v.get("attempts", 0)) for v in views.values()), default=0),
        # Each opening logs one error line: the outage's, then any that lost answers caused.
        "breaker_openings_in_worker_logs": sum(
            worker.log.read_text(errors="replace").count(BREAKER_OPENED_LOG)
            for worker in bridge.workers
        ),
        "duplicate_creates_refused": int(counts["duplicate_creates_refused"]),
        "lost_answers_injected": int(counts["faults"]["lost"]),
        "down_answers_injected": int(counts["faults"]["down"]),
        "listings_without_incident_key": int(counts["listings_without_incident_key"]),
        "pagerduty_calls_total": total_calls(state),
        "pagerduty_calls_by_route_status": calls_by_route(state),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    figures = results.get("figures", {})
    alerts = report["settings"]["alerts"]
    lines = [
        f"Reliability report, N={alerts} (targets are issue 3's, for N=300)",
        "",
        "| figure | value | target | result |",
        "|---|---|---|---|",
    ]
    for name, target in TARGETS.items():
        value = figures.get(name)
        verdict = "n/a" if value is None else ("pass" if target.met(value) else "**FAIL**")
        lines.append(f"| {target.figure} | {_fmt(value)} | {target.describe()} | {verdict} |")
    lines += ["", "| context | value |", "|---|---|"]
    outage = results.get("outage", {})
    recovery = results.get("recovery", {})
    details = results.get("details", {})
    sigkill = recovery.get("sigkill", {})
    context: list[tuple[str, Any]] = [
        ("Webhooks answered, by action → status", report.get("webhooks")),
        ("Outage: PagerDuty calls in the window", outage.get("pagerduty_calls")),
        (
            "Outage: calls per second, second by second",
            [c["calls"] for c in outage.get("calls_per_second", [])],
        ),
        ("Outage: breaker opened after", _seconds(outage.get("breaker_opened_after_s"))),
        (
            "Outage: calls/s once the breaker was open (most in a second)",
            f"{_fmt(outage.get('calls_per_s_after_breaker_opened'))} "
            f"({_fmt(outage.get('max_calls_in_a_second_after_breaker_opened'))})",
        ),
        ("Recovery: first incident after", _seconds(recovery.get("first_incident_after_s"))),
        (
            "SIGKILL: after recovery, alerts with an incident then",
            f"{_seconds(sigkill.get('after_recovery_s'))}, "
            f"{_fmt(sigkill.get('alerts_with_incident_at_kill'))}",
        ),
        ("SIGKILL: alert rows at the kill", sigkill.get("alert_rows_at_kill")),
        ("SIGKILL: new worker ready after", _seconds(sigkill.get("new_worker_ready_after_kill_s"))),
        (
            f"Drain: from the SIGKILL to the last incident (bridge lease: {LEASE_SECONDS:g} s)",
            _seconds(recovery.get("kill_to_drained_s")),
        ),
        (
            "Drain: alerts with an incident over time (s since recovery, alerts)",
            _progress_summary(recovery.get("progress", [])),
        ),
        ("Quiet: after faults cleared", _seconds(results.get("quiet_after_faults_cleared_s"))),
        ("Most delivery attempts of one alert (GET /alerts)", details.get("attempts_max")),
        (
            "Breaker openings (worker logs; the outage's, then on lost answers)",
            details.get("breaker_openings_in_worker_logs"),
        ),
        ("Incidents by status", details.get("incidents_by_status")),
        (
            "Alerts with a second cycle (GET /alerts `cycles` > 1)",
            details.get("alerts_with_a_second_cycle"),
        ),
        (
            "Late-acknowledged alerts among lost / duplicated",
            f"{_fmt(details.get('late_acknowledged_among_lost'))} / "
            f"{_fmt(details.get('late_acknowledged_among_duplicates'))} of "
            f"{_fmt(results.get('updates', {}).get('acknowledged_after_resolve'))}",
        ),
        ("Same incident_key created twice", details.get("same_incident_key_twice")),
        (
            "Duplicate creates refused by PagerDuty (then adopted)",
            details.get("duplicate_creates_refused"),
        ),
        (
            "Answers lost (502 after success) / down (503)",
            f"{_fmt(details.get('lost_answers_injected'))} / "
            f"{_fmt(details.get('down_answers_injected'))}",
        ),
        ("PagerDuty calls, total", details.get("pagerduty_calls_total")),
        ("PagerDuty calls by route → status", details.get("pagerduty_calls_by_route_status")),
        ("Wall time", _seconds(report.get("wall_s"))),
    ]
    for name, value in context:
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value) or "none"
        lines.append(f"| {name} | {_fmt(value)} |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _progress_summary(progress: list[list[float] | tuple[float, int]]) -> str:
    """A few points of the drain: at each tenth of the way, and the last one."""
    if not progress:
        return "n/a"
    total = progress[-1][1]
    points, step = [], max(1, int(total) // 5)
    next_mark = step
    for seconds, created in progress:
        if created >= next_mark or (seconds, created) == tuple(progress[-1]):
            points.append(f"{seconds:.1f}:{int(created)}")
            while next_mark <= created:
                next_mark += step
    return ", ".join(points)


def verdict(report: dict[str, Any]) -> list[str]:
    figures = report["results"].get("figures", {})
    return [name for name, target in TARGETS.items() if not target.met(figures.get(name))]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run_scenario(options: Options, workdir: Path, report: dict[str, Any]) -> None:
    timeline = Timeline()
    report["timeline"] = timeline.entries
    with ExitStack() as cleanup:
        bridge = start_bridge(options, workdir, cleanup)
        report["settings"]["namespace"] = bridge.namespace
        timeline.note("bridge up")
        run_id = uuid.uuid4().hex[:8]
        run = Scenario(
            options=options,
            bridge=bridge,
            timeline=timeline,
            results=report["results"],
            notes=report["notes"],
            alert_ids=[f"rel-{run_id}-{n}" for n in range(options.alerts)],
        )
        report["webhooks"] = run.accepted
        phases: list[Callable[[Scenario], None]] = [
            phase_outage,
            phase_recovery,
            phase_updates,
            phase_quiet,
            judge,
        ]
        for phase in phases:
            phase(run)
        timeline.note("stopping the bridge")
    timeline.note("stopped; database dropped, Redis keys deleted")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    try:
        with single_run():
            return run_and_report(options)
    except BenchError as exc:
        print(f"reliability: {exc}", file=sys.stderr)
        return 2


def run_and_report(options: Options) -> int:
    clean_up_on_signals()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "machine": machine_info(),
        "settings": {
            "alerts": options.alerts,
            "down_s": DOWN_S,
            "lost_fraction": LOST_FRACTION,
            "fault_seed": FAULT_SEED,
            "kill_at_share": round(KILL_AT_SHARE, 3),
            "ack_share": ACK_SHARE,
            "late_ack_share": LATE_ACK_SHARE,
            "order_seed": ORDER_SEED,
            "worker_concurrency": options.workers,
            "bridge_env": {
                "PAGERBRIDGE_SWEEP_INTERVAL": SWEEP_INTERVAL_S,
                "PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE": LIFTED_RATE_PER_MINUTE,
                "PAGERBRIDGE_LOG_LEVEL": "INFO",
            },
            "database": "postgres",
            "redis_url": options.redis_url,
        },
        "targets": {name: target.limit for name, target in TARGETS.items()},
        "results": {},
        "notes": [],
    }
    workdir = Path(tempfile.mkdtemp(prefix="pagerbridge-reliability-"))
    started = time.monotonic()
    failed: str | None = None
    try:
        run_scenario(options, workdir, report)
    except (BenchError, KeyboardInterrupt, SimulatorControlError) as exc:
        failed = str(exc) or type(exc).__name__
    except Exception:  # a bug or an unexpected answer: still report what was measured
        failed = traceback.format_exc()
    report["wall_s"] = round(time.monotonic() - started, 1)
    missed = verdict(report)
    report["targets_missed"] = missed
    if failed is not None:
        report["error"] = failed
    write_json(options.json_path, report)
    print(markdown(report))
    for note in report["notes"]:
        print(f"\nNote: {note}")
    print(f"\nJSON: {options.json_path} (run took {report['wall_s']} s)")
    if failed is not None or missed:
        # The services' logs are the evidence for a diagnosis: keep them.
        why = f"FAILED: {failed}" if failed is not None else f"targets missed: {', '.join(missed)}"
        print(f"\nreliability {why}\nlogs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
