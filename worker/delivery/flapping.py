"""Flap damping, as pure functions: an alert that resolves and fires again within
``PAGERBRIDGE_FLAP_WINDOW`` seconds pages once, not once per flap.

A resolve of an alert PagerDuty knows is held for the window before it is sent. A trigger that
comes within it continues the same alert cycle (the same incident, the same ``incident_key``):
the held resolve is never sent and the incident stays open. After the window the resolve goes;
a trigger after that opens a new cycle, a new incident, as before.

A resolve for an alert whose create was never sent still sends nothing, at once: there is no
page to keep open. An acknowledge is never held.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from models import AlertLike
from worker.pipeline.message import AlertEventMessage
from worker.vocabulary import AlertStatus


def resolve_held_until(alert: AlertLike, now: datetime, window: timedelta) -> datetime | None:
    """When the resolve ``alert`` wants may be sent, if that is later than ``now``; else None
    (nothing held: no resolve wanted, nothing sent to resolve, or the window is over)."""
    if window <= timedelta(0) or alert.desired_status is not AlertStatus.RESOLVED:
        return None
    if alert.confirmed_status is AlertStatus.RESOLVED or alert.resolve_received_at is None:
        return None
    if alert.pagerduty_incident_id is None and alert.create_sent_at is None:
        return None  # never paged: the resolve sends nothing, at once
    until = alert.resolve_received_at + window
    return until if until > now else None


def continues_cycle(latest: AlertLike, event: AlertEventMessage, window: timedelta) -> bool:
    """Whether ``event`` is a re-fire within the window of a resolve not sent yet: the same
    cycle goes on, triggered again, and its held resolve is dropped."""
    if window <= timedelta(0) or event.action is not AlertStatus.TRIGGERED:
        return False
    if latest.desired_status is not AlertStatus.RESOLVED:
        return False
    if latest.confirmed_status is AlertStatus.RESOLVED:
        return False  # PagerDuty resolved the incident: a new page is a new cycle
    resolved_at = latest.resolve_received_at
    if resolved_at is None:
        return False
    return resolved_at < event.received_at <= resolved_at + window
