"""Reconcile one alert: bring its PagerDuty incident to the alert's desired status.

Only one worker reconciles an alert at a time: it takes a *lease* (an owner and an expiry in
the alert's row, set by one conditional UPDATE, so it works alike on PostgreSQL and SQLite) and
holds no database transaction while PagerDuty answers. Every read-decide-write step is a short
transaction that locks the row (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite),
so an event applied meanwhile is seen by the next step, never overwritten. A worker killed
mid-call leaves a lease that expires; the sweeper then queues the alert again, and the
deterministic incident key makes the repeated create harmless.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertEvent, utcnow
from worker.delivery import (
    WAIT_FOR_TRIGGER,
    Create,
    Done,
    FindByKey,
    Misconfigured,
    Step,
    Update,
    WaitForTrigger,
    plan_delivery,
    schedule_after_failure,
)
from worker.pagerduty import (
    DuplicateIncidentKeyError,
    Incident,
    PagerDutyClient,
    PagerDutyError,
    RetryableError,
)
from worker.settings import Settings
from worker.status import AlertStatus, DeliveryState

log = logging.getLogger(__name__)

MAX_STEPS = 6  # create, then ack, then resolve is three; the rest is room for events arriving


class ReconcileResult(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PARKED = "parked"
    FAILED = "failed"
    WAITING = "waiting"  # for the trigger's text
    BUSY = "busy"  # another worker holds the lease; it will see our change
    MISSING = "missing"


def lease_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Reconciler:
    sessions: sessionmaker[Session]
    client: PagerDutyClient
    settings: Settings
    clock: Callable[[], datetime] = utcnow

    def reconcile(self, alert_pk: int) -> ReconcileResult:
        owner = lease_owner_id()
        if not self._claim(alert_pk, owner):
            return ReconcileResult.BUSY
        try:
            for _ in range(MAX_STEPS):
                result = self._step(alert_pk, owner)
                if result is not None:
                    return result
            # Events kept arriving; let the sweeper carry on soon rather than hog the worker.
            self._release(alert_pk, owner, retry_in=timedelta(seconds=1))
            return ReconcileResult.RETRY
        except BaseException:
            self._release(alert_pk, owner, retry_in=timedelta(seconds=0))
            raise

    # -- the lease -------------------------------------------------------------------------

    def _claim(self, alert_pk: int, owner: str) -> bool:
        now = self.clock()
        with self.sessions.begin() as session:
            claimed = session.execute(
                update(Alert)
                .where(
                    Alert.id == alert_pk,
                    or_(Alert.lease_owner.is_(None), Alert.lease_expires_at < now),
                )
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=self.settings.lease_seconds),
                )
                .execution_options(synchronize_session=False)
            )
            return claimed.rowcount == 1  # type: ignore[attr-defined, no-any-return]

    def _release(self, alert_pk: int, owner: str, *, retry_in: timedelta) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(Alert)
                .where(Alert.id == alert_pk, Alert.lease_owner == owner)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    next_attempt_at=self.clock() + retry_in,
                )
                .execution_options(synchronize_session=False)
            )

    def _locked(self, session: Session, alert_pk: int, owner: str) -> Alert | None:
        alert = session.scalars(select(Alert).where(Alert.id == alert_pk).with_for_update()).first()
        if alert is None or alert.lease_owner != owner:
            return None  # deleted, or our lease expired and someone else took over
        alert.lease_expires_at = self.clock() + timedelta(seconds=self.settings.lease_seconds)
        return alert

    # -- one step ----------------------------------------------------------------------------

    def _step(self, alert_pk: int, owner: str) -> ReconcileResult | None:
        """Plan, call PagerDuty, record. ``None`` means "go on with the next step"."""
        with self.sessions.begin() as session:
            alert = self._locked(session, alert_pk, owner)
            if alert is None:
                return ReconcileResult.MISSING
            step = plan_delivery(alert)
            finished = self._finish_without_call(session, alert, step)
            if finished is not None:
                return finished
            if isinstance(step, Create) and alert.create_sent_at is None:
                # Committed before the call: from now on "no incident id" means "maybe created".
                alert.create_sent_at = self.clock()
        try:
            incident = self._call(step)
        except PagerDutyError as error:
            return self._record_failure(alert_pk, owner, step, error)
        self._record_success(alert_pk, owner, step, incident)
        return None

    def _finish_without_call(
        self, session: Session, alert: Alert, step: Step
    ) -> ReconcileResult | None:
        now = self.clock()
        if isinstance(step, Done):
            alert.delivery_state = DeliveryState.DELIVERED
            alert.next_attempt_at = None
            alert.pending_since = None
            alert.last_error = None
            result = ReconcileResult.DELIVERED
            log.info(
                "delivered alert=%s:%s incident=%s status=%s (%s)",
                alert.source,
                alert.source_alert_id,
                alert.pagerduty_incident_id,
                alert.desired_status.value,
                step.reason,
            )
        elif isinstance(step, WaitForTrigger):
            alert.next_attempt_at = now + WAIT_FOR_TRIGGER
            result = ReconcileResult.WAITING
        elif isinstance(step, Misconfigured):
            alert.delivery_state = DeliveryState.FAILED
            alert.next_attempt_at = None
            alert.last_error = step.reason
            result = ReconcileResult.FAILED
            log.error("alert=%s:%s failed: %s", alert.source, alert.source_alert_id, step.reason)
        else:
            return None
        alert.lease_owner = None
        alert.lease_expires_at = None
        return result

    def _call(self, step: Step) -> Incident | None:
        """One PagerDuty call; ``None`` when a look-up found nothing."""
        if isinstance(step, Create):
            try:
                return self.client.create_incident(
                    title=step.title,
                    service_id=step.service_id,
                    incident_key=step.incident_key,
                    urgency=step.urgency,
                    details=step.details,
                )
            except DuplicateIncidentKeyError:
                # An earlier attempt created it and its answer was lost: adopt that incident.
                found = self.client.find_incidents(step.incident_key)
                if not found:
                    raise RetryableError(
                        "duplicate incident_key refused, but no open incident has it; "
                        "the create will be retried",
                        status=400,
                    ) from None
                return found[0]
        if isinstance(step, FindByKey):
            found = self.client.find_incidents(
                step.incident_key, include_resolved=step.include_resolved
            )
            return found[0] if found else None
        if isinstance(step, Update):
            return self.client.update_incident(step.incident_id, step.status.value)
        raise AssertionError(f"no call for {step!r}")

    def _record_success(
        self, alert_pk: int, owner: str, step: Step, incident: Incident | None
    ) -> None:
        with self.sessions.begin() as session:
            alert = self._locked(session, alert_pk, owner)
            if alert is None:
                return
            if incident is None:
                # Looked up by key after a lost create and PagerDuty has no such incident:
                # the create never landed. The alert is resolved, so nothing is owed.
                alert.create_sent_at = None
                outcome = "not-found"
            else:
                alert.pagerduty_incident_id = incident.id
                alert.pagerduty_incident_number = incident.number or alert.pagerduty_incident_number
                alert.pagerduty_incident_url = incident.html_url or alert.pagerduty_incident_url
                alert.confirmed_status = AlertStatus(incident.status)
                outcome = type(step).__name__.lower()
            self._audit(session, alert, outcome, detail=_describe(step, incident))

    def _record_failure(
        self, alert_pk: int, owner: str, step: Step, error: PagerDutyError
    ) -> ReconcileResult:
        with self.sessions.begin() as session:
            alert = self._locked(session, alert_pk, owner)
            if alert is None:
                return ReconcileResult.MISSING
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
            alert.lease_owner = None
            alert.lease_expires_at = None
            self._audit(session, alert, schedule.state.value, detail=schedule.last_error)
            level = (
                logging.ERROR if schedule.state is not DeliveryState.PENDING else logging.WARNING
            )
            log.log(
                level,
                "delivery %s alert=%s:%s incident=%s attempt=%d: %s",
                schedule.state.value,
                alert.source,
                alert.source_alert_id,
                alert.pagerduty_incident_id,
                schedule.attempts,
                schedule.last_error,
            )
            return {
                DeliveryState.PENDING: ReconcileResult.RETRY,
                DeliveryState.PARKED: ReconcileResult.PARKED,
                DeliveryState.FAILED: ReconcileResult.FAILED,
                DeliveryState.DELIVERED: ReconcileResult.DELIVERED,
            }[schedule.state]

    @staticmethod
    def _audit(session: Session, alert: Alert, outcome: str, *, detail: str | None) -> None:
        session.add(
            AlertEvent(
                alert_pk=alert.id,
                source=alert.source,
                source_alert_id=alert.source_alert_id,
                kind="delivery",
                outcome=outcome[:32],
                detail=detail,
            )
        )


def _describe(step: Step, incident: Incident | None) -> str:
    if incident is None:
        return "no incident with this key: the create never landed"
    if isinstance(step, Create):
        return f"incident {incident.id} is {incident.status}"
    if isinstance(step, FindByKey):
        return f"adopted incident {incident.id} ({incident.status}) found by key"
    return f"incident {incident.id} is now {incident.status}"
