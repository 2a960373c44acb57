"""An alert storm at PagerDuty's own limits: what the storm phase of bench/run.py measures.

PagerDuty allows 960 REST calls a minute per API key and about 120 events a minute per Events
API integration key (docs/pagerduty.md); the simulator enforces both as token buckets of a
sixth of the minute's figure, with 150 ms an answer. No sender can have N incidents sooner than
(N - the bucket's burst) / the rate: the *physical limit*. The figures here are pure functions
of the simulator's state, so the phase only sends and waits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# PagerDuty's figures (docs/pagerduty.md): calls a minute per REST API key, events a minute per
# Events API integration key, and the latency of a real answer.
REST_LIMIT_PER_MINUTE = 960
EVENTS_LIMIT_PER_MINUTE = 120
LATENCY_MS = 150
# Connections that send a storm's webhooks (or Alertmanager's alerts).
SENDERS = 16


def bucket_burst(per_minute: float) -> int:
    """The simulator's bucket: ten seconds' worth, rounded up (FaultSettings.limit_for)."""
    return math.ceil(per_minute / 6)


def physical_limit_s(alerts: int, per_minute: float, buckets: int = 1) -> float:
    """Seconds no sender can beat: the first ``burst`` calls of each bucket go at once, the
    rest at the refill rate. ``buckets``: credentials sharing the storm (one REST key for the
    bridge; Alertmanager's integration keys)."""
    burst = bucket_burst(per_minute) * buckets
    return max(0, alerts - burst) / (per_minute * buckets / 60)


def events_keys_for(per_minute: float) -> int:
    """How many Events API integration keys give Alertmanager the budget of one REST key: the
    same calls a minute, so the two sides meet the same physical limit."""
    return max(1, round(per_minute / EVENTS_LIMIT_PER_MINUTE))


def alert_of_incident_key(incident_key: str | None) -> str | None:
    """The alert id in the bridge's ``pagerbridge/{source}/{alert_id}/{cycle}``."""
    if not incident_key or not incident_key.startswith("pagerbridge/"):
        return None
    parts = incident_key.split("/")
    return parts[-2] if len(parts) >= 4 else None


def alert_in_summary(summary: str, ids: set[str]) -> str | None:
    """Alertmanager's summary lists the group's label values separated by spaces (its default
    ``__subject`` template, every label a group label under ``group_by: ['...']``)."""
    for word in summary.replace("(", " ").replace(")", " ").split():
        if word in ids:
            return word
    return None


@dataclass(frozen=True, slots=True)
class Made:
    """One incident (or Events API alert) of the storm, by the simulator's clock (ms)."""

    alert_id: str
    created_ms: float
    resolved_ms: float | None


def bridge_incidents(state: Mapping[str, Any], ids: set[str]) -> list[Made]:
    made = []
    for incident in state["incidents"]:
        alert_id = alert_of_incident_key(incident.get("incident_key"))
        if alert_id in ids:
            made.append(Made(alert_id, incident["created_at_ms"], incident.get("resolved_at_ms")))
    return made


def events_alerts(state: Mapping[str, Any], ids: set[str]) -> list[Made]:
    made = []
    for alert in state["events"]["alerts"]:
        alert_id = alert_in_summary(alert.get("summary") or "", ids)
        if alert_id is not None:
            made.append(Made(alert_id, alert["created_at_ms"], alert.get("resolved_at_ms")))
    return made


def storm_done(made: Iterable[Made], firing: set[str], resolved: set[str]) -> bool:
    """The mixed storm is over: every still-firing alert has an incident, and no incident is
    open whose alert resolved."""
    have = {item.alert_id for item in made if item.alert_id in firing}
    still_open = any(item.resolved_ms is None for item in made if item.alert_id in resolved)
    return have == firing and not still_open


def mixed_figures(
    made: Sequence[Made],
    firing: set[str],
    resolves_sent_ms: Mapping[str, float],
    started_ms: float,
) -> dict[str, Any]:
    """The mixed storm's figures: when the last incident whose alert resolved was resolved,
    and how many incidents were created although their alert had resolved already (paged
    for nothing: created only to be resolved at once)."""
    resolved_ones = [item for item in made if item.alert_id in resolves_sent_ms]
    resolves_from_ms = min(resolves_sent_ms.values())
    last_resolved_ms = max(
        (item.resolved_ms or math.inf for item in resolved_ones), default=resolves_from_ms
    )
    created_after_resolve = sum(
        1 for item in resolved_ones if item.created_ms > resolves_sent_ms[item.alert_id]
    )
    firing_made = sorted(item.created_ms for item in made if item.alert_id in firing)
    return {
        "seconds_until_no_resolved_alert_open": round(
            (last_resolved_ms - resolves_from_ms) / 1000, 2
        ),
        "seconds_from_storm_start": round((last_resolved_ms - started_ms) / 1000, 2),
        "incidents_for_resolved_alerts": len(resolved_ones),
        "created_after_their_resolve": created_after_resolve,
        "seconds_to_all_firing_incidents": round((firing_made[-1] - started_ms) / 1000, 2)
        if len(firing_made) >= len(firing)
        else None,
    }


async def _post_all(
    url: str, bodies: Sequence[tuple[str, Any]], headers: Mapping[str, str]
) -> dict[str, tuple[float, int]]:
    """POST each body, ``SENDERS`` at a time, in order; per id: (ms since the epoch when it
    was sent, status)."""
    sent: dict[str, tuple[float, int]] = {}
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
    async with httpx.AsyncClient(timeout=30.0, headers=dict(headers), limits=limits) as client:

        async def sender() -> None:
            while not queue.empty():
                key, body = queue.get_nowait()
                at = time.time() * 1000
                try:
                    status = (await client.post(url, json=body)).status_code
                except httpx.HTTPError:
                    status = 0
                sent[key] = (at, status)

        await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return sent


def post_all(
    url: str, bodies: Sequence[tuple[str, Any]], headers: Mapping[str, str]
) -> dict[str, tuple[float, int]]:
    return asyncio.run(_post_all(url, bodies, headers))


def coscale_body(alert_id: str, action: str) -> dict[str, Any]:
    if action == "resolved":
        return {"alert_id": alert_id, "action": "resolved"}
    return {
        "alert_id": alert_id,
        "action": "triggered",
        "message": "bench storm",
        "metric": "cpu/used",
        "subject": "server bench",
        "app": "bench",
        "host": "bench-host",
    }


def alertmanager_body(alert_id: str, shard: int, ends_at: str | None = None) -> list[Any]:
    """One Prometheus alert; ``shard`` picks the route, hence the integration key."""
    alert: dict[str, Any] = {
        "labels": {"alertname": "bench", "alert_id": alert_id, "shard": str(shard)},
        "annotations": {"summary": "bench storm", "metric": "cpu/used"},
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at
    return [alert]
