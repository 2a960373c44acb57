"""Turn a PagerDuty answer (or a failure to get one) into an error of the tree in ``errors.py``.

Pure functions, no I/O and no httpx: the client hands over the status, the body bytes and the
headers, and raises whatever comes back. The policy is docs/pagerduty.md's error table:

=================================  ==========================================================
HTTP status                        result
=================================  ==========================================================
2xx                                ``None`` (done)
400                                PermanentError, or DuplicateIncidentKeyError for the
                                   "matching dedup key" refusal of a create
401, 403                           CredentialsError
402, 404, 413, any other 4xx       PermanentError
408, 429, 5xx                      RetryableError (``retry_after`` from the headers, if any)
anything else (1xx, 3xx, ...)      RetryableError: unexpected, assume a proxy hiccup
=================================  ==========================================================
"""

from __future__ import annotations

import errno
import json
import math
import re
import socket
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

from worker.delivery.pacing import RateLimitReading
from worker.pagerduty.errors import (
    CredentialsError,
    DuplicateIncidentKeyError,
    PagerDutyError,
    PermanentError,
    RetryableError,
    one_line,
)

__all__ = [
    "RateLimitReading",
    "classify_malformed_success",
    "classify_response",
    "classify_transport_failure",
    "rate_limit_reading",
    "retry_after_seconds",
]

# How much of a body that is not PagerDuty's JSON envelope (an HTML page from a proxy or load
# balancer, plain text) goes into the message: enough to recognise it, short enough to log.
SNIPPET_CHARS = 200

# docs/pagerduty.md: the duplicate-key refusal is a 400 whose errors[] says "Open incident with
# matching dedup key already exists on this service"; its numeric code is NOT confirmed, so we
# match the text (case-insensitive) and never the code. The second and third patterns cover
# wordings that name the field instead ("incident_key already exists", "duplicate incident key").
_DUPLICATE_KEY_PATTERNS = (
    re.compile(r"matching dedup(?:lication)? key", re.IGNORECASE),
    re.compile(
        r"(?:incident[_ ]key|dedup(?:lication)?[_ ]key).*\b(?:already|duplicate)", re.IGNORECASE
    ),
    re.compile(r"duplicate.*(?:incident[_ ]key|dedup(?:lication)?[_ ]key)", re.IGNORECASE),
)

_PERMANENT_STATUSES = frozenset({400, 402, 404, 413})
_CREDENTIALS_STATUSES = frozenset({401, 403})
_RETRYABLE_STATUSES = frozenset({408, 429})

_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_SCRIPT_OR_STYLE = re.compile(r"<(script|style)[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def classify_response(
    status: int, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> PagerDutyError | None:
    """Classify one PagerDuty answer.

    Args:
        status: the HTTP status code.
        body: the raw response body (may be empty, JSON, or anything a proxy sends back).
        headers: the response headers; names are matched case-insensitively.
        now: the current time as a Unix timestamp in seconds, used only to turn a
            ``Retry-After`` HTTP date into a delay; defaults to ``time.time()``.

    Returns:
        ``None`` for 2xx (done), else the error to raise.
    """
    if 200 <= status <= 299:
        return None

    message, code, errors = _parse_error_body(status, body)

    if status in _CREDENTIALS_STATUSES:
        return CredentialsError(message, status=status, code=code, errors=errors)
    if status == 400 and _is_duplicate_key(message, errors):
        return DuplicateIncidentKeyError(message, status=status, code=code, errors=errors)
    if status in _PERMANENT_STATUSES:
        return PermanentError(message, status=status, code=code, errors=errors)
    if status in _RETRYABLE_STATUSES or 500 <= status <= 599:
        return RetryableError(
            message,
            status=status,
            code=code,
            errors=errors,
            # Read for every retryable status, not just 429: a 503 with Retry-After means the
            # same thing, and an absent header simply gives None.
            retry_after=retry_after_seconds(headers, now=now),
            rate_limit=rate_limit_per_minute(headers) if status == 429 else None,
        )
    if 400 <= status <= 499:
        return PermanentError(message, status=status, code=code, errors=errors)
    # 1xx, 3xx (httpx does not follow redirects for us) or a non-HTTP number: nothing in
    # docs/pagerduty.md explains it, so it is most likely something between us and PagerDuty.
    # Retrying is safe: creates carry an incident_key and updates set an absolute status.
    return RetryableError(
        f"unexpected HTTP status: {message}",
        status=status,
        code=code,
        errors=errors,
        retry_after=retry_after_seconds(headers, now=now),
    )


def rate_limit_per_minute(headers: Mapping[str, str]) -> float | None:
    """The calls per minute a 429's ``ratelimit-limit`` header allows, or ``None``.

    docs/pagerduty.md: the REST API's limit is per minute (960 for one API key, shared by all of a
    user's keys), and its 429s may carry the limit. A positive number is all we trust.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    raw = lowered.get("ratelimit-limit")
    if raw is None:
        return None
    try:
        # RFC draft style "960, 960;w=60" is possible: the first number is the limit.
        limit = float(raw.split(",")[0].split(";")[0].strip())
    except ValueError:
        return None
    return limit if math.isfinite(limit) and limit > 0 else None


def rate_limit_reading(headers: Mapping[str, str]) -> RateLimitReading | None:
    """The ``ratelimit-*`` headers of any REST answer, or ``None`` when one is missing or bad.

    docs/pagerduty.md: REST answers in general carry ``ratelimit-limit``, ``ratelimit-remaining``
    and ``ratelimit-reset``, so that a client can pace itself before it is throttled.
    """
    limit = rate_limit_per_minute(headers)
    if limit is None:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    remaining = _non_negative_seconds(_first_item(lowered.get("ratelimit-remaining")))
    reset = _non_negative_seconds(_first_item(lowered.get("ratelimit-reset")))
    if remaining is None or reset is None:
        return None
    return RateLimitReading(limit, remaining, reset)


def _first_item(raw: str | None) -> str | None:
    """``"12, 12;w=60"`` -> ``"12"``: the RFC draft's list form names the current window first."""
    return None if raw is None else raw.split(",")[0].split(";")[0]


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How long PagerDuty asked us to wait, in seconds, or ``None`` if it did not say.

    docs/pagerduty.md: 429 answers may carry ``ratelimit-reset`` (seconds until the rate-limit
    window resets), which is documented and so preferred. ``Retry-After`` is not documented
    but honoured if present, as delay-seconds or as an HTTP date (RFC 9110 section 10.2.3).
    Unparseable or negative values are ignored; a date in the past gives 0.0.
    """
    lowered = {name.lower(): value for name, value in headers.items()}

    reset = _non_negative_seconds(lowered.get("ratelimit-reset"))
    if reset is not None:
        return reset

    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _non_negative_seconds(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT; be lenient about the zone.
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_transport_failure(exc: Exception) -> RetryableError:
    """Classify a request that got no HTTP answer: network error, timeout, broken connection.

    Always retryable (docs/pagerduty.md: network errors and timeouts are transient). The message
    says which kind of failure it was, so an operator can tell a slow PagerDuty (timeout) from
    a wrong base URL (DNS, connection refused) or a TLS problem. Works from exception class
    names and the ``__cause__``/``__context__`` chain, so this module needs no httpx import.
    """
    kind = _transport_failure_kind(exc)
    detail = one_line(str(exc)) or type(exc).__name__
    return RetryableError(f"{kind} ({type(exc).__name__}: {_truncate(detail)})")


def classify_malformed_success(status: int, body: bytes, problem: str) -> RetryableError:
    """Classify a 2xx answer whose body is not what PagerDuty documents (no JSON, no ``id``).

    Retryable on purpose: the request may or may not have taken effect, which is the same
    situation as a lost response. Retrying is safe: docs/pagerduty.md's create retry recipe (same
    ``incident_key``, adopt on the duplicate-key 400) covers creates, and updates set an
    absolute status ("already resolved/acknowledged" counts as success in the client).

    Args:
        status: the 2xx HTTP status received.
        body: the raw body, summarised into the message.
        problem: what was wrong with it, e.g. ``"no incident.id"``.
    """
    shown = _snippet(body.decode("utf-8", errors="replace")) if body.strip() else "(empty body)"
    return RetryableError(f"unreadable success answer, {problem}: {shown}", status=status)


def _transport_failure_kind(exc: BaseException) -> str:
    chain = _exception_chain(exc)
    names = {cls.__name__ for link in chain for cls in type(link).__mro__}
    text = " ".join(str(link) for link in chain).lower()

    # Timeouts first: httpx's ConnectTimeout is also a "connect" failure, but what the operator
    # needs to know is that PagerDuty (or the network) was too slow, not that it refused.
    for phase in ("Connect", "Read", "Write", "Pool"):
        if f"{phase}Timeout" in names:
            return f"{phase.lower()} timeout"
    if "TimeoutException" in names or any(isinstance(link, TimeoutError) for link in chain):
        return "timeout"
    if any(isinstance(link, ConnectionRefusedError) for link in chain) or (
        "connection refused" in text
    ):
        return "connection refused"
    if any(isinstance(link, socket.gaierror) for link in chain) or any(
        marker in text
        for marker in ("name or service not known", "nodename nor servname", "getaddrinfo")
    ):
        return "DNS lookup failed"
    if any(isinstance(link, ssl.SSLError) for link in chain) or any(
        marker in text for marker in ("ssl", "certificate", "tls")
    ):
        return "TLS error"
    if any(isinstance(link, ConnectionResetError) for link in chain) or (
        "connection reset" in text
    ):
        return "connection reset"
    if any(
        isinstance(link, OSError) and link.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
        for link in chain
    ):
        return "network unreachable"
    if "ProxyError" in names:
        return "proxy error"
    if "RemoteProtocolError" in names or "server disconnected" in text:
        # Typically a keep-alive connection PagerDuty (or a load balancer) closed while idle.
        return "connection closed by server"
    if "ProtocolError" in names:
        return "HTTP protocol error"
    if "DecodingError" in names:
        return "undecodable response body"
    if "ConnectError" in names:
        return "connection failed"
    if "ReadError" in names or "WriteError" in names:
        return "connection broken"
    return "network error"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, without looping."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_duplicate_key(message: str, errors: tuple[str, ...]) -> bool:
    return any(
        pattern.search(text) for text in (message, *errors) for pattern in _DUPLICATE_KEY_PATTERNS
    )


def _parse_error_body(status: int, body: bytes) -> tuple[str, int | None, tuple[str, ...]]:
    """Read PagerDuty's envelope ``{"error": {"message", "code", "errors"}}`` tolerantly.

    Returns ``(message, code, errors)``. Never raises: an empty body gives the status's reason
    phrase (docs/pagerduty.md: a 429 may come with no body at all), a body that is not the envelope
    gives a one-line snippet of it, truncated to about ``SNIPPET_CHARS`` characters.
    """
    reason = _reason_phrase(status)
    if not body.strip():
        return f"{reason} (empty body)", None, ()

    text = body.decode("utf-8", errors="replace")
    envelope = _json_or_none(text)
    if isinstance(envelope, dict):
        error = envelope.get("error")
        if isinstance(error, dict):
            message = _truncate(one_line(str(error.get("message") or ""))) or reason
            return message, _int_or_none(error.get("code")), _strings(error.get("errors"))
        if isinstance(error, str) and error.strip():  # {"error": "..."}: not PagerDuty's shape
            return _truncate(one_line(error)), None, ()
        # Some gateways answer {"message": "..."}; take it rather than dumping the JSON.
        if isinstance(envelope.get("message"), str) and envelope["message"].strip():
            return _truncate(one_line(envelope["message"])), None, ()

    return f"{reason}: {_snippet(text)}", None, ()


def _snippet(text: str) -> str:
    """A short, one-line, readable piece of a body that is not PagerDuty's JSON."""
    if "<" in text and ">" in text:
        # An HTML error page from a proxy or load balancer: its <title> says the most
        # ("502 Bad Gateway"); otherwise the visible text without tags, scripts or styles.
        title = _HTML_TITLE.search(text)
        if title and title.group(1).strip():
            text = title.group(1)
        else:
            text = _HTML_TAG.sub(" ", _HTML_SCRIPT_OR_STYLE.sub(" ", text))
    return _truncate(one_line(text)) or "(no readable text)"


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP status {status}"


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass; a "code": true is not a PagerDuty error code.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(_truncate(one_line(str(item))) for item in value if item is not None)


def _non_negative_seconds(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _truncate(text: str, limit: int = SNIPPET_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
