"""What a reconcile's step did to an alert: its result, and the alert's record afterwards.

The reconciler calls these inside the transaction that records a batch's answers (or plans
it), on the alert's locked record; each outcome also gets its timeline row and its log line
(:mod:`worker.delivery.timeline`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any

from models import AlertLike
from worker import metrics
from worker.delivery.answers import Adopted, EventSent
from worker.delivery.policy import (
    EVENT_ACTIONS,
    WAIT_FOR_TRIGGER,
    Done,
    HoldResolve,
    Inspect,
    Misconfigured,
    Step,
    Update,
    WaitForTrigger,
    schedule_after_failure,
)
from worker.delivery.timeline import CALL_DONE, audit, describe, log_delivery
from worker.pagerduty import AlreadyInState, Incident, PagerDutyError
from worker.settings import Settings
from worker.vocabulary import AlertStatus, DeliveryState


class ReconcileResult(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PARKED = "parked"
    FAILED = "failed"
    WAITING = "waiting"  # for the trigger's text, or for a rate-limit token
    BUSY = "busy"  # another worker holds the lease; it will see our change
    MISSING = "missing"


def finish_without_call(
    alert: AlertLike, step: Step, clock: Callable[[], datetime]
) -> ReconcileResult | None:
    """Finish an alert whose next step needs no call (delivered, waiting, failed); None when
    it needs one."""
    now = clock()
    if isinstance(step, Done):
        alert.delivery_state = DeliveryState.DELIVERED
        alert.next_attempt_at = None
        alert.pending_since = None
        alert.last_error = None
        result = ReconcileResult.DELIVERED
        log_delivery(
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
        log_delivery(logging.DEBUG, "holding resolve", alert, f"until {step.until}")
    elif isinstance(step, Misconfigured):
        alert.delivery_state = DeliveryState.FAILED
        alert.next_attempt_at = None
        alert.last_error = step.reason
        result = ReconcileResult.FAILED
        log_delivery(logging.ERROR, "failed", alert, step.reason)
    else:
        return None
    alert.lease_owner = None
    alert.lease_expires_at = None
    return result


def record_success(
    timeline: list[dict[str, Any]],
    alert: AlertLike,
    step: Step,
    incident: Incident | EventSent | None,
    clock: Callable[[], datetime],
) -> None:
    """Record a call PagerDuty answered: the incident it names, and a row in ``timeline``."""
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
            alert.status_read_at = clock()
        alert.pagerduty_incident_id = incident.id
        alert.pagerduty_incident_number = incident.number or alert.pagerduty_incident_number
        alert.pagerduty_incident_url = incident.html_url or alert.pagerduty_incident_url
        alert.confirmed_status = AlertStatus(incident.status)
        if isinstance(step, Update) and step.fields and not isinstance(incident, AlreadyInState):
            alert.update_fields = fields_left(alert.update_fields, step.fields)
        # A create refused as a duplicate and then found by key is an adoption, not a page.
        outcome = "findbykey" if isinstance(incident, Adopted) else type(step).__name__.lower()
    if alert.delivery_state is DeliveryState.PARKED:
        alert.delivery_state = DeliveryState.PENDING
    timeline.append(audit(alert, outcome, detail=describe(step, incident)))
    log_delivery(logging.INFO, CALL_DONE[outcome], alert, describe(step, incident))


def fields_left(pending: dict[str, Any] | None, sent: dict[str, Any]) -> dict[str, Any] | None:
    """The fields still waiting once PagerDuty took ``sent``: those an update changed or
    added meanwhile (the intake merged them while the call was out) stay."""
    left = {name: value for name, value in (pending or {}).items() if sent.get(name) != value}
    return left or None


# PagerDuty's "already in that state" codes: about the status, not the fields beside it.
_ALREADY = frozenset({1001, 1002})


def fields_refused(step: Step, error: PagerDutyError) -> bool:
    """Whether PagerDuty's refusal of ``step`` may be about the API contact's fields it carried
    (400, invalid input): the same fields would be refused again, and with them every later
    status update of the incident."""
    return (
        isinstance(step, Update)
        and bool(step.fields)
        and error.status == 400
        and error.code not in _ALREADY
    )


def drop_refused_fields(
    timeline: list[dict[str, Any]], alert: AlertLike, step: Step, error: PagerDutyError
) -> None:
    """Drop the fields PagerDuty refused (:func:`fields_refused`), saying so in the timeline;
    the status, if the update had one, goes on its own next."""
    sent = step.fields if isinstance(step, Update) and step.fields else {}
    alert.update_fields = fields_left(alert.update_fields, sent)
    detail = f"PagerDuty refused the update with {', '.join(sorted(sent))}: {error}; dropped"
    timeline.append(audit(alert, "fields-refused", detail=detail))
    log_delivery(logging.WARNING, "fields refused", alert, detail)


def record_failure(
    timeline: list[dict[str, Any]],
    alert: AlertLike,
    error: PagerDutyError,
    settings: Settings,
    clock: Callable[[], datetime],
) -> ReconcileResult:
    """Record a failed call: retry later, park or give up (:func:`schedule_after_failure`),
    and a row in ``timeline``."""
    schedule = schedule_after_failure(
        alert,
        error,
        clock(),
        min_backoff=settings.retry_min_backoff,
        max_backoff=settings.retry_max_backoff,
        give_up_after=settings.give_up_after,
    )
    alert.delivery_state = schedule.state
    alert.attempts = schedule.attempts
    alert.next_attempt_at = schedule.next_attempt_at
    alert.last_error = schedule.last_error
    timeline.append(audit(alert, schedule.state.value, detail=schedule.last_error))
    if schedule.state is DeliveryState.PENDING:
        metrics.count_retry(error.status)
        now = clock()
        wait = ((schedule.next_attempt_at or now) - now).total_seconds()
        detail = f"attempt {schedule.attempts}, next in {wait:.0f} s: {schedule.last_error}"
        log_delivery(logging.WARNING, "retry", alert, detail)
    else:
        detail = f"attempt {schedule.attempts}: {schedule.last_error}"
        log_delivery(logging.ERROR, schedule.state.value, alert, detail)
    return {
        DeliveryState.PENDING: ReconcileResult.RETRY,
        DeliveryState.PARKED: ReconcileResult.PARKED,
        DeliveryState.FAILED: ReconcileResult.FAILED,
        DeliveryState.DELIVERED: ReconcileResult.DELIVERED,
    }[schedule.state]
