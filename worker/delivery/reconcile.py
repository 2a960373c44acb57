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

This module is the loop (claim, plan, deliver, record); its parts are siblings: the batch
claim (``claim``), the lease renewals (``leases``), the calls (``calls``, ``gated_calls``),
their answers (``answers``), what they do to an alert (``outcomes``) and how that is told
(``timeline``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertLike, AlertRecord, utcnow
from models.alert import ALERTS_TABLE, write_back
from models.bulk import built_once, insert_rows, is_one_of, param_one_of
from models.event import ALERT_EVENTS_TABLE
from models.namespace import namespace_of
from worker import metrics
from worker.delivery.answers import (
    Answer,
    Backend,
    Deferred,
    EventSent,
    Parked,
    default_services,
)
from worker.delivery.calls import call, calls_together, readings
from worker.delivery.claim import BatchClaim
from worker.delivery.gate import DeliveryGate
from worker.delivery.gated_calls import GatedCalls, WaitedInPlace
from worker.delivery.leases import LeaseKeeper, lease_owner_id
from worker.delivery.outcomes import (
    ReconcileResult,
    drop_refused_fields,
    fields_refused,
    finish_without_call,
    record_failure,
    record_success,
)
from worker.delivery.policy import (
    Step,
    Update,
    drain_rank,
    opens_a_page,
    plan_delivery,
    share_fairly,
    withdrawn_by,
)
from worker.delivery.timeline import log_delivery
from worker.pagerduty import (
    Incident,
    IncidentUpdate,
    PagerDutyClient,
    PagerDutyError,
    PermanentError,
    RetryableError,
)
from worker.pipeline.message import DEFAULT_ROUTE
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState

log = logging.getLogger(__name__)

MAX_STEPS = 6  # create, then ack, then resolve is three; the rest is room for events arriving
BULK_LIMIT = 250  # PagerDuty's most incidents per bulk update (more → 413)
# Calls one route makes before the next route of the same batch takes its turn: a gate
# admission's worth (MAX_ADMIT), so a turn costs no extra call to Redis.
FAIR_SHARE_TURN = 10
# A parked alert is looked at again after this; a recovery drains the parked ones at once.
PARK_RECHECK = timedelta(seconds=30)


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

    def lease_until(self) -> datetime:
        """When a lease taken or renewed now expires."""
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
        until = self.lease_until()
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
                finished = finish_without_call(alert, step, self.clock)
                if finished is not None:
                    results[alert.id] = finished
                    continue
                calls[alert.id] = step
                routes[alert.id] = alert.route
                self.mark_create(alert, step)
            now = self.clock()
            # An alert about to be called changed only its lease and its create mark: the
            # statement that stores them carries 3 columns, not 12 (most of a storm's batch).
            write_back(session, [a for a in alerts if a.id not in calls], _RECONCILED, now)
            write_back(session, [a for a in alerts if a.id in calls], _LEASED, now)
        return calls

    def mark_create(self, alert: AlertLike, step: Step) -> None:
        """Note on ``alert`` that ``step`` may create its incident, before the call."""
        if opens_a_page(step) and alert.create_sent_at is None:
            # Committed before the call: from now on "no incident id" means "maybe created,
            # answer lost" (even if the worker dies mid-call), and a resolve looks the incident
            # up by key instead of assuming there is none. If the gate then parks the call, the
            # cost is one look-up, never an open incident.
            alert.create_sent_at = self.clock()

    def claim(self, limit: int) -> BatchClaim:
        """A claim on up to ``limit`` alerts of a batch about to be applied (``apply_events``):
        their first plan is made, and their leases taken, in the applying transaction."""
        return BatchClaim(self, limit)

    # -- deliver -----------------------------------------------------------------------------

    def _deliver(self, calls: dict[int, Step], routes: dict[int, str]) -> dict[int, Answer]:
        """Make the calls: bulk updates first (a resolve burst is the common backlog), then the
        rest one by one. Every call passes its route's gate."""
        answers: dict[int, Answer] = {}
        gated = GatedCalls(self.sleep, self._recovering)
        backends = {route: self._backend(route) for route in set(routes.values())}
        for pk in calls:
            if backends[routes[pk]] is None:
                answers[pk] = Parked(
                    f"route {routes[pk]!r} is not in the routes file; restore it and restart "
                    "the workers"
                )
        # By route and status (None: fields alone); each item carries its own fields.
        updates: dict[tuple[str, AlertStatus | None], list[tuple[int, Update]]] = {}
        for pk, step in calls.items():
            if isinstance(step, Update) and pk not in answers:
                updates.setdefault((routes[pk], step.status), []).append((pk, step))
        for (route, _), group in updates.items():
            backend = backends[route]
            if len(group) < 2 or backend is None or backend.rest is None:
                continue
            for start in range(0, len(group), BULK_LIMIT):
                answers.update(self._bulk_update(group[start : start + BULK_LIMIT], backend, gated))
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
                gated.many(
                    [(pk, functools.partial(call, calls[pk], backend)) for pk in pks],
                    backend.gate,
                    together=calls_together(
                        calls, pks, backend, self.settings.pagerduty_calls_in_flight
                    ),
                    readings=readings(backend),
                    waited=waited,
                    withdrawn=functools.partial(self._withdrawn, calls),
                )
            )
        return answers

    def _withdrawn(self, calls: dict[int, Step], alert_pks: list[int]) -> set[int]:
        """Of ``alert_pks``, the alerts whose planned call is no longer wanted (the intake
        applied a resolve while the call waited for the budget): :func:`withdrawn_by`."""
        pages = [pk for pk in alert_pks if opens_a_page(calls[pk])]
        if not pages:
            return set()
        with self.sessions() as session:
            rows = session.execute(
                select(Alert.id, Alert.desired_status).where(is_one_of(Alert.id, pages, session))
            )
            return {pk for pk, desired in rows if withdrawn_by(calls[pk], desired)}

    def _bulk_update(
        self, chunk: list[tuple[int, Update]], backend: Backend, gated: GatedCalls
    ) -> dict[int, Answer]:
        items = [
            IncidentUpdate(step.incident_id, step.status_name, step.fields) for _, step in chunk
        ]
        client = backend.rest
        assert client is not None
        answer = gated.one(lambda: client.update_incidents(items), backend.gate, readings(backend))
        if isinstance(answer, PermanentError):
            # A bulk update is all or nothing: one unknown or already-resolved incident refuses
            # the whole request. Send those one by one, and learn which one it was.
            return {}
        if isinstance(answer, list):
            by_id = {incident.id: incident for incident in answer}
            return {pk: _listed(by_id, step) for pk, step in chunk}
        return {pk: answer for pk, _ in chunk}  # the same failure, parking or wait for all

    def _recovering(self) -> None:
        """PagerDuty answers again: drain the parked alerts once this reconcile is done."""
        self._recovered = True

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
                if isinstance(answer, PermanentError) and fields_refused(step, answer):
                    # PagerDuty refused the fields the update carried: dropped, so that they
                    # hold back neither this status nor any later one.
                    drop_refused_fields(timeline, alert, step, answer)
                    self._settle(alert, again, results)
                    continue
                if answer is None or isinstance(answer, Incident | EventSent):
                    record_success(timeline, alert, step, answer, self.clock)
                    self._settle(alert, again, results)
                    continue
                if isinstance(answer, Parked):
                    # A line when the alert parks, not at each re-check while it stays parked.
                    was_parked = alert.delivery_state is DeliveryState.PARKED
                    level = logging.DEBUG if was_parked else logging.INFO
                    log_delivery(level, "parked", alert, answer.reason)
                    alert.delivery_state = DeliveryState.PARKED
                    alert.next_attempt_at = now + PARK_RECHECK
                    alert.last_error = answer.reason
                    results[alert.id] = ReconcileResult.PARKED
                elif isinstance(answer, Deferred):
                    detail = f"{answer.reason}; next in {answer.seconds:g} s"
                    log_delivery(logging.DEBUG, "waiting", alert, detail)
                    alert.next_attempt_at = now + timedelta(seconds=answer.seconds)
                    alert.last_error = answer.reason
                    results[alert.id] = ReconcileResult.WAITING
                else:
                    results[alert.id] = record_failure(
                        timeline, alert, answer, self.settings, self.clock
                    )
                alert.lease_owner = None
                alert.lease_expires_at = None
            write_back(session, alerts, _RECONCILED, now)
            # One statement for the batch's timeline rows (each row an ORM object cost about as
            # much as the rest of recording its answer).
            insert_rows(session, ALERT_EVENTS_TABLE, timeline)
        return again

    def _settle(
        self, alert: AlertRecord, again: list[int], results: dict[int, ReconcileResult]
    ) -> None:
        """After an answered call: usually that was the last call the alert needed, so finish it
        in this transaction rather than loading it again to find out."""
        finished = finish_without_call(alert, self.plan(alert), self.clock)
        if finished is None:
            again.append(alert.id)
        else:
            results[alert.id] = finished

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


def _listed(by_id: dict[str, Incident], step: Update) -> Incident | PagerDutyError:
    """An incident's answer in a bulk update's: as listed; one PagerDuty left out took its
    status, but its fields alone are not known to have landed (sent again later: harmless)."""
    incident = by_id.get(step.incident_id)
    if incident is not None:
        return incident
    if step.status is None:
        return RetryableError(
            f"PagerDuty's answer to the bulk update did not list incident {step.incident_id}"
        )
    return Incident(step.incident_id, step.status.value)


# What reconciling may change in an alert's row; everything else (the desired status, the
# trigger's text) is the intake's, and a reconcile never writes it. Both write update_fields,
# each on the row it has locked: the intake adds fields, a reconcile removes those PagerDuty took.
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
    "update_fields",
)
# What planning changes in an alert that it then calls PagerDuty for (_plan).
_LEASED = ("lease_owner", "lease_expires_at", "create_sent_at")
