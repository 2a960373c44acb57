"""Who holds an alert's lease, and taking back the leases of workers that are provably dead.

A reconcile takes a lease on its alerts (``alerts.lease_owner`` and ``lease_expires_at``) and
renews it while it works. A worker killed outright (SIGKILL, the OOM killer, a crashed host)
renews nothing, and its alerts wait until their leases expire. That wait is the price of
safety, since a second worker must never reconcile an alert a live one is still calling
PagerDuty for. But when a worker starts on the same machine as the one that died, it can
*prove* the owner dead, and give the alerts back at once.

The owner names where it runs: the host name, a short id of this kernel's boot and this PID
namespace (two containers on one host share the first, never the second), the process id, and
a random part (the lease of one reconcile). Only an owner with this process's own node id can
be checked: its PID means the same process here. A PID that exists (even one reused by an
unrelated process) counts as alive, so a doubt keeps the lease, and the owner's alerts wait for
the expiry as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert
from models.bulk import is_one_of
from models.namespace import namespace_of
from worker.vocabulary import DeliveryState

log = logging.getLogger(__name__)
# The renewals are a reconcile's, and their lines come under the reconciler's logger.
reconcile_log = logging.getLogger("worker.delivery.reconcile")

# alerts.lease_owner is String(64): host part (at most this long), node id (8), pid, random (8).
HOST_CHARS = 32


@cache
def node_id() -> str | None:
    """This kernel boot and PID namespace, as 8 hex digits; None where Linux's /proc does not
    say (then no lease is ever taken back early)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{namespace}".encode()).hexdigest()[:8]


def lease_owner_id() -> str:
    """A new owner for one reconcile's leases."""
    host = socket.gethostname()[:HOST_CHARS].replace(":", "-") or "host"
    return f"{host}:{node_id() or '-'}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_pid(owner: str, node: str) -> int | None:
    """The PID in ``owner`` if it was made on ``node``; else None (nothing to check here)."""
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or parts[1] != node or not parts[2].isdigit():
        return None
    return int(parts[2])


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a running process. A killed process that nobody has reaped yet (a
    zombie: its parent died with it, and init reaps orphans when it gets to them) has stopped
    running for good, so it does not count; when /proc cannot tell, the process counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Fields after the command name (which may hold spaces and parentheses): state first.
    fields = stat.rpartition(")")[2].split()
    return not fields or fields[0] not in ("Z", "X")


def release_dead_leases(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    node: str | None = None,
    alive: Callable[[int], bool] = process_exists,
) -> list[int]:
    """Give back the alerts leased by processes of this node that no longer exist, due now;
    returns their ids (to queue them at once)."""
    node = node if node is not None else node_id()
    if node is None:
        return []
    with sessions.begin() as session:
        owners = session.scalars(
            select(Alert.lease_owner)
            .where(
                # Only this bridge's unfinished alerts hold its leases (ix_alerts_due's columns).
                Alert.namespace == namespace_of(session),
                Alert.delivery_state.in_([DeliveryState.PENDING, DeliveryState.PARKED]),
                Alert.lease_owner.like(f"%:{node}:%"),
                Alert.lease_expires_at > now,
            )
            .distinct()
        ).all()
        dead = []
        for owner in owners:
            pid = owner_pid(owner, node) if owner else None
            if pid is not None and pid != os.getpid() and not alive(pid):
                dead.append(owner)
        if not dead:
            return []
        released = list(
            session.scalars(
                update(Alert)
                .where(Alert.namespace == namespace_of(session), Alert.lease_owner.in_(dead))
                .values(lease_owner=None, lease_expires_at=None, next_attempt_at=now)
                .returning(Alert.id)
                .execution_options(synchronize_session=False)
            )
        )
    log.warning(
        "took back %d alert(s) leased by %d process(es) of this machine that no longer exist",
        len(released),
        len(dead),
    )
    return sorted(released)


class LeaseKeeper:
    """Renews the leases of the reconciles running in this process, every third of their life.

    So a lease can be short (a worker killed with SIGKILL frees its alerts within
    ``lease_seconds``) and still never expire under a live worker whose PagerDuty call is slow:
    an expired lease would let a second worker plan the same alert, and its resolve could race
    our acknowledge.

    One thread for all of them, started when a reconcile begins and none is running, ending at a
    renewal that finds no reconcile left: a thread started and joined per reconcile would cost
    every batch, for a renewal that a batch of an alert storm, done in milliseconds, almost never
    needs.
    """

    def __init__(
        self, sessions: sessionmaker[Session], lease_seconds: float, clock: Callable[[], datetime]
    ) -> None:
        self._sessions = sessions
        self._lease = timedelta(seconds=lease_seconds)
        self._clock = clock
        self._owners: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def keeping(self, owner: str) -> Iterator[None]:
        """Renew ``owner``'s leases while the block runs."""
        with self._lock:
            self._owners.add(owner)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._owners.discard(owner)

    def _run(self) -> None:
        while True:
            time.sleep(self._lease.total_seconds() / 3)
            with self._lock:
                owners = sorted(self._owners)
                if not owners:
                    self._thread = None  # under the lock: the next keeping() starts another
                    return
            try:
                self._renew(owners)
            except Exception as exc:  # the next renewal, or the lease's expiry, takes over
                reconcile_log.warning("could not renew leases of %s: %s", ", ".join(owners), exc)

    def _renew(self, owners: list[str]) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(Alert)
                .where(is_one_of(Alert.lease_owner, owners, session))
                .values(lease_expires_at=self._clock() + self._lease)
                .execution_options(synchronize_session=False)
            )
