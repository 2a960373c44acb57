"""Turning an event into the alert's desired state (docs/design.md).

An event is not "a call to make" but a change to what PagerDuty should show. Applying it is
idempotent (the event id is recorded) and order-free within a cycle (the desired status only
moves forward); events are placed in cycles by the time the ingress received them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import Delete, Select, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import AlertLike, AlertRecord, utcnow
from models.alert import ALERTS_TABLE, write_back
from models.bulk import (
    built_once,
    insert_rows,
    insert_rows_returning,
    keys_param,
    on_postgresql,
    param_keys_one_of,
    param_one_of,
)
from models.event import ALERT_EVENTS_TABLE
from models.inbox import INBOX_EVENTS_TABLE
from models.namespace import namespace_of
from worker.coscale import occurrence
from worker.delivery.flapping import continues_cycle
from worker.pagerduty.events import dedup_key
from worker.pipeline.message import AlertEventMessage
from worker.settings import get_settings
from worker.vocabulary import DEFAULT_NAMESPACE, AlertStatus, DeliveryState, advance

log = logging.getLogger(__name__)

# An alert changed by an event is reconciled at once by the worker that applied it; the sweeper
# looks again only if that has not finished by then (a crash, a lost message).
SWEEP_GRACE = timedelta(seconds=10)
INTAKE_ATTEMPTS = 5  # concurrent first events for one alert race on the unique constraint


class EventOutcome(StrEnum):
    OPENED = "opened"  # a new cycle (a new incident) for this alert
    ADVANCED = "advanced"  # the desired status moved forward
    DETAILS = "details"  # the trigger's title/details arrived after another event
    UNCHANGED = "unchanged"  # nothing new (a repeated trigger, a second resolve)
    LATE = "late"  # belongs to a cycle already resolved; recorded, nothing to send
    # A trigger posted again after its cycle resolved (the same CoScale event: its date, time
    # and message); recorded, nothing to send.
    REPOSTED = "reposted"
    DUPLICATE = "duplicate"  # this very event was applied before (a redelivered message)
    # A responder already did it in PagerDuty (worker/pipeline/responders.py): recorded,
    # nothing to send.
    RESPONDED = "responded"
    REFIRED = "refired"  # fired again while its resolve was held: the same cycle goes on
    # An API-contact update's fields (no new status) to send on to the incident.
    FIELDS = "fields"


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    outcome: EventOutcome
    alert_pk: int | None
    needs_delivery: bool = False  # the alert now wants something PagerDuty does not show


class Claim(Protocol):
    """Whoever delivers a batch's alerts next, given its say inside the transaction that
    applies the batch (the reconciler's :class:`~worker.delivery.claim.BatchClaim`).

    ``take`` sees the alerts that now need a delivery, locked or not yet inserted, in the order
    their events came, and may set what a reconcile's first step sets (:data:`CLAIM_COLUMNS`):
    those are stored with the events, in the same statements, instead of by a transaction of
    their own. ``kept`` follows only once that transaction committed; without it (the batch was
    applied again one event at a time after a conflict) nothing ``take`` did was stored.
    """

    def take(self, alerts: list[AlertRecord]) -> None: ...

    def kept(self) -> None: ...


# What a claim may set in an alert (its lease, and the mark of a create about to be sent).
CLAIM_COLUMNS = ("lease_owner", "lease_expires_at", "create_sent_at")


def incident_key(source: str, alert_id: str, cycle: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The deterministic PagerDuty ``incident_key`` of one alert cycle of one bridge.

    Deterministic so that a create retried after a lost answer collides with the incident the
    first attempt made, and PagerDuty refuses the duplicate instead of paging twice.
    """
    return dedup_key(source, alert_id, cycle, namespace)


def plan_event(
    latest: AlertLike | None,
    event: AlertEventMessage,
    triggers_seen: Collection[str] = (),
) -> EventOutcome:
    """What ``event`` does to the alert whose newest cycle is ``latest`` (pure).

    ``triggers_seen``: the CoScale events (:func:`~worker.coscale.occurrence`) that opened the
    alert's cycles. A trigger after the resolve re-opens the alert, unless it reports one of
    those events again: then it is a re-post (a proxy's retry, a replay by hand), and an
    incident opened for it would never be resolved. A trigger without a date or time (a
    hand-written Format) cannot be told apart from a re-fire, and re-opens.
    """
    if latest is None:
        return EventOutcome.OPENED
    if latest.cycle > 1 and event.received_at < latest.opened_at:
        return EventOutcome.LATE  # it belongs to an earlier cycle, resolved already
    desired = latest.desired_status
    if event.action is None:
        # Fields alone (the API contact's update with no status). For an incident resolved, or
        # being resolved, they are recorded and not sent: PagerDuty would take some (a title)
        # but a reassignment or an escalation must not page anyone about what is over.
        return EventOutcome.LATE if desired is AlertStatus.RESOLVED else EventOutcome.FIELDS
    if (
        event.action is not AlertStatus.TRIGGERED
        and latest.responder_at is not None
        and event.received_at <= latest.responder_at
    ):
        # A responder changed the incident after CoScale said this: acting on it now could
        # undo them (acknowledge a reopened incident, resolve it again).
        return EventOutcome.LATE
    if desired is AlertStatus.RESOLVED and latest.resolve_received_at is None:
        # A responder resolved it and CoScale has not: CoScale's resolve is recorded (a trigger
        # after it opens a new cycle); its repeated trigger sends nothing.
        return EventOutcome.RESPONDED
    if event.action is AlertStatus.RESOLVED:
        return EventOutcome.UNCHANGED if desired is AlertStatus.RESOLVED else EventOutcome.ADVANCED
    if desired is AlertStatus.RESOLVED:
        if event.action is not AlertStatus.TRIGGERED:
            # An acknowledge for a resolved alert is late (CoScale acknowledged before it
            # resolved, and the queue or CoScale delivered it after): only a trigger re-opens.
            return EventOutcome.LATE
        resolved_at = latest.resolve_received_at
        if resolved_at is None or event.received_at > resolved_at:
            seen = occurrence(event.fields)
            if seen is not None and seen in triggers_seen:
                return EventOutcome.REPOSTED
            return EventOutcome.OPENED  # CoScale fired the alert again after resolving it
        if not latest.title_from_trigger:
            return EventOutcome.DETAILS  # a late trigger: keep its text, send nothing
        return EventOutcome.LATE
    if advance(desired, event.action) is not desired:
        return EventOutcome.ADVANCED
    if _takes_trigger_details(latest, event):
        return EventOutcome.DETAILS
    # The status is already wanted (an acknowledge again, with a new priority): the fields go.
    return EventOutcome.FIELDS if event.update_fields else EventOutcome.UNCHANGED


def _takes_trigger_details(alert: AlertLike, event: AlertEventMessage) -> bool:
    # The trigger's text wins over an acknowledge's, but only until the incident exists.
    return (
        event.action is AlertStatus.TRIGGERED
        and not alert.title_from_trigger
        and alert.create_sent_at is None
        and event.title is not None
    ) or (alert.title is None and event.title is not None)


def _fill_details(alert: AlertLike, event: AlertEventMessage) -> None:
    if not _takes_trigger_details(alert, event):
        return
    alert.title = event.title
    alert.details = event.details
    alert.urgency = event.urgency
    alert.service_id = event.service_id or alert.service_id
    alert.event_payload = event.event_payload or alert.event_payload
    alert.forwarded = event.forwarded or alert.forwarded
    if event.incident_key and alert.create_sent_at is None:
        # Nothing sent yet: the create goes out with the client's key.
        alert.incident_key = event.incident_key
    alert.title_from_trigger = event.action is AlertStatus.TRIGGERED


# Either one decides who is paged (createIncident: assignments "Cannot be specified if an
# escalation policy is given"): the later update's choice drops the earlier's other one.
_EXCLUSIVE = {"assignments": "escalation_policy", "escalation_policy": "assignments"}


def merge_update_fields(
    pending: dict[str, Any] | None, fields: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The fields waiting for PagerDuty after an update's ``fields`` arrived (pure): the later
    value of a field wins, and assignments and an escalation policy never wait together."""
    if not fields:
        return pending
    merged = dict(pending or {})
    for name in fields:
        if name in _EXCLUSIVE:
            merged.pop(_EXCLUSIVE[name], None)
    merged.update(fields)
    return merged


def _take_update_fields(alert: AlertLike, event: AlertEventMessage) -> None:
    alert.update_fields = merge_update_fields(alert.update_fields, event.update_fields)


def _mark_pending(alert: AlertLike, now: datetime) -> None:
    if alert.delivery_state is not DeliveryState.PENDING or alert.pending_since is None:
        alert.attempts = 0
        alert.pending_since = now
    alert.delivery_state = DeliveryState.PENDING
    alert.next_attempt_at = now + SWEEP_GRACE
    alert.last_error = None


def _open_cycle(event: AlertEventMessage, cycle: int, now: datetime, namespace: str) -> AlertRecord:
    alert = AlertRecord(
        namespace=namespace,
        source=event.source,
        source_alert_id=event.alert_id,
        cycle=cycle,
        incident_key=event.incident_key
        or incident_key(event.source, event.alert_id, cycle, namespace),
        service_id=event.service_id,
        # An update with fields alone wants no status of its own.
        desired_status=event.action or AlertStatus.TRIGGERED,
        delivery_state=DeliveryState.PENDING,
        attempts=0,
        title_from_trigger=False,
        trigger_occurrence=(
            occurrence(event.fields) if event.action is AlertStatus.TRIGGERED else None
        ),
        opened_at=event.received_at,
        resolve_received_at=(event.received_at if event.action is AlertStatus.RESOLVED else None),
        route=event.route,
        backend=event.backend,
        credential_id=event.credential_id,
        event_payload=event.event_payload,
    )
    if event.incident_id:
        # The API contact named a PagerDuty incident opened before the bridge: adopt it, so
        # the acknowledge/resolve still reaches it. Its current status is unknown.
        alert.pagerduty_incident_id = event.incident_id
        alert.create_sent_at = event.received_at
    _fill_details(alert, event)
    _take_update_fields(alert, event)
    _mark_pending(alert, now)
    return alert


def _apply(session: Session, event: AlertEventMessage, now: datetime) -> AppliedEvent:
    """One event on its own (the fallback after a conflict): the batch path with one event."""
    return _apply_batch(session, [event], now)[0]


@built_once
def _forget_inbox_statement(postgres: bool) -> Delete:
    # On the table, not the ORM entity: no session to synchronise (and no RETURNING for it).
    inbox = INBOX_EVENTS_TABLE.c
    return delete(INBOX_EVENTS_TABLE).where(
        inbox.namespace == bindparam("namespace"),
        param_one_of(inbox.event_id, "event_ids", postgres),
    )


def _forget_inbox(session: Session, event_ids: list[str]) -> None:
    # In the same transaction as the apply: an event is either still in the inbox (and the
    # sweeper will apply it) or applied, never neither.
    session.execute(
        _forget_inbox_statement(session),
        {"namespace": namespace_of(session), "event_ids": event_ids},
    )


def apply_event(
    sessions: sessionmaker[Session], event: AlertEventMessage, now: datetime
) -> AppliedEvent:
    """Record ``event`` and fold it into its alert's desired state, in one transaction."""
    for attempt in range(1, INTAKE_ATTEMPTS + 1):
        try:
            with sessions.begin() as session:
                applied = _apply(session, event, now)
                _forget_inbox(session, [event.event_id])
        except IntegrityError:
            # Another worker opened the same cycle, or applied this same event, first.
            if attempt == INTAKE_ATTEMPTS:
                raise
            continue
        log.info(
            "event %s %s alert=%s:%s outcome=%s",
            event.event_id,
            event.action_name,
            event.source,
            event.alert_id,
            applied.outcome.value,
        )
        return applied
    raise AssertionError("unreachable")


def apply_events(
    sessions: sessionmaker[Session],
    events: list[AlertEventMessage],
    now: datetime,
    *,
    claim: Claim | None = None,
) -> list[AppliedEvent]:
    """Apply a batch of events in one transaction, in the order given.

    Set-based: a fixed number of statements for the whole batch (which events were seen
    before, the latest cycle of every alert touched, the new cycles, the timeline rows, the
    inbox rows), not a few per event; that is what makes an alert storm cheap. If two workers
    race on a new alert's first cycle (a unique-constraint conflict), the batch is applied
    again one event at a time, each with its own retries, and ``claim`` is not kept.
    """
    if not events:
        return []
    try:
        with sessions.begin() as session:
            applied = _apply_batch(session, events, now, claim)
            _forget_inbox(session, [event.event_id for event in events])
    except IntegrityError:
        return [apply_event(sessions, event, now) for event in events]
    if claim is not None:
        claim.kept()
    for event, result in zip(events, applied, strict=True):
        log.info(
            "event %s %s alert=%s:%s outcome=%s",
            event.event_id,
            event.action_name,
            event.source,
            event.alert_id,
            result.outcome.value,
        )
    return applied


# Rows per IN (...) list: well under every driver's parameter limit (SQLite's is 32,766).
_IN_CHUNK = 500

AlertKey = tuple[str, str]  # (source, source alert id)


@built_once
def _seen_events_statement(postgres: bool) -> Select[str, int | None]:
    events = ALERT_EVENTS_TABLE.c
    return select(events.event_id, events.alert_pk).where(
        param_one_of(events.event_id, "event_ids", postgres)
    )


def _seen_events(session: Session, event_ids: list[str]) -> dict[str, int | None]:
    """Events of this batch already applied (redelivered messages), with their alert."""
    seen: dict[str, int | None] = {}
    statement = _seen_events_statement(session)
    for start in range(0, len(event_ids), _IN_CHUNK):
        rows = session.execute(statement, {"event_ids": event_ids[start : start + _IN_CHUNK]})
        seen.update({event_id: alert_pk for event_id, alert_pk in rows if event_id})
    return seen


@built_once
def _latest_cycles_statement(postgres: bool) -> Select[Any]:
    alerts = ALERTS_TABLE.c
    return (
        select(*ALERTS_TABLE.columns)
        .where(
            alerts.namespace == bindparam("namespace"),
            param_keys_one_of((alerts.source, alerts.source_alert_id), "keys", postgres),
        )
        .order_by(alerts.source, alerts.source_alert_id, alerts.cycle.desc())
        .with_for_update()
    )


def _latest_cycles(
    session: Session, keys: list[AlertKey], triggers_seen: dict[AlertKey, set[str]]
) -> dict[AlertKey, AlertRecord]:
    """The newest cycle of each alert, locked (every cycle of it is), as a record the batch
    decides on and write_back stores. Sorted, so concurrent batches lock rows in one order
    and cannot deadlock on each other. The CoScale event that opened each cycle goes into
    ``triggers_seen``."""
    latest: dict[AlertKey, AlertRecord] = {}
    statement = _latest_cycles_statement(session)
    postgres = on_postgresql(session)
    namespace = namespace_of(session)
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        params = {"namespace": namespace, **keys_param("keys", chunk, 2, postgres)}
        rows = session.execute(statement, params).mappings()
        for row in rows:
            key = (row["source"], row["source_alert_id"])
            if row["trigger_occurrence"] is not None:
                triggers_seen.setdefault(key, set()).add(row["trigger_occurrence"])
            if key not in latest:
                latest[key] = AlertRecord.of_row(row)
    return latest


# What applying an event may change in a stored cycle; the rest is the reconcile's.
_INTAKE_COLUMNS = (
    "desired_status",
    "resolve_received_at",
    "title",
    "details",
    "urgency",
    "service_id",
    "event_payload",
    "forwarded",
    "update_fields",
    "incident_key",
    "title_from_trigger",
    "trigger_occurrence",
    "delivery_state",
    "attempts",
    "pending_since",
    "next_attempt_at",
    "last_error",
)
# Outcomes that change a stored cycle (an OPENED one is inserted whole).
_CHANGED = frozenset(
    {
        EventOutcome.ADVANCED,
        EventOutcome.DETAILS,
        EventOutcome.RESPONDED,
        EventOutcome.REFIRED,
        EventOutcome.FIELDS,
    }
)


def _apply_batch(
    session: Session, events: list[AlertEventMessage], now: datetime, claim: Claim | None = None
) -> list[AppliedEvent]:
    seen = _seen_events(session, [event.event_id for event in events])
    keys = sorted({(event.source, event.alert_id) for event in events})
    triggers_seen: dict[AlertKey, set[str]] = {}
    latest: dict[AlertKey, AlertRecord] = _latest_cycles(session, keys, triggers_seen)
    namespace = namespace_of(session)
    # (event, its alert (maybe not stored yet), outcome, needs delivery), in batch order.
    decided: list[tuple[AlertEventMessage, AlertRecord | None, EventOutcome, bool]] = []
    opened: list[AlertRecord] = []
    for event in events:
        if event.event_id in seen:
            decided.append((event, None, EventOutcome.DUPLICATE, True))
            continue
        seen[event.event_id] = None  # the same event twice in one batch
        key = (event.source, event.alert_id)
        seen_here = triggers_seen.setdefault(key, set())
        alert, outcome, needs_delivery = _decide(latest.get(key), event, now, namespace, seen_here)
        if alert is not None and outcome is EventOutcome.OPENED:
            opened.append(alert)
            latest[key] = alert
        if alert is not None and alert.trigger_occurrence is not None:
            seen_here.add(alert.trigger_occurrence)
        decided.append((event, alert, outcome, needs_delivery))
    if claim is not None:
        # Before the writes: a new cycle is inserted, and a stored one written back, with
        # whatever the claim set.
        wanting = {
            id(alert): alert
            for _, alert, outcome, needs_delivery in decided
            if alert is not None and needs_delivery and outcome is not EventOutcome.DUPLICATE
        }
        claim.take(list(wanting.values()))
    _insert_cycles(session, opened)
    new = {id(alert) for alert in opened}
    changed = {
        id(alert): alert
        for _, alert, outcome, _ in decided
        if alert is not None and outcome in _CHANGED and id(alert) not in new
    }
    columns = _INTAKE_COLUMNS + CLAIM_COLUMNS if claim is not None else _INTAKE_COLUMNS
    write_back(session, changed.values(), columns, now)
    timeline = [
        {
            "event_id": event.event_id,
            "alert_pk": alert.id if alert is not None else None,
            "source": event.source,
            "source_alert_id": event.alert_id,
            "kind": "received",
            "action": event.action_name,
            "outcome": outcome.value,
            # Which of PagerDuty's fields the update carried (their values go to PagerDuty).
            "detail": _fields_named(event),
            "received_at": event.received_at,
            "payload": event.fields or None,
            "created_at": utcnow(),
        }
        for event, alert, outcome, _ in decided
        if outcome is not EventOutcome.DUPLICATE
    ]
    insert_rows(session, ALERT_EVENTS_TABLE, timeline)
    return [
        AppliedEvent(
            outcome,
            seen.get(event.event_id) if outcome is EventOutcome.DUPLICATE else _pk(alert),
            needs_delivery,
        )
        for event, alert, outcome, needs_delivery in decided
    ]


def _fields_named(event: AlertEventMessage) -> str | None:
    if not event.update_fields:
        return None
    return "with " + ", ".join(sorted(event.update_fields))


def _insert_cycles(session: Session, alerts: list[AlertRecord]) -> None:
    """Insert the batch's new cycles in one INSERT ... RETURNING and give each its id.

    Core, not the session: the cycles are new and complete (a later event of the same batch
    has already been folded into them), so the unit of work has nothing to track, and adding
    them as ORM objects cost more CPU than the rest of applying their events.
    """
    if not alerts:
        return
    ids = insert_rows_returning(
        session,
        ALERTS_TABLE,
        [alert.column_values() for alert in alerts],
        returning="id",
        key=("namespace", "source", "source_alert_id", "cycle"),
    )
    for alert, pk in zip(alerts, ids, strict=True):
        alert.id = pk


def _flap_window() -> timedelta:
    return timedelta(seconds=get_settings().flap_window)


def _pk(alert: AlertLike | None) -> int | None:
    return alert.id if alert is not None else None


def _decide(
    latest: AlertRecord | None,
    event: AlertEventMessage,
    now: datetime,
    namespace: str,
    triggers_seen: Collection[str] = (),
) -> tuple[AlertRecord | None, EventOutcome, bool]:
    """Fold ``event`` into the alert whose newest cycle is ``latest``: (the alert it belongs
    to, a new cycle when OPENED, not yet added to the session; the outcome; whether the alert
    now needs a delivery)."""
    if latest is not None and continues_cycle(latest, event, _flap_window()):
        # A re-fire while the resolve is held (worker/delivery/flapping.py): the same cycle.
        latest.desired_status = AlertStatus.TRIGGERED
        _mark_pending(latest, now)
        return latest, EventOutcome.REFIRED, True
    outcome = plan_event(latest, event, triggers_seen)
    if outcome is EventOutcome.OPENED:
        cycle = latest.cycle + 1 if latest else 1
        return _open_cycle(event, cycle, now, namespace), outcome, True
    if latest is not None and outcome is EventOutcome.ADVANCED and event.action is not None:
        latest.desired_status = advance(latest.desired_status, event.action)
        if event.action is AlertStatus.RESOLVED:
            latest.resolve_received_at = event.received_at
        _fill_details(latest, event)
        _take_update_fields(latest, event)
        _mark_pending(latest, now)
        return latest, outcome, True
    if latest is not None and outcome is EventOutcome.FIELDS:
        _take_update_fields(latest, event)
        _mark_pending(latest, now)
        return latest, outcome, True
    if latest is not None and outcome is EventOutcome.RESPONDED:
        if event.action is AlertStatus.RESOLVED:
            latest.resolve_received_at = event.received_at
        return latest, outcome, False
    if latest is not None and outcome is EventOutcome.DETAILS:
        _fill_details(latest, event)
        if event.action is AlertStatus.TRIGGERED and latest.trigger_occurrence is None:
            # The cycle opened with an acknowledge; its trigger names the CoScale event.
            latest.trigger_occurrence = occurrence(event.fields)
        # A trigger's text for an alert already resolved is kept for the record only.
        needs_delivery = latest.desired_status is not AlertStatus.RESOLVED
        if needs_delivery:
            _mark_pending(latest, now)
        return latest, outcome, needs_delivery
    return latest, outcome, False
