"""What a PagerDuty call for an alert's step answered, and where a route's calls go.

An answer is the incident a REST call returned (or ``None`` when a look-up found nothing), an
event the Events API took, the call's error, or why the gate sent no call (``Parked``,
``Deferred``). The reconciler records each one (:mod:`worker.delivery.reconcile`).
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.delivery.gate import DeliveryGate
from worker.pagerduty import Incident, PagerDutyClient, PagerDutyError
from worker.pagerduty.events import EventsClient
from worker.settings import Settings
from worker.vocabulary import AlertStatus


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
class Adopted(Incident):
    """An incident an earlier create made, found by its key after PagerDuty refused the
    repeated create as a duplicate."""


Answer = Incident | None | EventSent | PagerDutyError | Parked | Deferred


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


def default_services(settings: Settings) -> frozenset[str]:
    """The default route's services: the configured one and the allow-list."""
    configured = {settings.pagerduty_service_id} if settings.pagerduty_service_id else set()
    return frozenset({*configured, *settings.allowed_service_ids})
