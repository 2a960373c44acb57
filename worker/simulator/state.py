"""The simulator's store: :class:`SimulatedPagerDuty`, PagerDuty's incidents and the Events API's
alerts in memory, with the counters the control API shows, all under one lock.

Kept in one class (hence the length of this module): every operation, REST or Events, reads and
changes the same counters under that one ``threading.Lock``.
"""

from __future__ import annotations

import random
import string
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, cast

from worker.simulator.events_api import (
    EVENT_ACTIONS,
    Alert,
    AlertDetails,
    EventAction,
    event_outcome,
    parse_event,
)
from worker.simulator.faults import FAULT_KINDS, FaultKind
from worker.simulator.rest import (
    CODE_INVALID_INPUT,
    DEFAULT_PAGE_LIMIT,
    DUPLICATE_INCIDENT_KEY_ERROR,
    MAX_BULK_UPDATE,
    MAX_PAGE_LIMIT,
    OPEN_STATUSES,
    STATUSES,
    Incident,
    IncidentStatus,
    SimulatedError,
    StatusChange,
    invalid_input,
    next_status,
    not_found,
    parse_new_incident,
    parse_update,
)
from worker.simulator.webhooks import API_AGENT, WebhookHub, event_type_of

# ``counts.calls_per_second`` in the state covers this many seconds, at most one entry each.
CALL_RATE_WINDOW_S: Final = 600
_ID_ALPHABET: Final = string.ascii_uppercase + string.digits


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second, as PagerDuty writes its timestamps."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SimulatedPagerDuty:
    """PagerDuty's incidents and rules, in memory, without HTTP. Thread-safe.

    Any service id is taken to exist: the simulator keeps no service registry. The Events API's
    alerts are kept apart: an event never creates, changes or shows an incident.
    """

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow, seed: int | None = None) -> None:
        """``clock`` gives the current time (an aware datetime); ``seed`` makes ids repeatable."""
        self._clock = clock
        # Ids are random (like PagerDuty's) rather than derived from the incident number, so a
        # bridge cannot come to rely on a pattern. The generator is not re-seeded by reset(), so
        # an id held from before a reset is unlikely to name a different incident afterwards.
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._incidents: dict[str, Incident] = {}
        self._by_key: dict[str, list[Incident]] = {}
        # (service id, incident_key) → ids of OPEN incidents. A set, not a single id: reopening
        # an old incident can leave two open incidents with one key on one service.
        self._open_by_service_key: dict[tuple[str, str], set[str]] = {}
        self._next_number = 1
        self._calls: Counter[tuple[str, str, int]] = Counter()
        self._creates = 0
        self._duplicate_creates_refused = 0
        self._reopened = 0
        self._listings_without_incident_key = 0
        self._faults: Counter[FaultKind] = Counter()
        # REST calls being answered now, and the most at once: how many a client has in flight
        self._in_flight = 0
        self._most_in_flight = 0
        # [unix second, calls in it], oldest first; seconds without calls have no entry, so the
        # window never needs more than one entry per second of it.
        self._calls_per_second: deque[list[int]] = deque(maxlen=CALL_RATE_WINDOW_S)
        # Events API: every alert in creation order (resolved ones stay, as history), and the
        # open one per (routing_key, dedup_key). Events never reopen an alert, so one is enough.
        self._alerts: list[Alert] = []
        self._open_alerts: dict[tuple[str, str], Alert] = {}
        self._events_received: Counter[EventAction] = Counter()
        self._triggers_joined = 0
        self._events_dropped: Counter[EventAction] = Counter()
        # v3 webhook subscriptions, and a signed delivery for every incident status change.
        self.webhooks = WebhookHub()

    def reset(self) -> None:
        """Forget every incident, alert and counter (fault counters and call rate included);
        incident and alert numbers start again at 1. Fault settings live in the app's fault
        plan, not here."""
        with self._lock:
            self._incidents.clear()
            self._by_key.clear()
            self._open_by_service_key.clear()
            self._next_number = 1
            self._calls.clear()
            self._creates = 0
            self._duplicate_creates_refused = 0
            self._reopened = 0
            self._listings_without_incident_key = 0
            self._faults.clear()
            self._most_in_flight = self._in_flight
            self._calls_per_second.clear()
            self._alerts.clear()
            self._open_alerts.clear()
            self._events_received.clear()
            self._triggers_joined = 0
            self._events_dropped.clear()
            self.webhooks.clear()

    # ---- PagerDuty operations --------------------------------------------------------------

    def create_incident(self, body: object) -> dict[str, Any]:
        """``POST /incidents``: validate ``{"incident": {...}}``, create, return the incident.

        Refuses (400, code 2001, :data:`DUPLICATE_INCIDENT_KEY_ERROR`) a create whose
        ``incident_key`` matches an open incident on the same service, and counts the refusal.
        An empty ``incident_key`` is treated as none (no de-duplication).
        """
        new = parse_new_incident(body)
        now = self._clock()
        with self._lock:
            if new.incident_key is not None and self._open_by_service_key.get(
                (new.service_id, new.incident_key)
            ):
                self._duplicate_creates_refused += 1
                raise invalid_input(DUPLICATE_INCIDENT_KEY_ERROR)
            incident = Incident(
                id=self._new_id(),
                incident_number=self._next_number,
                title=new.title,
                service_id=new.service_id,
                urgency=new.urgency,
                incident_key=new.incident_key,
                details=new.details,
                created_at=_timestamp(now),
                created_at_ms=now.timestamp() * 1000,
                fields=dict(new.fields),
            )
            incident.history.append(StatusChange(incident.created_at, None, "triggered"))
            self._next_number += 1
            self._creates += 1
            self._incidents[incident.id] = incident
            if incident.incident_key is not None:
                self._by_key.setdefault(incident.incident_key, []).append(incident)
                self._open_by_service_key.setdefault(
                    (incident.service_id, incident.incident_key), set()
                ).add(incident.id)
            shown = incident.to_pagerduty()
            self.webhooks.publish("incident.triggered", shown, API_AGENT)
            return shown

    def update_incident(self, incident_id: str, body: object) -> dict[str, Any]:
        """``PUT /incidents/{id}``: ``{"incident": {"type", "status"?, fields...}}`` → the
        updated incident."""
        if not isinstance(body, dict) or not isinstance(body.get("incident"), dict):
            raise invalid_input("Body must be an object with an 'incident' object")
        status, fields = parse_update(body["incident"], "incident")
        return self._apply_status_updates([(incident_id, status, fields)])[0]

    def update_incidents(self, body: object) -> list[dict[str, Any]]:
        """``PUT /incidents`` (bulk): ``{"incidents": [{"id", "type", "status"?, ...}, ...]}``.

        More than :data:`MAX_BULK_UPDATE` items → 413. PagerDuty does not document what happens
        when one item of a bulk update fails; the simulator is all-or-nothing: it checks every
        item (in order, so an id listed twice sees its first update) and changes nothing if any
        fails.
        """
        if not isinstance(body, dict) or not isinstance(body.get("incidents"), list):
            raise invalid_input("Body must be an object with an 'incidents' list")
        items: list[object] = body["incidents"]
        if len(items) > MAX_BULK_UPDATE:
            raise SimulatedError(
                413,
                "Request Entity Too Large",
                CODE_INVALID_INPUT,
                [f"At most {MAX_BULK_UPDATE} incidents per request; got {len(items)}"],
            )
        if not items:
            raise invalid_input("'incidents' must not be empty")
        updates: list[tuple[str, str | None, dict[str, Any]]] = []
        for index, item in enumerate(items):
            where = f"incidents[{index}]"
            if not isinstance(item, dict):
                raise invalid_input(f"{where} must be an object")
            incident_id = item.get("id")
            if not isinstance(incident_id, str) or not incident_id:
                raise invalid_input(f"{where}.id is required")
            updates.append((incident_id, *parse_update(item, where)))
        return self._apply_status_updates(updates)

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """``GET /incidents/{id}``: the incident, or 404 / 2100."""
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None:
                raise not_found(incident_id)
            return incident.to_pagerduty()

    def list_incidents(
        self,
        *,
        incident_key: str | None = None,
        statuses: Sequence[str] = (),
        date_range: str | None = None,
        service_ids: Sequence[str] = (),
        limit: int = DEFAULT_PAGE_LIMIT,
        offset: int = 0,
        total: bool = False,
    ) -> dict[str, Any]:
        """``GET /incidents``: one page ``{"incidents", "limit", "offset", "more", "total"}``.

        - A missing or empty ``incident_key`` lists every incident, as PagerDuty does; such
          calls are counted (``listings_without_incident_key``) because the bridge must never
          make them.
        - Without ``statuses`` and without ``date_range="all"``, only open incidents are listed.
          This approximates PagerDuty's default window of the last 30 days: the bridge's
          look-ups are of recent incidents, and old resolved ones are what that window hides.
          With ``statuses``, exactly those are listed, whatever the date range.
        - ``limit`` above 100 is lowered to 100; PagerDuty caps classic pagination there.
        - Incidents come in creation order; ``total`` is null unless asked for, as in PagerDuty.
        """
        for status in statuses:
            if status not in STATUSES:
                raise invalid_input(f"statuses[] must be among {', '.join(STATUSES)}")
        if date_range is not None and date_range != "all":
            raise invalid_input("date_range may only be 'all'")
        if limit < 1 or offset < 0:
            raise invalid_input("limit must be >= 1 and offset >= 0")
        limit = min(limit, MAX_PAGE_LIMIT)
        wanted: frozenset[str]
        if statuses:
            wanted = frozenset(statuses)
        elif date_range == "all":
            wanted = frozenset(STATUSES)
        else:
            wanted = OPEN_STATUSES
        services = frozenset(service_ids)
        with self._lock:
            candidates: Iterable[Incident]
            if incident_key:
                candidates = self._by_key.get(incident_key, ())
            else:
                self._listings_without_incident_key += 1
                candidates = self._incidents.values()
            matching = [
                incident
                for incident in candidates
                if incident.status in wanted and (not services or incident.service_id in services)
            ]
            page = [incident.to_pagerduty() for incident in matching[offset : offset + limit]]
        return {
            "incidents": page,
            "limit": limit,
            "offset": offset,
            "more": offset + len(page) < len(matching),
            "total": len(matching) if total else None,
        }

    def enqueue_event(
        self, body: object, *, routing_keys: Collection[str] | None = None
    ) -> dict[str, Any]:
        """``POST /v2/enqueue``: validate and apply one event; return the 202 body
        ``{"status": "success", "message": "Event processed", "dedup_key"}``, or raise
        :class:`InvalidEventError`.

        ``routing_keys``: the accepted routing keys; None accepts any. Alerts are keyed by
        (routing_key, dedup_key); :func:`event_outcome` says what an event does. A dropped event
        is answered 202 like any other, as PagerDuty does, and counted in ``dropped``. A trigger
        without a ``dedup_key`` gets a generated one (a UUID's hex; repeatable with ``seed``).
        """
        event = parse_event(body, routing_keys)
        now = self._clock()
        at = _timestamp(now)
        with self._lock:
            self._events_received[event.action] += 1
            dedup_key = event.dedup_key if event.dedup_key is not None else self._new_dedup_key()
            key = (event.routing_key, dedup_key)
            alert = self._open_alerts.get(key)
            outcome = event_outcome(event.action, None if alert is None else alert.status)
            if outcome == "open":
                alert = Alert(
                    alert_number=len(self._alerts) + 1,
                    routing_key=event.routing_key,
                    dedup_key=dedup_key,
                    details=cast(AlertDetails, event.details),
                    created_at=at,
                    created_at_ms=now.timestamp() * 1000,
                )
                alert.history.append(StatusChange(at, None, "triggered"))
                self._alerts.append(alert)
                self._open_alerts[key] = alert
            elif outcome == "drop":
                self._events_dropped[event.action] += 1
            elif alert is not None:  # every other outcome is about the open alert
                if outcome == "join":
                    alert.triggers_joined += 1
                    self._triggers_joined += 1
                elif outcome == "acknowledge":
                    alert.move_to("acknowledged", at)
                elif outcome == "resolve":
                    alert.move_to("resolved", at, now.timestamp() * 1000)
                    del self._open_alerts[key]
        return {"status": "success", "message": "Event processed", "dedup_key": dedup_key}

    # ---- Bookkeeping and inspection --------------------------------------------------------

    def record_call(self, method: str, route: str, status: int) -> None:
        """Count one HTTP call by method, route template (``/incidents/{id}``) and status code,
        and in the per-second call rate (by the simulator's clock)."""
        second = int(self._clock().timestamp())
        with self._lock:
            self._calls[(method, route, status)] += 1
            if self._calls_per_second and self._calls_per_second[-1][0] == second:
                self._calls_per_second[-1][1] += 1
            else:
                self._calls_per_second.append([second, 1])

    def call_started(self) -> None:
        """A REST call came in: counted until :meth:`call_ended`, for ``most_in_flight``."""
        with self._lock:
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)

    def call_ended(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def record_fault(self, kind: FaultKind) -> None:
        """Count one injected fault (the call itself is counted by :meth:`record_call`)."""
        with self._lock:
            self._faults[kind] += 1

    def state(self) -> dict[str, Any]:
        """A snapshot of every counter, incident and alert; the body of ``GET /_simulator/state``:
        ``{"counts": {...}, "incidents": [...], "events": {"counts": {...}, "alerts": [...]}}``.

        ``counts.faults`` counts injected faults by kind (:data:`FAULT_KINDS`).
        ``counts.most_in_flight`` is the most REST calls the simulator was answering at once
        (a call waiting out ``latency_ms`` is being answered).
        ``counts.calls_per_second`` is ``[{"second": unix seconds, "count": n}, ...]``, oldest
        first, for every call counted in ``counts.calls`` (faulted or not, unknown routes
        included) during the last :data:`CALL_RATE_WINDOW_S` seconds; seconds without calls are
        left out. ``events.counts`` is described at :meth:`counts`. No API key appears anywhere
        in the state; routing keys do, on the alerts they key.
        """
        with self._lock:
            return {
                "counts": self._counts(),
                "incidents": [incident.to_state() for incident in self._incidents.values()],
                "events": {
                    "counts": self._event_counts(),
                    "alerts": [alert.to_state() for alert in self._alerts],
                },
            }

    def counts(self) -> dict[str, Any]:
        """The counters alone, the body of ``GET /_simulator/counts``: the state's ``counts``
        plus ``"events"``, the state's ``events.counts``. No incident or alert is listed, so
        polling it costs little however many there are.

        The events counts: ``received`` (events taken, by action; invalid and fault-refused ones
        are not taken, see ``counts.calls`` and ``counts.faults``), ``alerts_opened``,
        ``triggers_joined``, ``dropped`` (by action) and ``alerts_by_status`` (resolved alerts
        stay, so ``alerts_opened`` is also the number of alerts held).
        """
        with self._lock:
            return {**self._counts(), "events": self._event_counts()}

    def call_count(
        self, method: str | None = None, route: str | None = None, status: int | None = None
    ) -> int:
        """Sum of recorded calls matching every given criterion (None matches anything)."""
        with self._lock:
            return sum(
                count
                for (m, r, s), count in self._calls.items()
                if (method is None or m == method)
                and (route is None or r == route)
                and (status is None or s == status)
            )

    # ---- Internals (call with the lock held where noted) -----------------------------------

    def _counts(self) -> dict[str, Any]:
        """The REST side's counters (see :meth:`state`). Lock held."""
        oldest_second = int(self._clock().timestamp()) - CALL_RATE_WINDOW_S
        by_status = dict.fromkeys(STATUSES, 0)
        for incident in self._incidents.values():
            by_status[incident.status] += 1
        return {
            "calls": [
                {"method": method, "route": route, "status": status, "count": count}
                for (method, route, status), count in sorted(self._calls.items())
            ],
            "creates": self._creates,
            "duplicate_creates_refused": self._duplicate_creates_refused,
            "reopened": self._reopened,
            "listings_without_incident_key": self._listings_without_incident_key,
            "incidents_by_status": by_status,
            "incidents_total": len(self._incidents),
            "faults": {kind: self._faults[kind] for kind in FAULT_KINDS},
            "most_in_flight": self._most_in_flight,
            "calls_per_second": [
                {"second": second, "count": count}
                for second, count in self._calls_per_second
                if second > oldest_second
            ],
        }

    def _event_counts(self) -> dict[str, Any]:
        """The Events API's counters (see :meth:`counts`). Lock held."""
        by_status = dict.fromkeys(STATUSES, 0)
        for alert in self._alerts:
            by_status[alert.status] += 1
        return {
            "received": {action: self._events_received[action] for action in EVENT_ACTIONS},
            "alerts_opened": len(self._alerts),
            "triggers_joined": self._triggers_joined,
            "dropped": {
                action: self._events_dropped[action] for action in ("acknowledge", "resolve")
            },
            "alerts_by_status": by_status,
        }

    def _new_dedup_key(self) -> str:
        """A generated dedup_key, as PagerDuty makes one: a UUID, here as 32 hex digits. Lock
        held (it shares the seeded generator of the ids)."""
        return uuid.UUID(int=self._random.getrandbits(128), version=4).hex

    def _new_id(self) -> str:
        """A fresh id, ``Q`` + 6 uppercase alphanumerics. Lock held."""
        while True:
            incident_id = "Q" + "".join(self._random.choices(_ID_ALPHABET, k=6))
            if incident_id not in self._incidents:
                return incident_id

    def respond(self, incident_id: str, action: str, responder: str) -> dict[str, Any]:
        """A person in PagerDuty's web UI: ``acknowledge``, ``unacknowledge``, ``resolve`` or
        ``reopen`` an incident. Webhooks name ``responder`` as the agent."""
        agent = {"id": "PSIMUSR", "type": "user_reference", "summary": responder}
        if action in ("acknowledge", "resolve"):
            wanted = "acknowledged" if action == "acknowledge" else "resolved"
            return self._apply_status_updates([(incident_id, wanted, {})], agent=agent)[0]
        if action not in ("unacknowledge", "reopen"):
            raise invalid_input(
                f"action must be acknowledge, unacknowledge, resolve or reopen; got {action!r}"
            )
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None:
                raise not_found(incident_id)
            allowed = "acknowledged" if action == "unacknowledge" else "resolved"
            if incident.status != allowed:
                raise invalid_input(f"only a {allowed} incident can be {action}d")
            at = _timestamp(self._clock())
            reopened = action == "reopen"
            incident.history.append(StatusChange(at, incident.status, "triggered", reopened))
            incident.status = "triggered"
            if reopened:
                self._reopened += 1
                if incident.incident_key is not None:
                    self._open_by_service_key.setdefault(
                        (incident.service_id, incident.incident_key), set()
                    ).add(incident.id)
            shown = incident.to_pagerduty()
            event_type = "incident.reopened" if reopened else "incident.unacknowledged"
            self.webhooks.publish(event_type, shown, agent)
            return shown

    def _apply_status_updates(
        self,
        updates: Sequence[tuple[str, str | None, dict[str, Any]]],
        agent: dict[str, Any] = API_AGENT,
    ) -> list[dict[str, Any]]:
        """Check every ``(id, wanted status or None, fields)`` in order, then apply them all,
        or none; a webhook names ``agent`` as who made each status change."""
        with self._lock:
            # Pass 1: plan against tentative statuses, so a failure leaves no partial update.
            tentative: dict[str, IncidentStatus] = {}
            plan: list[tuple[Incident, IncidentStatus, bool, dict[str, Any]]] = []
            for incident_id, wanted, fields in updates:
                incident = self._incidents.get(incident_id)
                if incident is None:
                    raise not_found(incident_id)
                current = tentative.get(incident_id, incident.status)
                new_status, reopened = (
                    next_status(current, wanted) if wanted is not None else (current, False)
                )
                tentative[incident_id] = new_status
                plan.append((incident, new_status, reopened, fields))
            # Pass 2: apply.
            moment = self._clock()
            at = _timestamp(moment)
            for incident, new_status, reopened, fields in plan:
                incident.take_fields(fields)
                if new_status == incident.status and not reopened:
                    continue  # fields alone: no status change, no history entry, no webhook
                was_open = incident.is_open
                event_type = event_type_of(incident.status, new_status, reopened=reopened)
                incident.history.append(StatusChange(at, incident.status, new_status, reopened))
                incident.status = new_status
                incident.resolved_at_ms = (
                    moment.timestamp() * 1000 if new_status == "resolved" else None
                )
                if reopened:
                    self._reopened += 1
                if incident.incident_key is not None and was_open != incident.is_open:
                    open_ids = self._open_by_service_key.setdefault(
                        (incident.service_id, incident.incident_key), set()
                    )
                    if incident.is_open:
                        open_ids.add(incident.id)
                    else:
                        open_ids.discard(incident.id)
                if event_type is not None:
                    self.webhooks.publish(event_type, incident.to_pagerduty(), agent)
            return [incident.to_pagerduty() for incident, _, _, _ in plan]
