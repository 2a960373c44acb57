"""The alert vocabulary: what CoScale asks for, and where a delivery stands.

Pure functions only; the reconcile loop and the ingress both decide with these.
"""

from __future__ import annotations

from enum import StrEnum

from worker.errors import InvalidEvent

# PAGERBRIDGE_NAMESPACE's default: the namespace of every row stored before bridges had one.
DEFAULT_NAMESPACE = "pagerbridge"


class AlertStatus(StrEnum):
    """An incident's status, ordered: an alert's desired status only ever moves forward."""

    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {AlertStatus.TRIGGERED: 0, AlertStatus.ACKNOWLEDGED: 1, AlertStatus.RESOLVED: 2}


class DeliveryState(StrEnum):
    """Where PagerDuty stands relative to what the alert wants."""

    PENDING = "pending"  # PagerDuty is behind; a worker will (re)try at next_attempt_at
    DELIVERED = "delivered"  # PagerDuty confirmed the desired status (or nothing was owed)
    PARKED = "parked"  # waiting without spending attempts (credentials refused)
    FAILED = "failed"  # given up: permanent error, or retried past the give-up age


# CoScale documents `triggered|acknowledged|resolved`; people writing the Format by hand also
# use the verbs, in any case.
_ACTIONS = {
    "triggered": AlertStatus.TRIGGERED,
    "trigger": AlertStatus.TRIGGERED,
    "acknowledged": AlertStatus.ACKNOWLEDGED,
    "acknowledge": AlertStatus.ACKNOWLEDGED,
    "resolved": AlertStatus.RESOLVED,
    "resolve": AlertStatus.RESOLVED,
}


def parse_action(text: str) -> AlertStatus:
    """CoScale's ``{ACTION}`` (or a verb form, any case, surrounding blanks ignored)."""
    status = _ACTIONS.get(text.strip().lower())
    if status is None:
        raise InvalidEvent(
            f"unknown action {text[:40]!r}: expected triggered, acknowledged or resolved",
            field="action",
        )
    return status


def advance(current: AlertStatus, wanted: AlertStatus) -> AlertStatus:
    """The desired status after an event: the later of the two, never backwards."""
    return wanted if wanted.rank > current.rank else current


def next_update(desired: AlertStatus, confirmed: AlertStatus) -> AlertStatus | None:
    """The status to send to move an existing incident from ``confirmed`` towards ``desired``.

    ``None`` when PagerDuty is already there. Once the alert is resolved we send the resolve
    straight away, never an acknowledge first: acknowledging a resolved incident reopens it
    (PagerDuty changelog 2025-09-18), and an acknowledge racing a resolve could land second.
    """
    if confirmed.rank >= desired.rank:
        return None
    return desired
