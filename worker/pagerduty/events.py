"""PagerDuty Events API v2 client: trigger, acknowledge and resolve alerts (``POST /v2/enqueue``).

Built like ``client.py``: one class holding one httpx client; each :meth:`EventsClient.send`
makes exactly one request and returns or raises an error of ``errors.py``, never sleeps and
never retries. Classification happens here, at the boundary, in
:func:`classify_event_response`:

==============================  =========================================================
answer                          result
==============================  =========================================================
2xx (PagerDuty answers 202)     done: ``send`` returns the event's ``dedup_key``
400 naming the routing key      CredentialsError: the integration key is wrong, which no
                                retry and no other event of this route will fix
other 400                       PermanentError with PagerDuty's ``errors`` list
429                             RetryableError; ``retry_after`` from the headers if any
                                (docs/pagerduty.md: the event was NOT taken, back off minutes)
5xx, network error, timeout     RetryableError
anything else                   as the REST client (``classify.classify_response``)
==============================  =========================================================

Every event carries a ``dedup_key`` (:func:`dedup_key`): a trigger retried after a lost answer
then joins the alert the first attempt opened instead of paging twice, and acknowledge and
resolve need one anyway (docs/pagerduty.md).

The routing key (integration key) is the credential of the Events API: it travels in the body,
never in a log line or an error. The client holds it, :func:`build_event` never sees it, and
every error leaving :meth:`EventsClient.send` is scrubbed of it as a last line of defence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, get_args

import httpx

from worker import metrics
from worker.pagerduty.classify import classify_response, classify_transport_failure
from worker.pagerduty.errors import (
    CredentialsError,
    PagerDutyError,
    PermanentError,
    one_line,
)
from worker.pagerduty.http_client import HttpClient, http_url, json_content, open_client
from worker.title import truncate
from worker.vocabulary import DEFAULT_NAMESPACE

__all__ = [
    "EVENTS_URL",
    "MAX_DEDUP_KEY_CHARS",
    "MAX_EVENT_BYTES",
    "MAX_SUMMARY_CHARS",
    "TRIMMED_NOTE",
    "EventAction",
    "EventsClient",
    "Severity",
    "build_event",
    "classify_event_response",
    "dedup_key",
    "is_routing_key",
]

logger = logging.getLogger(__name__)

EventAction = Literal["trigger", "acknowledge", "resolve"]
Severity = Literal["critical", "error", "warning", "info"]
EVENT_ACTIONS: Final[tuple[str, ...]] = get_args(EventAction)
SEVERITIES: Final[tuple[str, ...]] = get_args(Severity)

EVENTS_URL: Final = "https://events.pagerduty.com/v2/enqueue"
# docs/pagerduty.md, "Events API v2": summary <= 1024 characters, dedup_key <= 255, payload 512 KB.
MAX_SUMMARY_CHARS: Final = 1024
MAX_DEDUP_KEY_CHARS: Final = 255
MAX_EVENT_BYTES: Final = 512 * 1024
# source, component, group and class have no published limit; they are short labels in
# PagerDuty's UI, so the bridge cuts them like the summary rather than send kilobytes.
MAX_CONTEXT_CHARS: Final = 1024
ROUTING_KEY_CHARS: Final = 32
# PagerDuty's integration keys are 32 letters and digits; it refuses others with a 400 "Length
# of 'routing_key' is incorrect (should be 32 characters)" or "'routing_key' cannot contain
# non-alphanumeric characters." (answers quoted in envato/pagerduty#70, blockpane/tenderduty#10).
_ROUTING_KEY: Final = re.compile(r"[A-Za-z0-9]{32}")
#: The custom_details key that says what was cut to fit MAX_EVENT_BYTES.
TRIMMED_NOTE: Final = "pagerbridge_trimmed"

# A 400 whose text names the routing key refuses the credential, not this one event: besides
# the two answers above, "Invalid routing key" (robusta-dev/robusta#571). Not in PagerDuty's
# reference, which documents no answer for an unknown key.
_ROUTING_KEY_REFUSAL = re.compile(r"routing[ _]?key", re.IGNORECASE)


# -- pure policy ------------------------------------------------------------------------------


def is_routing_key(value: str) -> bool:
    """Whether ``value`` has the shape of an integration key: 32 letters or digits."""
    return _ROUTING_KEY.fullmatch(value) is not None


def dedup_key(source: str, alert_id: str, cycle: int, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The ``dedup_key`` of one alert cycle: ``pagerbridge/{source}/{alert_id}/{cycle}`` in the
    default namespace, ``pagerbridge@{namespace}/{source}/{alert_id}/{cycle}`` in another.

    The same alert cycle always gets the same key (a retried trigger joins the open alert;
    acknowledge and resolve find it); a re-trigger after a resolve is the next cycle, so a new
    key and a new alert. The format is the REST backend's ``incident_key`` (``intake.py``), so
    one key names the cycle whichever backend delivers it. Two bridges may share a PagerDuty
    account: the namespace keeps their keys apart, and its own first segment (a namespace's
    characters exclude ``/``) means no other bridge's key, whatever its alert id, is the same.
    The default namespace's keys stay as they were, so incidents opened before namespaces
    existed are still found. An alert id too long to fit in ``MAX_DEDUP_KEY_CHARS`` is replaced
    by its SHA-256 (cutting it could make two alerts, or two cycles, share a key).

    Raises:
        ValueError: empty ``source`` or ``alert_id``, or ``cycle`` < 1.
    """
    if not source or not alert_id:
        raise ValueError("source and alert_id must not be empty")
    if cycle < 1:
        raise ValueError(f"cycle must be >= 1, got {cycle}")
    prefix = "pagerbridge" if namespace == DEFAULT_NAMESPACE else f"pagerbridge@{namespace}"
    key = f"{prefix}/{source}/{alert_id}/{cycle}"
    if len(key) <= MAX_DEDUP_KEY_CHARS:
        return key
    digest = hashlib.sha256(alert_id.encode()).hexdigest()
    key = f"{prefix}/{source}/sha256:{digest}/{cycle}"
    if len(key) > MAX_DEDUP_KEY_CHARS:
        raise ValueError("source is too long for a dedup_key")
    return key


def build_event(
    action: EventAction,
    dedup_key: str,
    *,
    summary: str | None = None,
    severity: str | None = None,
    source: str | None = None,
    component: str | None = None,
    group: str | None = None,
    class_: str | None = None,
    custom_details: Mapping[str, Any] | None = None,
    links: Sequence[Mapping[str, str]] = (),
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """One Events API v2 event, without the routing key (the client adds it), within limits.

    The payload arguments are read for a trigger only: PagerDuty ignores them on acknowledge
    and resolve, which carry ``event_action`` and ``dedup_key`` alone.

    Limits (docs/pagerduty.md): ``summary`` is cut to 1024 characters with an ellipsis, as titles
    are; ``source``, ``component``, ``group`` and ``class`` likewise (``MAX_CONTEXT_CHARS``).
    If the event would exceed 512 KB, the largest ``custom_details`` values are cut (or
    dropped) until it fits, and ``custom_details["pagerbridge_trimmed"]`` says which.

    Args:
        action: ``trigger``, ``acknowledge`` or ``resolve``.
        dedup_key: the alert's key, at most 255 characters (see :func:`dedup_key`).
        summary, severity, source: required for a trigger; severity is one of
            ``critical``, ``error``, ``warning``, ``info``.
        component, group, class_: optional context; ``None`` or empty is not sent.
        custom_details: any JSON object; ``None`` or empty is not sent.
        links: ``{"href": ..., "text": ...}`` objects; ``text`` is optional.
        timestamp: when the alert happened; must be timezone-aware.

    Raises:
        ValueError: an unknown action or severity, a dedup_key that is empty or too long, a
            trigger without summary or source, a naive timestamp, a link without href, or an
            event too large even without its custom_details.
    """
    if action not in EVENT_ACTIONS:
        raise ValueError(f"action must be one of {', '.join(EVENT_ACTIONS)}, got {action!r}")
    _check_dedup_key(dedup_key)
    event: dict[str, Any] = {"event_action": action, "dedup_key": dedup_key}
    if action != "trigger":
        return event

    if not summary or not summary.strip():
        raise ValueError("a trigger needs a non-empty summary")
    if not source or not source.strip():
        raise ValueError("a trigger needs a non-empty source")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    payload: dict[str, Any] = {
        "summary": truncate(summary, MAX_SUMMARY_CHARS),
        "source": truncate(source, MAX_CONTEXT_CHARS),
        "severity": severity,
    }
    if timestamp is not None:
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware")
        payload["timestamp"] = timestamp.isoformat()
    for name, value in (("component", component), ("group", group), ("class", class_)):
        if value:
            payload[name] = truncate(value, MAX_CONTEXT_CHARS)
    if custom_details:
        payload["custom_details"] = dict(custom_details)
    event["payload"] = payload
    if links:
        event["links"] = [_link(link) for link in links]
    _fit(event)
    return event


def _check_dedup_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError("dedup_key must be a non-empty string")
    if len(key) > MAX_DEDUP_KEY_CHARS:
        raise ValueError(f"dedup_key must be at most {MAX_DEDUP_KEY_CHARS} characters")


def _link(link: Mapping[str, str]) -> dict[str, str]:
    href = link.get("href")
    if not href:
        raise ValueError("every link needs an href")
    text = link.get("text")
    return {"href": href, "text": text} if text else {"href": href}


def _encode(body: Mapping[str, Any]) -> bytes:
    """The bytes sent; also what the 512 KB limit is measured on."""
    return json_content(body)


def _event_bytes(event: Mapping[str, Any]) -> int:
    """The size of ``event`` once the client has added a routing key."""
    return len(_encode({"routing_key": "x" * ROUTING_KEY_CHARS, **event}))


def _fit(event: dict[str, Any]) -> None:
    """Cut ``event``'s custom_details, largest value first, until the event fits in
    ``MAX_EVENT_BYTES``; note in them what was cut. In place."""
    size = _event_bytes(event)
    if size <= MAX_EVENT_BYTES:
        return
    payload = event["payload"]
    details: dict[str, Any] = dict(payload.get("custom_details") or {})
    details.pop(TRIMMED_NOTE, None)
    cut: list[str] = []
    while size > MAX_EVENT_BYTES:
        candidates = [name for name in details if name != TRIMMED_NOTE]
        if not candidates:
            raise ValueError(
                f"the event is {size} bytes even without custom_details; "
                f"PagerDuty accepts at most {MAX_EVENT_BYTES}"
            )
        name = max(candidates, key=lambda key: len(_encode({"v": details[key]})))
        value = details[name]
        # Removing n characters removes at least n bytes; the margin pays for the ellipsis and
        # for the note, which grows as names are added to it.
        keep = len(value) - (size - MAX_EVENT_BYTES) - 256 if isinstance(value, str) else 0
        if keep >= 64:
            details[name] = truncate(value, keep)
        else:
            del details[name]
        if name not in cut:
            cut.append(name)
        details[TRIMMED_NOTE] = (
            f"cut to fit PagerDuty's {MAX_EVENT_BYTES // 1024} KB event limit: {', '.join(cut)}"
        )
        payload["custom_details"] = details
        size = _event_bytes(event)
    logger.warning(
        "Events API event for dedup_key %s: custom_details cut to fit %d bytes: %s",
        event["dedup_key"],
        MAX_EVENT_BYTES,
        ", ".join(cut),
    )


def classify_event_response(
    status: int, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> PagerDutyError | None:
    """Classify one Events API answer (see the module's table); ``None`` for 2xx.

    A 400's body is the Events API's own ``{"status": "invalid event", "message": "Event
    object is invalid", "errors": [...]}``, not the REST envelope; its ``errors`` are kept.
    Every other status is classified as the REST API's (429 and 5xx retryable with
    ``retry_after``, 401/403 credentials, other 4xx permanent).
    """
    error = classify_response(status, body, headers, now=now)
    if error is None or status != 400:
        return error
    message, errors = error.message, error.errors
    try:
        parsed: object = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("errors"), list):
        errors = tuple(one_line(str(item)) for item in parsed["errors"] if item is not None)
    kind = (
        CredentialsError
        if any(_ROUTING_KEY_REFUSAL.search(text) for text in (message, *errors))
        else PermanentError
    )
    return kind(message, status=status, code=error.code, errors=errors)


# -- the client -------------------------------------------------------------------------------


class EventsClient(HttpClient):
    """A synchronous Events API v2 client for one integration (routing key).

    Create one per routing key at worker start and ``close()`` it at shutdown (or use it as a
    context manager). Not for concurrent use from several threads.
    """

    def __init__(
        self,
        routing_key: str,
        *,
        url: str = EVENTS_URL,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "pagerbridge/0.1",
    ) -> None:
        """Set up the client; no request is made yet.

        Args:
            routing_key: the integration key, 32 letters or digits.
            url: the full enqueue URL, e.g. ``https://events.eu.pagerduty.com/v2/enqueue``
                (or a simulator's).
            connect_timeout: seconds to open a connection, and to wait for a free one.
            read_timeout: seconds to wait for each read of the answer and each write.
            transport: an httpx transport instead of the network (tests).
            user_agent: the ``User-Agent`` header.

        Raises:
            ValueError: a malformed routing key, URL, user agent or timeout; the message never
                contains the routing key.
        """
        if not is_routing_key(routing_key):
            raise ValueError(f"routing_key must be {ROUTING_KEY_CHARS} letters or digits")
        if not user_agent or not all(" " <= ch <= "~" for ch in user_agent):
            raise ValueError("user_agent must be non-empty printable ASCII")
        self._url = http_url(url, "url")
        self._routing_key = routing_key
        self._http = open_client(
            base_url=self._url,
            headers={"Content-Type": "application/json", "User-Agent": user_agent},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"EventsClient(url={str(self._url)!r})"

    def send(self, event: Mapping[str, Any]) -> str:
        """Send one event made by :func:`build_event`; return its ``dedup_key`` once PagerDuty
        took it (2xx; PagerDuty answers 202).

        A 202 for an acknowledge or resolve of an alert PagerDuty does not know (never opened,
        already resolved) is success too: PagerDuty drops those and says nothing
        (docs/pagerduty.md).

        Raises:
            ValueError: the event has no valid ``event_action`` or ``dedup_key``, carries its
                own ``routing_key``, or is larger than 512 KB.
            PagerDutyError: see the module's table; never contains the routing key.
        """
        action, key, content = self._content(event)
        request = self._http.build_request("POST", self._url, content=content)
        started = time.monotonic()
        try:
            self._answer(action, self._send(request), started)
        except PagerDutyError as error:
            self._scrub(error)
            raise  # keeps the ``from exc`` cause set in _answer
        return key

    def send_together(self, events: Sequence[Mapping[str, Any]]) -> list[str | PagerDutyError]:
        """Send several events, their requests in flight at once (one connection each).

        What :meth:`send` does for each, but the errors are returned in the event's place
        rather than raised: every request was sent, so every answer counts.

        Raises:
            ValueError: as :meth:`send`, before any request is sent.
        """
        made = [self._content(event) for event in events]
        requests = [
            self._http.build_request("POST", self._url, content=content) for _, _, content in made
        ]
        started = time.monotonic()
        replies = self._send_together(requests)
        results: list[str | PagerDutyError] = []
        for (action, key, _), reply in zip(made, replies, strict=True):
            try:
                self._answer(action, reply, started)
            except PagerDutyError as error:
                self._scrub(error)
                results.append(error)
            else:
                results.append(key)
        return results

    def _content(self, event: Mapping[str, Any]) -> tuple[str, str, bytes]:
        """The event's action, dedup key and request body, checked."""
        action = event.get("event_action")
        if action not in EVENT_ACTIONS:
            raise ValueError(f"event_action must be one of {', '.join(EVENT_ACTIONS)}")
        key = event.get("dedup_key")
        _check_dedup_key(key)
        assert isinstance(key, str)  # checked above
        if "routing_key" in event:
            raise ValueError("the event must not carry a routing_key: the client adds its own")
        content = _encode({"routing_key": self._routing_key, **event})
        if len(content) > MAX_EVENT_BYTES:
            raise ValueError(
                f"the event is {len(content)} bytes; PagerDuty accepts at most {MAX_EVENT_BYTES}"
            )
        return str(action), key, content

    def _answer(self, action: str, reply: httpx.Response | httpx.HTTPError, started: float) -> None:
        """Nothing if PagerDuty took the event, else the classified error raised; counted in
        the metrics either way."""
        endpoint = f"events_{action}"  # the metrics label: events_trigger, ...
        if isinstance(reply, httpx.HTTPError):
            metrics.observe_pagerduty_call(endpoint, None, time.monotonic() - started)
            logger.info("PagerDuty Events %s failed: %s", action, type(reply).__name__)
            raise classify_transport_failure(reply) from reply
        elapsed = time.monotonic() - started
        metrics.observe_pagerduty_call(endpoint, reply.status_code, elapsed)
        logger.debug(
            "PagerDuty Events %s -> %d in %.0f ms", action, reply.status_code, elapsed * 1000
        )
        if not 200 <= reply.status_code <= 299:  # else taken: no headers to make and read
            status, answer = reply.status_code, reply.content
            error = classify_event_response(status, answer, reply.headers)
            if error is not None:
                raise error

    def _scrub(self, error: PagerDutyError) -> None:
        """Remove the routing key from an error's text before it leaves the client.

        PagerDuty's answers and library exceptions are text we do not control; some clients'
        error bodies echo the request, so check rather than trust.
        """
        error.redact(self._routing_key)
