"""CoScale's side: the Webhook contact's fields, and the text a PagerDuty incident gets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from urllib.parse import urlsplit

from worker.title import DETAILS_LIMIT, render_title, truncate

# Webhook body field → CoScale placeholder (docs/coscale.md). The suggested Format uses these names.
FIELD_PLACEHOLDERS: dict[str, str] = {
    "alert_id": "ALERT_ID",
    "message": "MSG",
    "metric": "METRIC",
    "subject": "SUBJECT",
    "dimensions": "DIMENSIONS",
    "app": "APP_NAME",
    "link": "LINK",
    "date": "DATE",
    "time": "TIME",
    "host": "SHORTHOST",
    "timestamp": "TIMESTAMP",
}

# Labels for the incident body, in the order a responder reads them.
_DETAIL_LABELS: tuple[tuple[str, str], ...] = (
    ("message", "Message"),
    ("metric", "Metric"),
    ("subject", "Subject"),
    ("dimensions", "Dimensions"),
    ("app", "Application"),
    ("host", "Host"),
    ("date", "Date"),
    ("time", "Time"),
    ("link", "CoScale"),
    ("alert_id", "CoScale alert id"),
)


def is_web_link(value: str) -> bool:
    """Whether ``value`` is an http(s) URL with a host: the only links the bridge forwards (a
    ``javascript:`` or ``data:`` link would run in a responder's browser)."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def placeholder_values(fields: Mapping[str, str | None]) -> dict[str, str]:
    """Every CoScale placeholder's value for a title; absent fields render empty, as in
    CoScale. ``{ACTION}`` is always ``triggered``: the title belongs to the incident, which a
    trigger opens, even when an acknowledge happened to reach the bridge first."""
    values = {name: "" for name in FIELD_PLACEHOLDERS.values()}
    for field, placeholder in FIELD_PLACEHOLDERS.items():
        value = fields.get(field)
        if value:
            values[placeholder] = value
    values["ACTION"] = "triggered"
    return values


def incident_title(template: str, fields: Mapping[str, str | None]) -> str:
    return render_title(template, placeholder_values(fields))


def incident_details(fields: Mapping[str, str | None]) -> str:
    """The incident body: one labelled line per CoScale field that has a value."""
    lines = [f"{label}: {fields[name]}" for name, label in _DETAIL_LABELS if fields.get(name)]
    return truncate("\n".join(lines), DETAILS_LIMIT)


def occurrence(fields: Mapping[str, str]) -> str | None:
    """Which CoScale event a webhook reports, as a fingerprint of its ``{DATE}``, ``{TIME}``,
    ``{TIMESTAMP}`` and ``{MSG}`` (the SHA-256 of them, 64 hex digits).

    CoScale stamps each firing of an alert with the time it happened: a trigger posted again
    with the same stamp and message (a proxy's retry, a replay by hand) reports the same event,
    a new stamp a new firing. None when the Format carries no date, time or timestamp: then
    nothing tells a re-post from a re-fire.
    """
    stamps = [fields.get(name) or "" for name in ("date", "time", "timestamp")]
    if not any(stamps):
        return None
    seen = json.dumps([*stamps, fields.get("message") or ""], ensure_ascii=False)
    return hashlib.sha256(seen.encode()).hexdigest()
