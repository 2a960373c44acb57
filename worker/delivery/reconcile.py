"""Reconcile alerts: bring their PagerDuty incidents to the alerts' desired status.

Only one worker reconciles an alert at a time: it takes a *lease* (an owner and an expiry in
the alert's row, set by one conditional UPDATE, so it works alike on PostgreSQL and SQLite) and
holds no database transaction while PagerDuty answers. Every read-decide-write step is a short
transaction that locks the rows (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
so an event applied meanwhile is seen by the next step, never overwritten. A worker killed
mid-call leaves a lease that expires; the sweeper then queues the alert again, and the
deterministic incident key makes the repeated create harmless.

Alerts are reconciled in batches: one transaction plans every alert of the batch, pending
acknowledges and resolves go out as bulk ``PUT /incidents`` calls of up to 250, and one
transaction records every answer. Every call first passes the shared :class:`DeliveryGate`
(outage breaker, credentials, rate limit).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertLike, AlertRecord, utcnow
from models.alert import ALERTS_TABLE, write_back
from models.bulk import built_once, insert_rows, is_one_of, param_one_of
from models.event import ALERT_EVENTS_TABLE
from models.namespace import namespace_of
from worker import metrics
from worker.delivery.gate import Admission, Decision, DeliveryGate
from worker.delivery.leases import lease_owner_id
from worker.delivery.pacing import RateLimitReading, deferral_waits
from worker.delivery.policy import (
    EVENT_ACTIONS,
    WAIT_FOR_TRIGGER,
    Create,
    Done,
    FindByKey,
    HoldResolve,
    Inspect,
    Misconfigured,
    SendEvent,
    Step,
    Update,
    WaitForTrigger,
    calls_in_flight_after,
    choose_incident,
    drain_rank,
    plan_delivery,
    schedule_after_failure,
    share_fairly,
)
from worker.pagerduty import (
    CredentialsError,
    DuplicateIncidentKeyError,
    Incident,
    NewIncident,
    PagerDutyClient,
    PagerDutyError,
    PermanentError,
    RetryableError,
)
from worker.pagerduty.events import EventsClient
from worker.pipeline.message import DEFAULT_ROUTE
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

log = logging.getLogger(__name__)

MAX_STEPS = 6  # create, then ack, then resolve is three; the rest is room for events arriving
BULK_LIMIT = 250  # PagerDuty's most incidents per bulk update (more → 413)
MAX_RATE_LIMIT_SLEEP = 1.0  # seconds a worker waits in place for a rate-limit token
# Seconds one task paces its calls in place, all waits together. Past it, the calls not made
# yet go back to the database, each due when the budget will allow it (pacing.deferral_waits):
# a worker busy pacing a storm's creates would otherwise hold its pool process for minutes,
# while the resolves that arrived meanwhile wait behind it in the queue. Due again, the
# sweeper hands them out in drain order, what stops a page first.
MAX_PACING_IN_PLACE = 2.0
# Calls one route makes before the next route of the same batch takes its turn: a gate
# admission's worth (MAX_ADMIT), so a turn costs no extra call to Redis.
FAIR_SHARE_TURN = 10


@dataclass
class WaitedInPlace:
    """Seconds a task has waited in place for rate-limit tokens, all its calls together."""

    seconds: float = 0.0


# A parked alert is looked at again after this; a recovery drains the parked ones at once.
PARK_RECHECK = timedelta(seconds=30)


class ReconcileResult(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PARKED = "parked"
    FAILED = "failed"
    WAITING = "waiting"  # for the trigger's text, or for a rate-limit token
    BUSY = "busy"  # another worker holds the lease; it will see our change
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class Parked:
    """Not sent: the gate is closed for this token (outage, refused credentials)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not sent: the rate limit asks to wait ``seconds``; no attempt is spent."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class EventSent:
    """The Events API took the event (202)."""

    action: AlertStatus


@dataclass(frozen=True, slots=True)
class Backend:
    """Where one route's alerts go: the client of its backend, and the gate of its
    credential (each API token and each integration key has its own breaker and budget)."""

    rest: PagerDutyClient | None = None
    events: EventsClient | None = None
    gate: DeliveryGate | None = None
    # The services an incident the bridge did not create must be on to be updated.
    services: frozenset[str] = frozenset()
    # Read an incident's status before acknowledging it (a REST route without webhooks).
    reads_before_acknowledge: bool = False


Answer = Incident | None | EventSent | PagerDutyError | Parked | Deferred
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Together:
    """Calls of a batch that may be in flight at once: those of ``pks``, up to ``size`` at a
    time, made by ``send`` (each call's answer, or its error, in order)."""

    pks: frozenset[int]
    size: int
    send: Callable[[list[int]], list[Any]]


@built_once
def _locked_statement(postgres: bool) -> Select[Any]:
    return (
        select(*ALERTS_TABLE.columns)
        .where(
            # An id from another bridge's queue (a misrouted message) is not this bridge's to
            # deliver: it is never locked here.
            ALERTS_TABLE.c.namespace == bindparam("namespace"),
            param_one_of(ALERTS_TABLE.c.id, "alert_pks", postgres),
        )
        .order_by(ALERTS_TABLE.c.id)
        .with_for_update()
    )


class LeaseKeeper:
    """Renews the leases of the reconciles running in this process, every third of their life.

    So a lease can be short (a worker killed with SIGKILL frees its alerts within
    ``lease_seconds``) and still never expire under a live worker whose PagerDuty call is slow:
    an expired lease would let a second worker plan the same alert, and its resolve could race
    our acknowledge.

    One thread for all of them, started when a reconcile begins and none is running, ending at a
    renewal that finds no reconcile left: a thread started and joined per reconcile was about
    0.27 ms of CPU per batch (a tenth of a small batch's cost), for a renewal that a batch of
    an alert storm, done in milliseconds, almost never needs.
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
                log.warning("could not renew leases of %s: %s", ", ".join(owners), exc)

    def _renew(self, owners: list[str]) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(Alert)
                .where(is_one_of(Alert.lease_owner, owners, session))
                .values(lease_expires_at=self._clock() + self._lease)
                .execution_options(synchronize_session=False)
            )


@dataclass
class BatchClaim:
    """A reconcile's first step taken inside the transaction that applies the batch's events
    (:class:`worker.pipeline.intake.Claim`).

    For each alert that now needs a PagerDuty call and that no live worker holds, it plans the
    call, takes the lease and sets the create mark on the alert's record before the intake
    stores it: a new cycle is inserted leased, a stored one written back leased, in the
    statements that store the events. Otherwise a batch's reconcile began with a transaction
    of its own, a locking read and an UPDATE of every alert of the batch, which is one more
    version of every row and of its index entries per alert in a storm.

    The alerts it leaves (a live lease elsewhere, nothing to call, past ``limit``, or a batch
    applied again one event at a time after a conflict, when ``kept`` never comes) are planned
    by ``reconcile_many`` as before.
    """

    reconciler: Reconciler
    limit: int
    owner: str = field(default_factory=lease_owner_id)
    _taken: list[tuple[AlertRecord, Step]] = field(default_factory=list, init=False)
    _kept: bool = field(default=False, init=False)

    def take(self, alerts: list[AlertRecord]) -> None:
        now = self.reconciler.clock()
        until = self.reconciler._lease_until()
        self._taken.clear()
        for alert in alerts:
            if len(self._taken) >= self.limit:
                break
            expired = alert.lease_expires_at is None or alert.lease_expires_at < now
            if alert.lease_owner is not None and not expired:
                continue  # its worker will see this change when it records its call
            step = self.reconciler.plan(alert)
            if isinstance(step, Done | WaitForTrigger | HoldResolve | Misconfigured):
                continue  # finished without a call, by reconcile_many (logged once stored)
            alert.lease_owner, alert.lease_expires_at = self.owner, until
            self.reconciler._mark_create(alert, step)
            self._taken.append((alert, step))

    def kept(self) -> None:
        self._kept = True

    def first_calls(self) -> dict[int, tuple[Step, str]]:
        """Alert id -> (its first call, its route), once the claim is stored; else nothing."""
        if not self._kept:
            return {}
        return {alert.id: (step, alert.route) for alert, step in self._taken}


@dataclass
class Reconciler:
    sessions: sessionmaker[Session]
    client: PagerDutyClient | None
    settings: Settings
    gate: DeliveryGate | None = None
    clock: Callable[[], datetime] = utcnow
    # Hands alert ids back to the queue (the Celery layer provides it): used to drain parked
    # alerts the moment PagerDuty is back.
    requeue: Callable[[list[int]], None] | None = None
    sleep: Callable[[float], None] = time.sleep
    # The backend of a named route; None for one the routes file no longer has. Without it,
    # every alert goes to ``client`` through ``gate`` (the default route).
    backends: Callable[[str], Backend | None] | None = None
    _recovered: bool = field(default=False, init=False)
    _keeper: LeaseKeeper = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keeper = LeaseKeeper(self.sessions, self.settings.lease_seconds, self.clock)

    def plan(self, alert: AlertLike) -> Step:
        """The alert's next call (:func:`plan_delivery`), with its route's settings and the
        flap window."""
        return plan_delivery(
            alert,
            self.clock(),
            timedelta(seconds=self.settings.flap_window),
            read_before_acknowledge=self._reads_first(alert.route),
        )

    def _reads_first(self, route: str) -> bool:
        if not self.settings.read_before_acknowledge:
            return False
        if route == DEFAULT_ROUTE or self.backends is None:
            return not self.settings.pagerduty_webhook_secrets
        backend = self.backends(route)
        return backend is not None and backend.reads_before_acknowledge

    def _backend(self, route: str) -> Backend | None:
        if route == DEFAULT_ROUTE or self.backends is None:
            # None when only routes are configured and an alert still names the default.
            if self.client is None:
                return None
            return Backend(
                rest=self.client, gate=self.gate, services=default_services(self.settings)
            )
        return self.backends(route)

    def reconcile(self, alert_pk: int) -> ReconcileResult:
        return self.reconcile_many([alert_pk])[alert_pk]

    def reconcile_many(
        self, alert_pks: Iterable[int], *, claim: BatchClaim | None = None
    ) -> dict[int, ReconcileResult]:
        """Reconcile a batch, and the alerts ``claim`` took when it was applied; every id gets
        a result (``BUSY`` if another worker has it)."""
        claimed = claim.first_calls() if claim is not None else {}
        wanted = list(dict.fromkeys([*claimed, *alert_pks]))
        owner = claim.owner if claim is not None else lease_owner_id()
        active = wanted
        results: dict[int, ReconcileResult] = {}
        # alert -> its route, as the plans find them
        routes: dict[int, str] = {pk: route for pk, (_, route) in claimed.items()}
        with self._keeper.keeping(owner):
            try:
                for step in range(MAX_STEPS):
                    if not active:
                        break
                    if step == 0:
                        # The first plan takes the leases, in the same transaction; a claim took
                        # them (and planned) already where the batch was applied.
                        calls = {pk: first for pk, (first, _) in claimed.items()}
                        unclaimed = [pk for pk in active if pk not in calls]
                        if unclaimed:
                            calls.update(self._plan(unclaimed, owner, results, routes, claim=True))
                    else:
                        calls = self._plan(active, owner, results, routes)
                    answers = self._deliver(calls, routes)
                    active = self._record(calls, answers, owner, results)
                if active:
                    # Events kept arriving: let the sweeper carry on soon, not hog the worker.
                    self._release(active, owner, retry_in=timedelta(seconds=1))
                    results.update(dict.fromkeys(active, ReconcileResult.RETRY))
            except BaseException:
                self._release(active, owner, retry_in=timedelta(seconds=0))
                raise
        if self._recovered:
            self._recovered = False
            self._drain_parked()
        metrics.count_deliveries(results.values())
        return results

    # -- the lease -------------------------------------------------------------------------

    def _lease_until(self) -> datetime:
        return self.clock() + timedelta(seconds=self.settings.lease_seconds)

    def _release(self, alert_pks: list[int], owner: str, *, retry_in: timedelta) -> None:
        if not alert_pks:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(Alert)
                .where(is_one_of(Alert.id, alert_pks, session), Alert.lease_owner == owner)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    next_attempt_at=self.clock() + retry_in,
                )
                .execution_options(synchronize_session=False)
            )

    def _locked(
        self,
        session: Session,
        alert_pks: Sequence[int],
        owner: str,
        results: dict[int, ReconcileResult] | None = None,
    ) -> list[AlertRecord]:
        """The batch's rows, locked, that this worker leases (lease extended).

        With ``results`` it first takes the lease of every row no live worker holds (a lease
        nobody renewed has expired: its worker died), and marks the others BUSY there.
        """
        # Plain records, not ORM instances: the caller writes what it decided back in one
        # statement (write_back). The unit of work's flush of the same changes was a sixth
        # of the worker's CPU in an alert storm, and loading instances for it most of the rest.
        alerts = [
            AlertRecord.of_row(row)
            for row in session.execute(
                _locked_statement(session),
                {"namespace": namespace_of(session), "alert_pks": list(alert_pks)},
            ).mappings()
        ]
        until = self._lease_until()
        mine = []
        for alert in alerts:
            if results is not None and alert.lease_owner != owner:
                expired = alert.lease_expires_at is None or alert.lease_expires_at < self.clock()
                if alert.lease_owner is not None and not expired:
                    results[alert.id] = ReconcileResult.BUSY
                    continue
                alert.lease_owner = owner
            if alert.lease_owner == owner:
                alert.lease_expires_at = until
                mine.append(alert)
        return mine

    # -- plan --------------------------------------------------------------------------------

    def _plan(
        self,
        alert_pks: list[int],
        owner: str,
        results: dict[int, ReconcileResult],
        routes: dict[int, str],
        *,
        claim: bool = False,
    ) -> dict[int, Step]:
        """Decide each alert's next call; finish those that need none. With ``claim``, take
        the alerts' leases first."""
        calls: dict[int, Step] = {}
        with self.sessions.begin() as session:
            alerts = self._locked(session, alert_pks, owner, results if claim else None)
            for missing in set(alert_pks) - {alert.id for alert in alerts} - set(results):
                results[missing] = ReconcileResult.MISSING  # deleted, or our lease expired
            for alert in alerts:
                step = self.plan(alert)
                finished = self._finish_without_call(alert, step)
                if finished is not None:
                    results[alert.id] = finished
                    continue
                calls[alert.id] = step
                routes[alert.id] = alert.route
                self._mark_create(alert, step)
            now = self.clock()
            # An alert about to be called changed only its lease and its create mark: the
            # statement that stores them carries 3 columns, not 12 (most of a storm's batch).
            write_back(session, [a for a in alerts if a.id not in calls], _RECONCILED, now)
            write_back(session, [a for a in alerts if a.id in calls], _LEASED, now)
        return calls

    def _mark_create(self, alert: AlertLike, step: Step) -> None:
        sends_trigger = isinstance(step, SendEvent) and step.action is AlertStatus.TRIGGERED
        if (isinstance(step, Create) or sends_trigger) and alert.create_sent_at is None:
            # Committed before the call: from now on "no incident id" means "maybe created,
            # answer lost" (even if the worker dies mid-call), and a resolve looks the incident
            # up by key instead of assuming there is none. If the gate then parks the call, the
            # cost is one look-up, never an open incident.
            alert.create_sent_at = self.clock()

    def claim(self, limit: int) -> BatchClaim:
        """A claim on up to ``limit`` alerts of a batch about to be applied (``apply_events``):
        their first plan is made, and their leases taken, in the applying transaction."""
        return BatchClaim(self, limit)

    def _finish_without_call(self, alert: AlertLike, step: Step) -> ReconcileResult | None:
        now = self.clock()
        if isinstance(step, Done):
            alert.delivery_state = DeliveryState.DELIVERED
            alert.next_attempt_at = None
            alert.pending_since = None
            alert.last_error = None
            result = ReconcileResult.DELIVERED
            _log_delivery(
                logging.INFO,
                "delivered",
                alert,
                f"status={alert.desired_status.value} ({step.reason})",
            )
        elif isinstance(step, WaitForTrigger):
            alert.next_attempt_at = now + WAIT_FOR_TRIGGER
            result = ReconcileResult.WAITING
        elif isinstance(step, HoldResolve):
            # Due when the flap window ends; a re-fire before then drops the resolve.
            alert.next_attempt_at = step.until
            result = ReconcileResult.WAITING
            _log_delivery(logging.DEBUG, "holding resolve", alert, f"until {step.until}")
        elif isinstance(step, Misconfigured):
            alert.delivery_state = DeliveryState.FAILED
            alert.next_attempt_at = None
            alert.last_error = step.reason
            result = ReconcileResult.FAILED
            _log_delivery(logging.ERROR, "failed", alert, step.reason)
        else:
            return None
        alert.lease_owner = None
        alert.lease_expires_at = None
        return result

    # -- deliver -----------------------------------------------------------------------------

    def _deliver(self, calls: dict[int, Step], routes: dict[int, str]) -> dict[int, Answer]:
        """Make the calls: bulk updates first (a resolve burst is the common backlog), then the
        rest one by one. Every call passes its route's gate."""
        answers: dict[int, Answer] = {}
        backends = {route: self._backend(route) for route in set(routes.values())}
        for pk in calls:
            if backends[routes[pk]] is None:
                answers[pk] = Parked(
                    f"route {routes[pk]!r} is not in the routes file; restore it and restart "
                    "the workers"
                )
        updates: dict[tuple[str, AlertStatus], list[tuple[int, Update]]] = {}
        for pk, step in calls.items():
            if isinstance(step, Update) and pk not in answers:
                updates.setdefault((routes[pk], step.status), []).append((pk, step))
        for (route, _), group in updates.items():
            backend = backends[route]
            if len(group) < 2 or backend is None or backend.rest is None:
                continue
            for start in range(0, len(group), BULK_LIMIT):
                answers.update(self._bulk_update(group[start : start + BULK_LIMIT], backend))
        singles: dict[str, list[int]] = {}
        for pk in sorted(calls, key=lambda pk: drain_rank(calls[pk])):
            if pk not in answers and backends[routes[pk]] is not None:
                singles.setdefault(routes[pk], []).append(pk)
        # Routes take turns (routes sharing a token share its budget), and the task's waits
        # for the budget count together against MAX_PACING_IN_PLACE.
        waited = WaitedInPlace()
        for route, pks in share_fairly(list(singles.items()), FAIR_SHARE_TURN):
            backend = backends[route]
            assert backend is not None
            answers.update(
                self._calls_through_gate(
                    [(pk, functools.partial(self._call, calls[pk], backend)) for pk in pks],
                    backend.gate,
                    together=self._together(calls, pks, backend),
                    readings=_readings(backend),
                    waited=waited,
                )
            )
        return answers

    def _together(
        self, calls: dict[int, Step], pks: list[int], backend: Backend
    ) -> Together | None:
        """The calls among ``pks`` that may go out together, if the settings allow more than
        one in flight: creates on a REST route, events on an Events API route. An alert storm
        is mostly those, and neither depends on another alert's call."""
        size = self.settings.pagerduty_calls_in_flight
        if size < 2:
            return None
        if backend.rest is not None:
            return _grouped(calls, pks, size, Create, functools.partial(_create_all, backend.rest))
        if backend.events is not None:
            return _grouped(
                calls, pks, size, SendEvent, functools.partial(_send_all, backend.events)
            )
        return None

    def _bulk_update(self, chunk: list[tuple[int, Update]], backend: Backend) -> dict[int, Answer]:
        pairs = [(step.incident_id, step.status.value) for _, step in chunk]
        client = backend.rest
        assert client is not None
        answer = self._through_gate(
            lambda: client.update_incidents(pairs), backend.gate, _readings(backend)
        )
        if isinstance(answer, PermanentError):
            # A bulk update is all or nothing: one unknown or already-resolved incident refuses
            # the whole request. Send those one by one, and learn which one it was.
            return {}
        if isinstance(answer, list):
            by_id = {incident.id: incident for incident in answer}
            return {
                pk: by_id.get(step.incident_id, Incident(step.incident_id, step.status.value))
                for pk, step in chunk
            }
        return {pk: answer for pk, _ in chunk}  # the same failure, parking or wait for all

    def _through_gate(
        self,
        call: Callable[[], T],
        gate: DeliveryGate | None,
        readings: Callable[[], RateLimitReading | None] | None = None,
    ) -> T | PagerDutyError | Parked | Deferred:
        """One PagerDuty call, if the gate admits it; its failures are returned, not raised."""
        return self._calls_through_gate([(0, call)], gate, readings=readings)[0]

    def _calls_through_gate(
        self,
        calls: list[tuple[int, Callable[[], T]]],
        gate: DeliveryGate | None,
        *,
        together: Together | None = None,
        readings: Callable[[], RateLimitReading | None] | None = None,
        waited: WaitedInPlace | None = None,
    ) -> dict[int, T | PagerDutyError | Parked | Deferred]:
        """Calls one after the other (PagerDuty asks for serial requests per credential), or
        those ``together`` allows a few at once once PagerDuty answered the batch's first
        (:func:`calls_in_flight_after`), each only once the gate admitted it; failures are
        returned, not raised.

        The gate admits several calls per round trip to Redis, and hears of the successes once
        per admission. A failure other than a refusal of that one call hands the calls not made
        yet back to the gate: a PagerDuty that starts failing opens the breaker and parks them,
        instead of being called again. Calls already in flight beside the failed one were made,
        and their answers count. ``readings`` gives the ``ratelimit-*`` headers of the latest
        answers, which set every worker's pace (:mod:`worker.delivery.pacing`) after each group.
        """
        answers: dict[int, T | PagerDutyError | Parked | Deferred] = {}
        pending = list(calls)
        together_pks = together.pks if together is not None else frozenset()
        together_size = together.size if together is not None else 1
        width = 1  # calls in flight in the next group of those ``together`` allows
        waited = waited if waited is not None else WaitedInPlace()
        while pending:
            granted = len(pending)
            while gate is not None:
                decision = gate.admit(len(pending))
                if decision.may_call:
                    granted = max(1, decision.granted)  # always progress
                    break
                refusal = self._refusal(decision, gate)
                if refusal is not None:
                    answers.update((pk, refusal) for pk, _ in pending)
                    return answers
                if waited.seconds + decision.wait > MAX_PACING_IN_PLACE and len(pending) > 1:
                    waits = deferral_waits(decision.wait, len(pending), gate.pace_per_minute())
                    reason = "rate limit: waiting for PagerDuty's budget"
                    answers.update(
                        (pk, Deferred(wait, reason))
                        for (pk, _), wait in zip(pending, waits, strict=True)
                    )
                    return answers
                waited.seconds += decision.wait
                self.sleep(decision.wait)
            admitted, pending = pending[:granted], pending[granted:]
            answered = False
            made = 0
            while made < len(admitted):
                group = _group_at(admitted, made, together, width)
                made += len(group)
                stop = False
                for pk, outcome in zip(
                    (pk for pk, _ in group), _outcomes(group, together), strict=True
                ):
                    if not isinstance(outcome, PagerDutyError):
                        answers[pk] = outcome
                        answered = True
                        continue
                    if answered and gate is not None:
                        # In the order they happened: a success, then this failure, counts one
                        # failure in a row, not none.
                        self._answered(gate)
                        answered = False
                    answers[pk] = self._failed_call(outcome, gate)
                    # PagerDuty failing, refusing the token or limiting the rate: the gate
                    # decides on the calls not made yet.
                    stop = stop or not isinstance(outcome, PermanentError)
                reading = readings() if readings is not None and gate is not None else None
                if reading is not None and gate is not None:
                    gate.paced(reading)
                if group[0][0] in together_pks:  # a group of those that may go together
                    width = calls_in_flight_after(width, answered=not stop, limit=together_size)
                if stop:
                    pending = admitted[made:] + pending
                    break
            if answered and gate is not None:
                self._answered(gate)
        return answers

    @staticmethod
    def _refusal(decision: Decision, gate: DeliveryGate) -> Parked | Deferred | None:
        """Why the gate sends no call now, or None for a short rate-limit wait (sleep it)."""
        if decision.admission is Admission.OUTAGE:
            return Parked("PagerDuty outage: breaker open, waiting for a probe to succeed")
        if decision.admission is Admission.CREDENTIALS:
            status = gate.status()
            return Parked(f"PagerDuty refused the API token: {status.credentials_error}")
        if decision.wait > MAX_RATE_LIMIT_SLEEP:
            return Deferred(decision.wait, "rate limit: waiting for PagerDuty's budget")
        return None

    def _failed_call(
        self, error: PagerDutyError, gate: DeliveryGate | None
    ) -> PagerDutyError | Deferred:
        if gate is None:
            return error
        self._tell_gate(gate, error)
        if error.status == 429 and isinstance(error, RetryableError):
            return Deferred(gate.rate_limited(error.retry_after, error.rate_limit), str(error))
        return error

    def _answered(self, gate: DeliveryGate) -> None:
        """PagerDuty answered: if that ends an outage or a refusal, drain what was parked."""
        if gate.succeeded():
            log.warning("PagerDuty answers again: draining parked deliveries")
            self._recovered = True

    def _tell_gate(self, gate: DeliveryGate, error: PagerDutyError) -> None:
        if isinstance(error, CredentialsError):
            gate.refused_credentials(str(error))
        elif isinstance(error, RetryableError) and error.status != 429:
            gate.failed()
        elif not isinstance(error, RetryableError):
            self._answered(gate)  # a 4xx is an answer: PagerDuty is up

    def _call(self, step: Step, backend: Backend) -> Incident | EventSent | None:
        """One PagerDuty call; ``None`` when a look-up found nothing."""
        if isinstance(step, SendEvent):
            if backend.events is None:
                raise PermanentError("this route sends no Events API events")
            backend.events.send(step.event)
            return EventSent(step.action)
        client = backend.rest
        if client is None:
            raise PermanentError("this route has no REST API client")
        if isinstance(step, Create):
            try:
                return client.create_incident(
                    title=step.title,
                    service_id=step.service_id,
                    incident_key=step.incident_key,
                    urgency=step.urgency,
                    details=step.details,
                    forwarded=step.forwarded,
                )
            except DuplicateIncidentKeyError:
                return _adopted(client, step)
        if isinstance(step, Inspect):
            incident = client.get_incident(step.incident_id)
            if step.check_service and incident.service_id not in backend.services:
                raise PermanentError(
                    f"incident {incident.id} is on service {incident.service_id}, not one of "
                    "this route's; the bridge did not create it and leaves it alone"
                )
            return incident
        if isinstance(step, FindByKey):
            return choose_incident(
                client.find_incidents(step.incident_key, include_resolved=step.include_resolved)
            )
        if isinstance(step, Update):
            return client.update_incident(step.incident_id, step.status.value)
        raise AssertionError(f"no call for {step!r}")

    # -- record ------------------------------------------------------------------------------

    def _record(
        self,
        calls: dict[int, Step],
        answers: dict[int, Answer],
        owner: str,
        results: dict[int, ReconcileResult],
    ) -> list[int]:
        """Write every answer; returns the alerts to plan again (those PagerDuty moved)."""
        again: list[int] = []
        now = self.clock()
        timeline: list[dict[str, Any]] = []
        with self.sessions.begin() as session:
            alerts = self._locked(session, list(answers), owner)
            if len(alerts) < len(answers):
                # A lease lost during the calls (renewals failing, a call slower than the lease
                # and its renewals): the alert is another worker's now, and its answer is that
                # worker's to find (a create it repeats is refused as a duplicate and adopted).
                lost = set(answers) - {alert.id for alert in alerts}
                log.warning("lost the lease of %d alert(s) during their calls", len(lost))
                results.update(dict.fromkeys(lost, ReconcileResult.BUSY))
            for alert in alerts:
                step, answer = calls[alert.id], answers[alert.id]
                if answer is None or isinstance(answer, Incident | EventSent):
                    self._record_success(timeline, alert, step, answer)
                    # Usually that was the last call the alert needed: finish it in this
                    # transaction rather than loading it again to find out.
                    finished = self._finish_without_call(alert, self.plan(alert))
                    if finished is None:
                        again.append(alert.id)
                    else:
                        results[alert.id] = finished
                    continue
                if isinstance(answer, Parked):
                    # A line when the alert parks, not at each re-check while it stays parked.
                    was_parked = alert.delivery_state is DeliveryState.PARKED
                    level = logging.DEBUG if was_parked else logging.INFO
                    _log_delivery(level, "parked", alert, answer.reason)
                    alert.delivery_state = DeliveryState.PARKED
                    alert.next_attempt_at = now + PARK_RECHECK
                    alert.last_error = answer.reason
                    results[alert.id] = ReconcileResult.PARKED
                elif isinstance(answer, Deferred):
                    detail = f"{answer.reason}; next in {answer.seconds:g} s"
                    _log_delivery(logging.DEBUG, "waiting", alert, detail)
                    alert.next_attempt_at = now + timedelta(seconds=answer.seconds)
                    alert.last_error = answer.reason
                    results[alert.id] = ReconcileResult.WAITING
                else:
                    results[alert.id] = self._record_failure(timeline, alert, answer)
                alert.lease_owner = None
                alert.lease_expires_at = None
            write_back(session, alerts, _RECONCILED, now)
            # One statement for the batch's timeline rows (each row an ORM object cost about as
            # much as the rest of recording its answer).
            insert_rows(session, ALERT_EVENTS_TABLE, timeline)
        return again

    def _record_success(
        self,
        timeline: list[dict[str, Any]],
        alert: AlertLike,
        step: Step,
        incident: Incident | EventSent | None,
    ) -> None:
        if isinstance(incident, EventSent):
            alert.confirmed_status = incident.action
            outcome = EVENT_ACTIONS[incident.action]
        elif incident is None:
            # Looked up by key after a lost create and PagerDuty has no such incident:
            # the create never landed. The alert is resolved, so nothing is owed.
            alert.create_sent_at = None
            outcome = "not-found"
        else:
            if isinstance(step, Inspect):
                alert.status_read_at = self.clock()
            alert.pagerduty_incident_id = incident.id
            alert.pagerduty_incident_number = incident.number or alert.pagerduty_incident_number
            alert.pagerduty_incident_url = incident.html_url or alert.pagerduty_incident_url
            alert.confirmed_status = AlertStatus(incident.status)
            # A create refused as a duplicate and then found by key is an adoption, not a page.
            outcome = "findbykey" if isinstance(incident, Adopted) else type(step).__name__.lower()
        if alert.delivery_state is DeliveryState.PARKED:
            alert.delivery_state = DeliveryState.PENDING
        timeline.append(_audit(alert, outcome, detail=_describe(step, incident)))
        _log_delivery(logging.INFO, _CALL_DONE[outcome], alert, _describe(step, incident))

    def _record_failure(
        self, timeline: list[dict[str, Any]], alert: AlertLike, error: PagerDutyError
    ) -> ReconcileResult:
        schedule = schedule_after_failure(
            alert,
            error,
            self.clock(),
            min_backoff=self.settings.retry_min_backoff,
            max_backoff=self.settings.retry_max_backoff,
            give_up_after=self.settings.give_up_after,
        )
        alert.delivery_state = schedule.state
        alert.attempts = schedule.attempts
        alert.next_attempt_at = schedule.next_attempt_at
        alert.last_error = schedule.last_error
        timeline.append(_audit(alert, schedule.state.value, detail=schedule.last_error))
        if schedule.state is DeliveryState.PENDING:
            metrics.count_retry(error.status)
            now = self.clock()
            wait = ((schedule.next_attempt_at or now) - now).total_seconds()
            detail = f"attempt {schedule.attempts}, next in {wait:.0f} s: {schedule.last_error}"
            _log_delivery(logging.WARNING, "retry", alert, detail)
        else:
            detail = f"attempt {schedule.attempts}: {schedule.last_error}"
            _log_delivery(logging.ERROR, schedule.state.value, alert, detail)
        return {
            DeliveryState.PENDING: ReconcileResult.RETRY,
            DeliveryState.PARKED: ReconcileResult.PARKED,
            DeliveryState.FAILED: ReconcileResult.FAILED,
            DeliveryState.DELIVERED: ReconcileResult.DELIVERED,
        }[schedule.state]

    # -- recovery ----------------------------------------------------------------------------

    def _drain_parked(self) -> None:
        """PagerDuty is back: queue every waiting alert now, oldest first.

        Parked ones, and pending ones too: those whose calls opened the breaker wait out a
        backoff that was only about the outage.
        """
        now = self.clock()
        with self.sessions.begin() as session:
            parked = list(
                session.scalars(
                    select(Alert.id)
                    .where(
                        Alert.namespace == namespace_of(session),
                        Alert.delivery_state.in_([DeliveryState.PARKED, DeliveryState.PENDING]),
                        or_(Alert.lease_owner.is_(None), Alert.lease_expires_at < now),
                    )
                    .order_by(Alert.pending_since, Alert.id)
                )
            )
            if parked:
                session.execute(
                    update(Alert)
                    .where(is_one_of(Alert.id, parked, session))
                    .values(next_attempt_at=now)
                    .execution_options(synchronize_session=False)
                )
        if parked and self.requeue is not None:
            self.requeue(parked)
        log.warning("queued %d parked alert(s) after PagerDuty recovered", len(parked))


# What reconciling may change in an alert's row; everything else (the desired status, the
# trigger's text) is the intake's, and a reconcile never writes it.
_RECONCILED = (
    "lease_owner",
    "lease_expires_at",
    "create_sent_at",
    "delivery_state",
    "attempts",
    "next_attempt_at",
    "pending_since",
    "last_error",
    "confirmed_status",
    "pagerduty_incident_id",
    "pagerduty_incident_number",
    "pagerduty_incident_url",
    "status_read_at",
)
# What planning changes in an alert that it then calls PagerDuty for (_plan).
_LEASED = ("lease_owner", "lease_expires_at", "create_sent_at")


# What a successful call did, by the outcome _record_success audits.
_CALL_DONE = {
    "create": "created",
    "update": "updated",
    "findbykey": "adopted",
    "inspect": "inspected",
    "not-found": "not_found",
    "trigger": "triggered",
    "acknowledge": "acknowledged",
    "resolve": "resolved",
}
_SAID = {"retry": "retry scheduled", "not_found": "not found"}


def _audit(alert: AlertLike, outcome: str, *, detail: str | None) -> dict[str, Any]:
    """The alert's timeline row for a delivery step."""
    return {
        "alert_pk": alert.id,
        "source": alert.source,
        "source_alert_id": alert.source_alert_id,
        "kind": "delivery",
        "outcome": outcome[:32],
        "detail": detail,
        "created_at": utcnow(),
    }


def _readings(backend: Backend) -> Callable[[], RateLimitReading | None] | None:
    """Where a route's answers leave their ``ratelimit-*`` headers: REST only. An Events API
    key keeps its configured budget and its 429 handling."""
    return backend.rest.take_rate_limit if backend.rest is not None else None


def _group_at(
    admitted: list[tuple[int, Callable[[], T]]], start: int, together: Together | None, width: int
) -> list[tuple[int, Callable[[], T]]]:
    """The calls from ``admitted[start]`` on that go out at once: a run of up to ``width`` that
    ``together`` allows, or the one call at ``start`` alone."""
    if together is None or admitted[start][0] not in together.pks:
        return [admitted[start]]
    group = []
    for call in admitted[start : start + width]:
        if call[0] not in together.pks:
            break
        group.append(call)
    return group


def _outcomes(
    group: Sequence[tuple[int, Callable[[], T]]], together: Together | None
) -> list[T | PagerDutyError]:
    """Make a group's calls: each answer, or the error it raised, in order."""
    if len(group) > 1:
        assert together is not None
        return together.send([pk for pk, _ in group])
    try:
        return [group[0][1]()]
    except PagerDutyError as error:
        return [error]


def _grouped(
    calls: dict[int, Step],
    pks: list[int],
    size: int,
    kind: type[Create] | type[SendEvent],
    make: Callable[[list[Step]], list[Any]],
) -> Together | None:
    """The calls of ``kind`` among ``pks``, made by ``make`` when they go together."""
    chosen = frozenset(pk for pk in pks if isinstance(calls[pk], kind))
    if len(chosen) < 2:
        return None
    return Together(chosen, size, lambda group: make([calls[pk] for pk in group]))


def _create_all(client: PagerDutyClient, steps: list[Step]) -> list[Incident | PagerDutyError]:
    """Creates in flight together; a duplicate (an earlier answer lost) adopted, as one by one."""
    creates = [step for step in steps if isinstance(step, Create)]
    assert len(creates) == len(steps)  # only creates go together
    made = client.create_incidents([_new_incident(step) for step in creates])
    return [
        _adopted_or_error(client, step) if isinstance(answer, DuplicateIncidentKeyError) else answer
        for step, answer in zip(creates, made, strict=True)
    ]


def _send_all(client: EventsClient, steps: list[Step]) -> list[EventSent | PagerDutyError]:
    """Events API events in flight together."""
    events = [step for step in steps if isinstance(step, SendEvent)]
    assert len(events) == len(steps)  # only events go together
    taken = client.send_together([step.event for step in events])
    return [
        answer if isinstance(answer, PagerDutyError) else EventSent(step.action)
        for step, answer in zip(events, taken, strict=True)
    ]


def _new_incident(step: Create) -> NewIncident:
    return NewIncident(
        step.title, step.service_id, step.incident_key, step.urgency, step.details, step.forwarded
    )


@dataclass(frozen=True, slots=True)
class Adopted(Incident):
    """An incident an earlier create made, found by its key after PagerDuty refused the
    repeated create as a duplicate."""


def _adopted(client: PagerDutyClient, step: Create) -> Incident:
    """PagerDuty refused a create as a duplicate: an earlier attempt created the incident and
    its answer was lost. Adopt that incident."""
    found = client.find_incidents(step.incident_key)
    if not found:
        raise RetryableError(
            "duplicate incident_key refused, but no open incident has it; "
            "the create will be retried",
            status=400,
        )
    return Adopted(**{name: getattr(found[0], name) for name in Incident.__dataclass_fields__})


def _adopted_or_error(client: PagerDutyClient, step: Create) -> Incident | PagerDutyError:
    try:
        return _adopted(client, step)
    except PagerDutyError as error:
        return error


def _log_delivery(level: int, outcome: str, alert: AlertLike, detail: str | None) -> None:
    """One line per delivery step, naming the alert and its incident; in JSON logs they are
    also fields of their own (``alert``, ``cycle``, ``incident``, ``outcome``)."""
    name = f"{alert.source}:{alert.source_alert_id}"
    log.log(
        level,
        "%s alert=%s incident=%s: %s",
        _SAID.get(outcome, outcome),
        name,
        alert.pagerduty_incident_id,
        detail,
        extra={
            "alert": name,
            "cycle": alert.cycle,
            "incident": alert.pagerduty_incident_id,
            "outcome": outcome,
        },
    )


def _describe(step: Step, incident: Incident | EventSent | None) -> str:
    if isinstance(incident, EventSent):
        return f"{EVENT_ACTIONS[incident.action]} event taken for {step_key(step)}"
    if incident is None:
        return "no incident with this key: the create never landed"
    if isinstance(incident, Adopted):
        return f"adopted incident {incident.id} ({incident.status}): the create's answer was lost"
    if isinstance(step, Create):
        return f"incident {incident.id} is {incident.status}"
    if isinstance(step, FindByKey):
        return f"adopted incident {incident.id} ({incident.status}) found by key"
    if isinstance(step, Inspect):
        return f"incident {incident.id} is {incident.status} on service {incident.service_id}"
    return f"incident {incident.id} is now {incident.status}"


def step_key(step: Step) -> str:
    return str(step.event.get("dedup_key")) if isinstance(step, SendEvent) else ""


def default_services(settings: Settings) -> frozenset[str]:
    """The default route's services: the configured one and the allow-list."""
    configured = {settings.pagerduty_service_id} if settings.pagerduty_service_id else set()
    return frozenset({*configured, *settings.allowed_service_ids})
