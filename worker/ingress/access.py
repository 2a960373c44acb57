"""Who may update which incident through the PagerDuty-shaped API, and how often.

An ingress token reaches only its own route's incidents: the bridge's ids are looked up (the
route that created each is recorded with it) and an id of another route is answered as if it did
not exist. An id the bridge did not mint names an incident opened before the bridge took over:
forwarding an update to it is off by default, since it would spend a REST token that reaches the
whole account (docs/security.md).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Alert, InboxEvent
from models.namespace import namespace_of
from worker.pipeline.message import BRIDGE_ID_PREFIX, DEFAULT_ROUTE, SOURCE_API, is_bridge_id

__all__ = ["BRIDGE_ID_PREFIX", "is_bridge_id"]


def mint_bridge_id() -> str:
    return BRIDGE_ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Caller:
    """What a presented ingress token may reach: the routes it is listed on (``"default"`` for
    ``PAGERBRIDGE_INGRESS_TOKENS``), and which of those send through the REST API."""

    routes: frozenset[str]
    rest_routes: frozenset[str]
    # The token's non-reversible id: what per-token limits count by.
    key: str
    # ``api --insecure-no-auth``: every route, no token.
    anyone: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    incident_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """An update request's ids sorted: each bridge id with its route, each foreign id with the
    REST route it is forwarded through, and what was refused (then nothing is accepted)."""

    bridge: dict[str, str]
    foreign: dict[str, str]
    refused: list[Refusal]


def plan_updates(
    ids: Sequence[str],
    caller: Caller,
    known: dict[str, str],
    *,
    forward_foreign: bool,
    foreign_allowance: int,
) -> UpdatePlan:
    """Sort ``ids`` by what ``caller`` may do with them. ``known`` maps the bridge ids that
    exist to their route; ``foreign_allowance`` is how many foreign ids the caller may still
    forward (per request and per minute, whichever is less). Pure: the caller looks up ``known``
    and counts the allowance."""
    bridge: dict[str, str] = {}
    foreign: dict[str, str] = {}
    refused: list[Refusal] = []
    for incident_id in dict.fromkeys(ids):
        if is_bridge_id(incident_id):
            route = known.get(incident_id)
            if route is None or not (caller.anyone or route in caller.routes):
                # Another route's incident is answered as one that does not exist.
                refused.append(Refusal(incident_id, 404, "no such incident"))
            else:
                bridge[incident_id] = route
            continue
        if not forward_foreign:
            refused.append(
                Refusal(
                    incident_id,
                    404,
                    "not an incident the bridge created; forwarding updates to other "
                    "incidents is off (PAGERBRIDGE_FORWARD_FOREIGN_UPDATES)",
                )
            )
            continue
        through = _rest_route_for(caller)
        if through is None:
            refused.append(
                Refusal(
                    incident_id,
                    403,
                    "this token's routes send Events API events: only a REST route's token "
                    "may update an incident the bridge did not create",
                )
            )
        elif len(foreign) >= foreign_allowance:
            refused.append(
                Refusal(
                    incident_id,
                    429,
                    "too many updates to incidents the bridge did not create "
                    "(PAGERBRIDGE_FOREIGN_UPDATES_PER_MINUTE, per request at most "
                    "PAGERBRIDGE_FOREIGN_UPDATES_PER_REQUEST)",
                )
            )
        else:
            foreign[incident_id] = through
    return UpdatePlan(bridge, foreign, refused)


def _rest_route_for(caller: Caller) -> str | None:
    """The one REST route a foreign update goes through: the default route's if the token is
    a default token, else the token's REST route (the alphabetically first, if several)."""
    if DEFAULT_ROUTE in caller.rest_routes:
        return DEFAULT_ROUTE
    return min(caller.rest_routes) if caller.rest_routes else None


def bridge_incident_routes(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """The route of each bridge id that exists: in the inbox (accepted, not yet applied) or in
    the alerts table. The inbox is read first: an event applied between the two reads leaves
    the inbox and enters the alerts table in one transaction, so it is seen in one of them."""
    wanted = [incident_id for incident_id in ids if is_bridge_id(incident_id)]
    if not wanted:
        return {}
    found: dict[str, str] = {}
    namespace = namespace_of(session)
    alert_id = InboxEvent.message["alert_id"].as_string()
    inbox = select(InboxEvent.message).where(
        InboxEvent.namespace == namespace, alert_id.in_(wanted)
    )
    for message in session.scalars(inbox).all():
        if message.get("source") == SOURCE_API:
            found[str(message["alert_id"])] = str(message.get("route") or DEFAULT_ROUTE)
    rows = session.execute(
        select(Alert.source_alert_id, Alert.route).where(
            Alert.namespace == namespace,
            Alert.source == SOURCE_API,
            Alert.source_alert_id.in_(wanted),
        )
    ).all()
    for incident_id, route in rows:
        found[incident_id] = route
    return found


class SlidingWindow:
    """Events per key in the last ``window`` seconds, for one process: how many foreign
    updates a token made, how many failed sign-ins an address had."""

    def __init__(self, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._seen: dict[str, deque[float]] = {}
        self._now = clock

    def count(self, key: str) -> int:
        seen = self._seen.get(key)
        if not seen:
            return 0
        horizon = self._now() - self.window
        while seen and seen[0] <= horizon:
            seen.popleft()
        if not seen:
            del self._seen[key]
            return 0
        return len(seen)

    def add(self, key: str, times: int = 1) -> None:
        now = self._now()
        self._seen.setdefault(key, deque()).extend([now] * times)
        if len(self._seen) > 10_000:  # a bound on memory: forget the quietest keys
            for stale in [k for k in list(self._seen) if self.count(k) == 0]:
                self._seen.pop(stale, None)

    def retry_after(self, key: str) -> float:
        """Seconds until the oldest event of ``key`` leaves the window."""
        seen = self._seen.get(key)
        if not seen:
            return 0.0
        return max(0.0, seen[0] + self.window - self._now())
