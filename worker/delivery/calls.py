"""The PagerDuty calls that carry out an alert's step (:mod:`worker.delivery.policy`).

Functions of a route's clients, with no database and no gate: the reconciler passes each call
through its route's gate (:mod:`worker.delivery.gated_calls`) and records the answers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.delivery.answers import Adopted, Backend, EventSent
from worker.delivery.pacing import RateLimitReading
from worker.delivery.policy import (
    Create,
    FindByKey,
    Inspect,
    SendEvent,
    Step,
    Update,
    choose_incident,
)
from worker.pagerduty import (
    DuplicateIncidentKeyError,
    Incident,
    NewIncident,
    PagerDutyClient,
    PagerDutyError,
    PermanentError,
    RetryableError,
)
from worker.pagerduty.events import EventsClient

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Together:
    """Calls of a batch that may be in flight at once: those of ``pks``, up to ``size`` at a
    time, made by ``send`` (each call's answer, or its error, in order)."""

    pks: frozenset[int]
    size: int
    send: Callable[[list[int]], list[Any]]


def call(step: Step, backend: Backend) -> Incident | EventSent | None:
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
        return client.update_incident(step.incident_id, step.status_name, step.fields)
    raise AssertionError(f"no call for {step!r}")


def calls_together(
    calls: dict[int, Step], pks: list[int], backend: Backend, size: int
) -> Together | None:
    """The calls among ``pks`` that may go out together, if ``size`` (the settings' calls in
    flight) allows more than one: creates on a REST route, events on an Events API route. An
    alert storm is mostly those, and neither depends on another alert's call."""
    if size < 2:
        return None
    if backend.rest is not None:
        return _grouped(calls, pks, size, Create, functools.partial(_create_all, backend.rest))
    if backend.events is not None:
        return _grouped(calls, pks, size, SendEvent, functools.partial(_send_all, backend.events))
    return None


def readings(backend: Backend) -> Callable[[], RateLimitReading | None] | None:
    """Where a route's answers leave their ``ratelimit-*`` headers: REST only. An Events API
    key keeps its configured budget and its 429 handling."""
    return backend.rest.take_rate_limit if backend.rest is not None else None


def group_at(
    admitted: list[tuple[int, Callable[[], T]]], start: int, together: Together | None, width: int
) -> list[tuple[int, Callable[[], T]]]:
    """The calls from ``admitted[start]`` on that go out at once: a run of up to ``width`` that
    ``together`` allows, or the one call at ``start`` alone."""
    if together is None or admitted[start][0] not in together.pks:
        return [admitted[start]]
    group = []
    for made in admitted[start : start + width]:
        if made[0] not in together.pks:
            break
        group.append(made)
    return group


def outcomes(
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
