"""`pagerbridge demo`: the whole flow on one machine, for a newcomer, in about a minute.

It starts the simulator and the bridge (`pagerbridge run --simulate`, on a throw-away SQLite
file and its own Redis namespace), plays a storyline of CoScale webhooks, and shows alerts and
incidents side by side as they change. Nothing else needs to run: without a Redis at
PAGERBRIDGE_REDIS_URL it starts one for itself (worker/ops/tryout.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from worker.settings import ENV_PREFIX
from worker.simulator.control import SimulatorControl


@dataclass
class Storyline:
    """Who does what, in order: (seconds to wait before, caption, action)."""

    steps: list[tuple[float, str, Callable[[], object]]] = field(default_factory=list)

    def add(self, wait: float, caption: str, action: Callable[[], object]) -> None:
        self.steps.append((wait, caption, action))


class DemoBridge:
    """A bridge started for the demo, driven over HTTP like CoScale drives it."""

    def __init__(self, workdir: Path, redis_url: str, api_port: int, sim_port: int) -> None:
        self.token = secrets.token_urlsafe(32)
        self.api = f"http://127.0.0.1:{api_port}"
        self.simulator = SimulatorControl(f"http://127.0.0.1:{sim_port}")
        self.alert_ids: list[str] = []
        self.redis_url = redis_url
        self.namespace = f"pagerbridge-demo-{secrets.token_hex(3)}"
        env = dict(os.environ)
        env.update(
            {
                f"{ENV_PREFIX}DATABASE_URL": f"sqlite:///{workdir / 'demo.db'}",
                f"{ENV_PREFIX}REDIS_URL": redis_url,
                f"{ENV_PREFIX}NAMESPACE": self.namespace,
                f"{ENV_PREFIX}INGRESS_TOKENS": self.token,
                f"{ENV_PREFIX}BEAT_SCHEDULE_PATH": str(workdir / "beat-schedule"),
                f"{ENV_PREFIX}SWEEP_INTERVAL": "1",
                f"{ENV_PREFIX}RETRY_MIN_BACKOFF": "1",
                f"{ENV_PREFIX}RETRY_MAX_BACKOFF": "3",
                f"{ENV_PREFIX}LOG_LEVEL": "WARNING",
            }
        )
        me = [sys.executable, "-m", "worker.cli"]
        subprocess.run([*me, "migrate"], env=env, check=True, capture_output=True)
        self.log = (workdir / "bridge.log").open("wb")
        self.process = subprocess.Popen(
            [*me, "run", "--simulate", "--port", str(api_port), "--simulator-port", str(sim_port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the bridge stopped during start-up; see bridge.log")
            try:
                self._request("GET", "/readyz")
                self.simulator.state()
                return
            except Exception:  # not up yet
                time.sleep(0.3)
        raise RuntimeError("the bridge did not start in time")

    def webhook(self, alert_id: str, action: str, message: str) -> None:
        if alert_id not in self.alert_ids:
            self.alert_ids.append(alert_id)
        self._request(
            "POST",
            "/webhooks/coscale",
            {
                "alert_id": alert_id,
                "action": action,
                "message": message,
                "metric": "cpu",
                "app": "demo-shop",
                "link": f"https://app.coscale.com/alerts/{alert_id}",
            },
        )

    def settled(self) -> bool:
        """Every alert of the storyline delivered as CoScale left it."""
        return all(
            self.alert(alert_id).get("delivery_state") == "delivered" for alert_id in self.alert_ids
        )

    def alert(self, alert_id: str) -> dict[str, Any]:
        try:
            return self._request("GET", f"/alerts/{alert_id}")
        except urllib.error.HTTPError:
            return {}

    def _request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310  (the demo's own loopback api)
            self.api + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.simulator.close()
        self.log.close()
        forget_namespace(self.redis_url, self.namespace)


def forget_namespace(redis_url: str, namespace: str) -> int:
    """Delete the demo's Redis keys: its gates, its queue and kombu's binding of it
    (``_kombu.binding.<queue>``); a demo leaves nothing behind in a Redis it shares."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [
            *client.scan_iter(match=f"{namespace}*"),
            *client.scan_iter(match=f"_kombu.binding.{namespace}*"),
            *client.scan_iter(match=f"_kombu.binding_permanent.{namespace}*"),
        ]
        return int(client.delete(*keys)) if keys else 0
    except redis.RedisError:
        return 0  # the demo is over either way; a Redis gone has nothing left to clean
    finally:
        client.close()


def _table(bridge: DemoBridge, caption: str) -> Group:
    state = bridge.simulator.state()
    incidents = {str(i["incident_key"]): i for i in state["incidents"]}
    table = Table(title="CoScale alerts ↔ PagerDuty incidents", expand=True)
    for column in ("alert", "wanted", "bridge", "attempts", "incident", "PagerDuty says"):
        table.add_column(column)
    shown = bridge.alert_ids[:12]
    for alert_id in shown:
        view = bridge.alert(alert_id)
        incident = incidents.get(str(view.get("incident_key")), {})
        table.add_row(
            alert_id,
            view.get("desired_status", "queued…"),
            view.get("delivery_state", ""),
            str(view.get("attempts", "")),
            str(incident.get("id", "—")),
            str(incident.get("status", "—")),
        )
    if len(bridge.alert_ids) > len(shown):
        table.add_row(f"… and {len(bridge.alert_ids) - len(shown)} more", "", "", "", "", "")
    faults = state["counts"]["faults"]
    by_status = state["counts"]["incidents_by_status"]
    summary = (
        f"[bold]{caption}[/]\nPagerDuty (simulated): {by_status} · answers refused while down: "
        f"{faults.get('down', 0)} · duplicates refused: "
        f"{state['counts']['duplicate_creates_refused']}"
    )
    return Group(summary, table)


def run_demo(redis_url: str, *, api_port: int = 8180, sim_port: int = 8189) -> int:
    console = Console()
    from worker.errors import BridgeError
    from worker.ops.tryout import notice, tryout_redis

    with ExitStack() as stack:
        try:
            tryout = stack.enter_context(tryout_redis(redis_url))
        except BridgeError as exc:
            console.print(f"[bold red]pagerbridge demo:[/] {escape(str(exc))}", soft_wrap=True)
            return 2
        if tryout is not None:
            console.print(f"[bold yellow]{escape(notice(redis_url, tryout))}[/]", soft_wrap=True)
            redis_url = tryout.url
        _play(console, redis_url, api_port, sim_port)
    return 0


def _play(console: Console, redis_url: str, api_port: int, sim_port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pagerbridge-demo-") as tmp:
        bridge = DemoBridge(Path(tmp), redis_url, api_port, sim_port)
        try:
            with console.status("starting the simulator, api, worker and beat…"):
                bridge.wait_ready()
            story = _storyline(bridge)
            with Live(_table(bridge, "starting"), console=console, refresh_per_second=4) as live:
                for wait, caption, action in story.steps:
                    deadline = time.monotonic() + wait
                    while time.monotonic() < deadline:
                        live.update(_table(bridge, caption))
                        time.sleep(0.5)
                    action()
                    live.update(_table(bridge, caption))
                deadline = time.monotonic() + 60
                while not bridge.settled() and time.monotonic() < deadline:
                    live.update(_table(bridge, "waiting for the last deliveries"))
                    time.sleep(0.5)
                live.update(_table(bridge, "done"))
            console.print(
                "[green]demo done[/]: every alert reached PagerDuty exactly once, "
                "and none was lost while PagerDuty was down."
            )
        except KeyboardInterrupt:
            console.print("stopping…")
        finally:
            bridge.stop()
            console.print(f"removed the demo's keys from Redis (namespace {bridge.namespace})")


def _storyline(bridge: DemoBridge) -> Storyline:
    story = Storyline()

    def trigger(n: int) -> Callable[[], None]:
        return lambda: bridge.webhook(f"cpu-{n}", "triggered", f"CPU high on web-{n}")

    for n in (1, 2, 3):
        story.add(0.7, f"alert {n} triggered", trigger(n))
    story.add(
        3,
        "an on-call engineer acknowledges alert 1",
        lambda: bridge.webhook("cpu-1", "acknowledged", "CPU high on web-1"),
    )
    story.add(
        2,
        "alert 2 resolves by itself",
        lambda: bridge.webhook("cpu-2", "resolved", "CPU high on web-2"),
    )
    story.add(
        3,
        "PagerDuty goes down (every call answers 503)",
        lambda: bridge.simulator.set_faults(down=True),
    )
    for n in (4, 5):
        story.add(1, f"alert {n} triggered during the outage", trigger(n))
    story.add(
        1,
        "alert 3 resolves during the outage",
        lambda: bridge.webhook("cpu-3", "resolved", "CPU high on web-3"),
    )
    story.add(
        8, "PagerDuty is back: parked deliveries drain at once", bridge.simulator.clear_faults
    )

    def storm() -> None:
        for n in range(6, 46):
            bridge.webhook(f"disk-{n}", "triggered", f"disk full on db-{n}")

    def resolve_storm() -> None:
        for n in range(6, 46):
            bridge.webhook(f"disk-{n}", "resolved", f"disk full on db-{n}")

    story.add(6, "an alert storm: 40 alerts at once", storm)
    story.add(6, "the storm resolves: 40 resolves, sent as bulk updates", resolve_storm)
    story.add(3, "the storm is resolved", lambda: None)
    return story
