"""Delivery policy, as pure functions: the next PagerDuty call an alert needs, and what a
failure does to its schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from models import AlertLike
from worker.delivery.backoff import retry_delay, should_give_up
from worker.delivery.flapping import resolve_held_until
from worker.pagerduty import CredentialsError, Incident, PagerDutyError, RetryableError
from worker.pipeline.message import BACKEND_EVENTS, is_adopted_incident
from worker.vocabulary import AlertStatus, DeliveryState, next_update

# With bad credentials nothing heals by itself; look again now and then (a probe) so that a
# fixed token resumes deliveries without a restart.
CREDENTIALS_PROBE_INTERVAL = timedelta(minutes=5)
# An alert that wants updating but has no trigger text yet (an API-contact acknowledge that
# overtook its create) waits for the trigger; the sweeper looks again after this.
WAIT_FOR_TRIGGER = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Done:
    """PagerDuty shows what the alert wants, or nothing is owed."""

    reason: str


@dataclass(frozen=True, slots=True)
class Create:
    title: str
    service_id: str
    incident_key: str
    urgency: str | None
    details: str | None
    # The API contact's other create fields, sent as given (priority, assignments, ...).
    forwarded: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class FindByKey:
    """The create may have landed with its answer lost: look the incident up by key."""

    incident_key: str
    include_resolved: bool


@dataclass(frozen=True, slots=True)
class Update:
    """``PUT /incidents/{id}``: a status, the API contact's fields waiting for the incident
    (``fields``, sent in the same request), or those fields alone (``status`` None)."""

    incident_id: str
    status: AlertStatus | None
    fields: dict[str, Any] | None = None

    @property
    def status_name(self) -> str | None:
        return self.status.value if self.status is not None else None


@dataclass(frozen=True, slots=True)
class Inspect:
    """Read an incident the bridge did not create before touching it: its service must be one
    of the route's, and its status decides what is still owed (docs/security.md)."""

    incident_id: str
    # False for the bridge's own incident, read only for its status before an acknowledge.
    check_service: bool = True


@dataclass(frozen=True, slots=True)
class WaitForTrigger:
    pass


@dataclass(frozen=True, slots=True)
class HoldResolve:
    """A resolve waits out the flap window (worker/delivery/flapping.py) before it is sent."""

    until: datetime


@dataclass(frozen=True, slots=True)
class Misconfigured:
    """Nothing can be sent and waiting will not help (no service id)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Events API v2: one event for the alert's dedup_key. ``event`` is the whole body but for
    the routing key, which the client adds."""

    action: AlertStatus
    event: dict[str, Any]


Step = (
    Done
    | Create
    | FindByKey
    | Inspect
    | Update
    | WaitForTrigger
    | HoldResolve
    | Misconfigured
    | SendEvent
)

# The Events API's name for each status an event sets.
EVENT_ACTIONS = {
    AlertStatus.TRIGGERED: "trigger",
    AlertStatus.ACKNOWLEDGED: "acknowledge",
    AlertStatus.RESOLVED: "resolve",
}


def plan_delivery(
    alert: AlertLike,
    now: datetime | None = None,
    flap_window: timedelta = timedelta(0),
    *,
    read_before_acknowledge: bool = False,
) -> Step:
    """The next PagerDuty call that brings PagerDuty closer to the alert's desired status.

    ``read_before_acknowledge``: an acknowledge is sent only once the incident's status was
    read since the acknowledge was wanted (a route without webhooks hears of a responder's
    resolve no other way, and acknowledging a resolved incident reopens it). Given ``now``, a
    resolve is first held for ``flap_window`` (worker/delivery/flapping.py)."""
    held = resolve_held_until(alert, now, flap_window) if now is not None else None
    if held is not None:
        return HoldResolve(held)
    if alert.backend == BACKEND_EVENTS:
        return plan_event(alert)
    desired = alert.desired_status
    if alert.pagerduty_incident_id is None:
        if desired is AlertStatus.RESOLVED:
            if alert.create_sent_at is None:
                # Resolved before anything was sent: paging someone for an alert that is already
                # over helps nobody. Recorded in the events table, nothing sent.
                return Done("resolved before it was delivered; nothing sent")
            return FindByKey(alert.incident_key, include_resolved=True)
        if alert.title is None:
            return WaitForTrigger()
        if not alert.service_id:
            return Misconfigured("no PagerDuty service id for this alert")
        return Create(
            title=alert.title,
            service_id=alert.service_id,
            incident_key=alert.incident_key,
            urgency=alert.urgency,
            details=alert.details,
            forwarded=alert.forwarded,
        )
    if alert.confirmed_status is None and is_adopted_incident(alert.source, alert.source_alert_id):
        # Opened before the bridge: never touched before it is read, so that an incident on
        # another service is left alone and a resolved one is never acknowledged (reopened).
        return Inspect(alert.pagerduty_incident_id)
    # A confirmed status unknown otherwise: taking it as triggered sends the update, which is
    # harmless (already in that state counts as success); assuming it was there is not.
    wanted = next_update(desired, alert.confirmed_status or AlertStatus.TRIGGERED)
    if wanted is None:
        fields = fields_to_send(alert, None)
        if fields is not None:
            # The status is where it should be: the fields go on their own, moving nothing.
            return Update(alert.pagerduty_incident_id, None, fields)
        return Done(f"incident {alert.pagerduty_incident_id} is {desired.value}")
    if read_before_acknowledge and wanted is AlertStatus.ACKNOWLEDGED and status_unread(alert):
        return Inspect(alert.pagerduty_incident_id, check_service=False)
    return Update(alert.pagerduty_incident_id, wanted, fields_to_send(alert, wanted))


def fields_to_send(alert: AlertLike, status: AlertStatus | None) -> dict[str, Any] | None:
    """The API contact's fields waiting for the incident that go with an update to ``status``.

    None for an incident resolved, or about to be, unless this is the resolve itself: fields
    sent alone to a resolved incident would reassign or escalate what is over (the intake keeps
    none arriving after the resolve). ``resolution`` goes only with the resolve (updateIncident:
    "used only when setting the incident status to resolved")."""
    pending = alert.update_fields
    if not pending:
        return None
    if status is None and (
        alert.desired_status is AlertStatus.RESOLVED
        or alert.confirmed_status is AlertStatus.RESOLVED
    ):
        return None
    if status is AlertStatus.RESOLVED:
        return dict(pending)
    fields = {name: value for name, value in pending.items() if name != "resolution"}
    return fields or None


def status_unread(alert: AlertLike) -> bool:
    """Whether the incident's status is unknown since the alert last fell behind PagerDuty.

    An incident the bridge created in that same stretch (the trigger and the acknowledge
    pending together) is known: nobody saw it before the bridge's create answered.
    """
    since = alert.pending_since
    if since is None:
        return alert.status_read_at is None
    if alert.create_sent_at is not None and alert.create_sent_at >= since:
        return False
    return alert.status_read_at is None or alert.status_read_at < since


def plan_event(alert: AlertLike) -> Step:
    """The next Events API v2 event for an alert.

    Simpler than incidents: the dedup_key makes a repeated trigger join the open alert (so no
    look-up after a lost answer), and PagerDuty drops an acknowledge or resolve for a key it
    does not know. The same rules as for incidents hold: nothing is sent for an alert resolved
    before its trigger was sent, and an acknowledge is never sent once the alert is resolved.
    """
    desired, confirmed = alert.desired_status, alert.confirmed_status
    key = alert.incident_key
    if confirmed is None:
        if desired is AlertStatus.RESOLVED:
            if alert.create_sent_at is None:
                return Done("resolved before it was delivered; nothing sent")
            # The trigger may have landed with its answer lost: resolving an unknown key is
            # dropped by PagerDuty, so this is safe either way.
            return SendEvent(desired, {"event_action": "resolve", "dedup_key": key})
        if alert.event_payload is None:
            return WaitForTrigger()
        return SendEvent(
            AlertStatus.TRIGGERED,
            {**alert.event_payload, "event_action": "trigger", "dedup_key": key},
        )
    wanted = next_update(desired, confirmed)
    if wanted is None:
        return Done(f"alert {key} is {desired.value}")
    return SendEvent(wanted, {"event_action": EVENT_ACTIONS[wanted], "dedup_key": key})


def drain_rank(step: Step) -> int:
    """Where a call goes when more wait than PagerDuty's budget allows (lowest first): what
    ends or quiets a page (acknowledge, resolve, the look-up a resolve needs) before creates,
    then high urgency creates (PagerDuty's default when none is set) before low ones. A stable
    sort keeps the age order within a rank."""
    if isinstance(step, Update) and step.status is None:
        return 1  # fields alone (a reassignment, a priority): after what quiets a page
    if isinstance(step, Update | FindByKey | Inspect):
        return 0
    if isinstance(step, Create):
        return 2 if step.urgency == "low" else 1
    if isinstance(step, SendEvent):
        if step.action is not AlertStatus.TRIGGERED:
            return 0
        # PagerDuty: an event's severity sets the alert's urgency (warning and info are low
        # under the default "based on severity" rule).
        payload = step.event.get("payload")
        severity = payload.get("severity") if isinstance(payload, dict) else None
        return 2 if severity in ("warning", "info") else 1
    return 1


@dataclass(frozen=True, slots=True)
class Schedule:
    """An alert's delivery bookkeeping after a failed call."""

    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str


def schedule_after_failure(
    alert: AlertLike,
    error: PagerDutyError,
    now: datetime,
    *,
    min_backoff: float,
    max_backoff: float,
    give_up_after: float,
) -> Schedule:
    """Retry later, park, or give up (docs/design.md)."""
    message = str(error)
    if isinstance(error, CredentialsError):
        # Not the alert's fault: no attempt spent, never failed for it.
        return Schedule(
            DeliveryState.PARKED, alert.attempts, now + CREDENTIALS_PROBE_INTERVAL, message
        )
    if isinstance(error, RetryableError):
        attempts = alert.attempts + 1
        since = alert.pending_since or now
        if should_give_up((now - since).total_seconds(), give_up_after=give_up_after):
            return Schedule(
                DeliveryState.FAILED,
                attempts,
                None,
                f"gave up after {attempts} attempts: {message}",
            )
        delay = retry_delay(attempts, minimum=min_backoff, maximum=max_backoff)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return Schedule(DeliveryState.PENDING, attempts, now + timedelta(seconds=delay), message)
    return Schedule(DeliveryState.FAILED, alert.attempts + 1, None, message)


def opens_a_page(step: Step) -> bool:
    """Whether ``step`` creates an incident (REST) or triggers an alert (Events API)."""
    return isinstance(step, Create) or (
        isinstance(step, SendEvent) and step.action is AlertStatus.TRIGGERED
    )


def withdrawn_by(step: Step, desired: AlertStatus) -> bool:
    """Whether a call planned as ``step`` is no longer wanted now that the alert wants
    ``desired``: a create or trigger waiting for PagerDuty's budget while the alert resolved.
    Planned again, it becomes a look-up by key at most (its create mark was committed before
    the wait), never a page for an alert that is over."""
    return desired is AlertStatus.RESOLVED and opens_a_page(step)


def calls_in_flight_after(width: int, *, answered: bool, limit: int) -> int:
    """How many calls may go out together next, after a group of ``width`` calls.

    A slow start, as TCP's: a batch's first call goes alone, each group PagerDuty answered
    doubles the next (1, 2, 4, ... up to ``limit``), and a group with a failure that is not an
    answer (5xx, timeout, refused token, 429) brings it back to one. So a PagerDuty that is down,
    or a token it refuses, meets one call per process as with serial calls, and never a group;
    only one that goes down in the middle of a storm's batch can take a whole group's failures.
    """
    return min(width * 2, limit) if answered else 1


def choose_incident(found: Sequence[Incident]) -> Incident | None:
    """Of the incidents PagerDuty lists for an alert cycle's key, the one that cycle made.

    A key names one cycle, but it can come back: once retention has pruned an alert's every
    cycle, a new trigger with the same alert id opens cycle 1 again, with the key of an incident
    resolved long ago. The cycle's own incident is the open one (nothing of ours resolves it
    before we know its id), else the newest (the highest number) when a person resolved it.
    """
    if not found:
        return None
    return max(
        found,
        key=lambda incident: (incident.status != "resolved", incident.number or 0),
    )


K = TypeVar("K")
V = TypeVar("V")


def share_fairly(groups: Sequence[tuple[K, list[V]]], turn: int) -> list[tuple[K, list[V]]]:
    """The calls of several routes as turns of at most ``turn`` calls each, the routes taking
    turns in order, one after the other, each route's own order kept: a route with a long backlog
    cannot hold another's calls back until it is done. One route: one turn with everything
    (its calls keep going out together)."""
    if len(groups) < 2:
        return [(key, list(items)) for key, items in groups if items]
    turns: list[tuple[K, list[V]]] = []
    longest = max(len(items) for _, items in groups)
    for start in range(0, longest, turn):
        turns += [(key, items[start : start + turn]) for key, items in groups if items[start:]]
    return turns
