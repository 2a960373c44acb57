"""What every bench script shares: the bridge's processes, a fresh database, the machine.

`bench/run.py` (throughput and cost) and `bench/reliability.py` (delivery under faults) both start
pagerbridge's own processes (simulator, api, beat, workers) on free loopback ports against a
fresh PostgreSQL database, stop them whatever happens, and describe the machine they ran on.
Those pieces live here; each script keeps its own phases and figures.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy

REPO = Path(__file__).resolve().parent.parent

DEFAULT_POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
INGRESS_TOKEN = "bench-ingress-token-0123456789abcdef"
PAGERDUTY_TOKEN = "bench-pagerduty-token"
SERVICE_ID = "PBENCH1"
# The bridge's own PagerDuty rate limit (PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE, 900/min by
# default, below PagerDuty's 960) caps delivery at 15 calls/s. The simulator has no limit, so
# by default the bench lifts it and measures what the bridge itself can do; run.py's
# --rate-per-minute 900 measures the bridge as deployed.
LIFTED_RATE_PER_MINUTE = 1_000_000.0
PRODUCTION_RATE_PER_MINUTE = 900.0
SERVICE_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Two runs at once would flush each other's Redis db and share the CPUs: one at a time.
LOCK_PATH = Path(tempfile.gettempdir()) / "pagerbridge-bench.lock"


class BenchError(Exception):
    """The run cannot go on; the message says why."""


# --------------------------------------------------------------------------------------------
# /proc: CPU time and peak RSS without a psutil dependency
# --------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on; None if the process is gone.

    The command name (field 2) may contain spaces and parentheses, so split after the last ')'.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Celery's prefork pool children)."""
    tree, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        tree.append(current)
        frontier.extend(children_of(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, plus that of its children it has already reaped.

    Summed over a live process tree this counts every process once: live ones by their own
    utime/stime, exited-and-reaped ones through their parent's cutime/cstime.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[11..14] are stat fields 14..17: utime, stime, cutime, cstime (clock ticks).
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


@dataclass(frozen=True)
class Switches:
    """Context switches: the process gave up the CPU to wait (voluntary: a read, a lock, a
    sleep), or was taken off it for another (involuntary: preempted)."""

    voluntary: int = 0
    involuntary: int = 0

    def __add__(self, other: Switches) -> Switches:
        return Switches(self.voluntary + other.voluntary, self.involuntary + other.involuntary)

    def __sub__(self, other: Switches) -> Switches:
        return Switches(self.voluntary - other.voluntary, self.involuntary - other.involuntary)


def switches_in_status(status: str) -> Switches:
    """The counts in one /proc/<pid>/task/<tid>/status text (zeros where a line is missing)."""
    counts = {
        name: int(value)
        for name, value in re.findall(r"^(\w+)_ctxt_switches:\s+(\d+)$", status, re.MULTILINE)
    }
    return Switches(counts.get("voluntary", 0), counts.get("nonvoluntary", 0))


def context_switches(pid: int) -> Switches:
    """Context switches of every live thread of ``pid`` (its /proc/<pid>/status counts only its
    main thread: the api's writer thread would be missed); zeros if it is gone. Threads that
    have exited are not counted."""
    total = Switches()
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for thread in threads:
        with suppress(OSError):
            total += switches_in_status(Path(f"/proc/{pid}/task/{thread}/status").read_text())
    return total


def machine_context_switches() -> int:
    """Context switches on all CPUs since boot (/proc/stat's ``ctxt``)."""
    match = re.search(r"^ctxt (\d+)$", Path("/proc/stat").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (the process's peak resident set) in MiB; None if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def pss_mib(pid: int) -> float | None:
    """The process's proportional set size now, in MiB: its private pages plus its share of
    the pages it shares (a prefork pool's children share most of theirs with the parent, which
    a sum of their RSS counts once per child). None if the process is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat: all but idle and iowait)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# --------------------------------------------------------------------------------------------
# The processes under test
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A pagerbridge process started with ``python -m worker.cli``; output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started_at: float

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}:\n{self.tail()}")

    def stop(self) -> None:
        pid = self.process.pid
        descendants = process_tree(pid)[1:]  # Celery's pool children
        if self.process.poll() is None:
            # SIGTERM is a warm shutdown for Celery: the pool children finish and exit.
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                # Started in its own session, so the group is exactly this service's
                # processes (and, its leader still alive, the group id is still ours).
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        # A pool child may outlive a parent that crashed: end those still in our group.
        for child in descendants:
            fields = _stat_fields(child)
            if fields is not None and int(fields[2]) == pid:  # stat field 5: process group
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


class Services:
    """Starts the bridge's processes, and stops all of them (in reverse order) on exit."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.running: dict[str, Service] = {}

    def start(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Service:
        """A ``pagerbridge`` command (``env`` adds to the run's environment)."""
        return self.start_program(name, [sys.executable, "-m", "worker.cli", *args], env)

    def start_program(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> Service:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                argv,
                env={**self.env, **(env or {})},
                # Not the repository: a developer's .env there must not change the settings.
                cwd=self.workdir,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, process, log, time.monotonic())
        self.running[name] = service
        return service

    def stop(self, name: str) -> None:
        """Stop one service, if it was started, and forget it."""
        service = self.running.pop(name, None)
        if service is not None:
            service.stop()

    def stop_all(self) -> None:
        for service in reversed(list(self.running.values())):
            service.stop()

    def __getitem__(self, name: str) -> Service:
        return self.running[name]


def wait_until(
    service: Service, ready: Callable[[], bool], timeout: float = SERVICE_START_TIMEOUT_S
) -> float:
    """Poll ``ready`` until true; seconds since the service started. Fails if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.check_alive()
        with suppress(httpx.HTTPError, OSError):  # not listening yet
            if ready():
                return time.monotonic() - service.started_at
        time.sleep(0.05)
    raise BenchError(f"{service.name} not ready after {timeout:.0f}s:\n{service.tail()}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def migrate(env: Mapping[str, str], workdir: Path) -> None:
    """``pagerbridge migrate`` against the run's database (``env``), as a user would run it."""
    migrated = subprocess.run(
        [sys.executable, "-m", "worker.cli", "migrate"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if migrated.returncode != 0:
        raise BenchError(f"migrate failed:\n{migrated.stdout}\n{migrated.stderr}")


def bridge_env(
    *,
    database_url: str,
    redis_url: str,
    simulator_url: str,
    workdir: Path,
    rate_per_minute: float,
    log_level: str = "WARNING",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every bridge process: this one's, minus any ``PAGERBRIDGE_*`` of the
    caller's, plus the run's settings (``extra`` last, so it may override any of them)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PAGERBRIDGE_")}
    env.update(
        {
            "PAGERBRIDGE_DATABASE_URL": database_url,
            "PAGERBRIDGE_REDIS_URL": redis_url,
            "PAGERBRIDGE_PAGERDUTY_URL": simulator_url,
            "PAGERBRIDGE_PAGERDUTY_TOKEN": PAGERDUTY_TOKEN,
            "PAGERBRIDGE_PAGERDUTY_FROM": "bench@example.com",
            "PAGERBRIDGE_PAGERDUTY_SERVICE_ID": SERVICE_ID,
            "PAGERBRIDGE_INGRESS_TOKENS": INGRESS_TOKEN,
            "PAGERBRIDGE_LOG_LEVEL": log_level,
            "PAGERBRIDGE_PAGERDUTY_RATE_PER_MINUTE": f"{rate_per_minute:g}",
            # Resolves go at once: the phases time them (the flap window holds each resolve of
            # an incident for its length, by design).
            "PAGERBRIDGE_FLAP_WINDOW": "0",
            # Per run, so two runs (or a developer's beat) never share a schedule file.
            "PAGERBRIDGE_BEAT_SCHEDULE_PATH": str(workdir / "beat-schedule"),
            # Metrics on, as in production, on a port no other run (or bridge) holds.
            "PAGERBRIDGE_WORKER_METRICS_PORT": str(free_port()),
            **(extra or {}),
        }
    )
    return env


# --------------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------------


@dataclass
class Database:
    kind: str
    url: str
    admin: psycopg.Connection[Any] | None = None
    name: str | None = None
    server_version: str = ""

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving the bench database (their CPU is the database's)."""
        if self.admin is None:
            return []
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchall()
        return [int(row[0]) for row in rows]

    def discard_inbox(self) -> int:
        """Delete the api's inbox rows (events it stored for the sweeper to apply if the queue
        loses them): a phase that discards the queue's events must discard these too, or the
        sweeper delivers them during the next phase."""
        engine = sqlalchemy.create_engine(
            self.url.replace("postgresql://", "postgresql+psycopg://", 1)
        )
        try:
            with engine.begin() as connection:
                return connection.execute(sqlalchemy.text("DELETE FROM inbox_events")).rowcount
        finally:
            engine.dispose()

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of one read-only query on the bench database (the bridge's own tables)."""
        engine = sqlalchemy.create_engine(
            self.url.replace("postgresql://", "postgresql+psycopg://", 1)
        )
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sqlalchemy.text(sql), params)]
        finally:
            engine.dispose()

    def commits(self) -> int | None:
        """Transactions committed in the bench database so far (PostgreSQL's statistics,
        which backends report at the end of a transaction or within a second after)."""
        if self.admin is None:
            return None
        row = self.admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.name,)
        ).fetchone()
        return int(row[0]) if row else None


@contextmanager
def fresh_database(kind: str, postgres_admin_url: str, workdir: Path) -> Iterator[Database]:
    """A new, empty database for this run (``kind``: ``postgres`` or ``sqlite``, a file in
    ``workdir``); a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield Database("sqlite", f"sqlite:///{workdir / 'bench.db'}", server_version="sqlite")
        return
    try:
        admin = psycopg.connect(postgres_admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL at {postgres_admin_url}: {exc}") from exc
    name = f"pagerbridge_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        version = admin.execute("SHOW server_version").fetchone()
        url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
        yield Database("postgres", url, admin, name, f"PostgreSQL {version[0] if version else '?'}")
    finally:
        # FORCE: a worker killed mid-transaction may leave a backend behind for a moment.
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --------------------------------------------------------------------------------------------
# The machine, the run
# --------------------------------------------------------------------------------------------


def git_revision() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' (uncommitted changes)' if dirty else ''}"


def busy_percent(seconds: float) -> float:
    """How busy all CPUs together are, sampled over ``seconds`` (100 = every CPU busy)."""
    before, started = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return (machine_busy_seconds() - before) / (elapsed * (os.cpu_count() or 1)) * 100


def python_build() -> dict[str, Any]:
    """Which interpreter runs every Python process of the bench (this one, ``sys.executable``),
    and how it was built (profile-guided and link-time optimization, a shared ``libpython``):
    the same code runs measurably faster on an optimized build, so a figure means little
    without it."""
    config_args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    maps = ""
    with suppress(OSError):
        maps = Path("/proc/self/maps").read_text()
    return {
        "executable": sys.executable,
        "implementation": f"{platform.python_implementation()} {platform.python_version()}",
        "configured_pgo": "--enable-optimizations" in config_args,
        "configured_lto": "--with-lto" in config_args,
        "libpython_shared": "libpython" in maps,
    }


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with suppress(OSError):
        match = re.search(
            r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE
        )
        cpu_model = match.group(1) if match else ""
    memory_kib = 0
    with suppress(OSError):
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        memory_kib = int(match.group(1)) if match else 0
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "python_build": python_build(),
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        # Another job on a 2-CPU machine changes every figure: record how busy it was.
        "cpu_busy_before_start_percent": round(busy_percent(1.0), 1),
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _interrupted(signum: int, _frame: object) -> None:
    # Once: a second signal must not cut the clean-up short (it has its own timeouts).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")


def clean_up_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so the caller's clean-up runs.

    Explicit handlers: a run started in the background inherits an ignored SIGINT, and the
    default SIGTERM would skip the clean-up (processes, database) entirely.
    """
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)


@contextmanager
def single_run() -> Iterator[None]:
    with LOCK_PATH.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another bench run holds {LOCK_PATH}; wait for it") from None
        yield
