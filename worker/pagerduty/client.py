"""PagerDuty REST API v2 client: create, update and look up incidents.

Each method makes exactly one HTTP request (``create_incidents`` one per incident, sent
together) and either returns the result or raises an error from ``errors.py`` (classified by
``classify.py``); it never sleeps and never retries. Retry policy (backoff, ``retry_after``)
belongs to the caller, which sees no httpx type: transport exceptions are translated here with
``raise ... from exc``.

The API token is only ever put in the ``Authorization`` header. It is refused at construction
if it could make httpx fail in a way that echoes it, never logged, and scrubbed from every
error message as a last line of defence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from worker import metrics
from worker.delivery.pacing import RateLimitReading
from worker.pagerduty.classify import (
    classify_malformed_success,
    classify_response,
    classify_transport_failure,
    rate_limit_reading,
)
from worker.pagerduty.errors import PagerDutyError, PermanentError
from worker.pagerduty.http_client import HttpClient, http_url, json_content, open_client

__all__ = [
    "MAX_BULK_UPDATES",
    "MAX_FIND_RESULTS",
    "UPDATE_STATUSES",
    "URGENCIES",
    "AlreadyInState",
    "Incident",
    "IncidentUpdate",
    "NewIncident",
    "PagerDutyClient",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# What httpx accepts as one query parameter value.
_QueryValue = str | int | float | bool | None

# docs/pagerduty.md: bulk PUT /incidents takes at most 250 items (more gives 413).
MAX_BULK_UPDATES = 250
# docs/pagerduty.md: GET /incidents takes limit <= 100.
MAX_FIND_RESULTS = 100
# docs/pagerduty.md: an update sets status "acknowledged" or "resolved", never "triggered".
UPDATE_STATUSES = frozenset({"acknowledged", "resolved"})
URGENCIES = frozenset({"high", "low"})

# docs/pagerduty.md: every request carries this Accept header; it asks for REST API v2.
_ACCEPT = "application/vnd.pagerduty+json;version=2"

# docs/pagerduty.md: the error list has "1001 Incident Already Resolved" and "1002 Incident Already
# Acknowledged", and "already in the wanted state" counts as success. Keyed by the status we
# asked for: 1001 on an *acknowledge* is NOT success (the incident is resolved, not acked).
# docs/pagerduty.md also says the behaviour on an already resolved incident is not documented, so
# the message text is matched as well as the code.
_ALREADY_IN_STATE: Mapping[str, tuple[int, str]] = {
    "resolved": (1001, "already resolved"),
    "acknowledged": (1002, "already acknowledged"),
}


@dataclass(frozen=True, slots=True)
class Incident:
    """What the bridge needs to know about a PagerDuty incident.

    Attributes:
        id: PagerDuty's incident ID, e.g. ``"PT4KHLK"``.
        status: ``"triggered"``, ``"acknowledged"`` or ``"resolved"``.
        number: the account-wide ``incident_number``, when PagerDuty sent it.
        html_url: the incident's page in PagerDuty's web app, when sent.
        incident_key: the de-duplication key, when sent.
        service_id: the id of the service it is on, when sent.
    """

    id: str
    status: str  # "triggered" | "acknowledged" | "resolved"
    number: int | None = None
    html_url: str | None = None
    incident_key: str | None = None
    service_id: str | None = None


@dataclass(frozen=True, slots=True)
class AlreadyInState(Incident):
    """An update PagerDuty refused because the incident already had the status asked for
    (1001/1002): the status is reached, but nothing else the request carried was applied."""


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """One incident's update: a status, other fields of updateIncident's ``incident`` (title,
    priority, assignments, ...) sent as given, or those alone (``status`` None)."""

    incident_id: str
    status: str | None
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewIncident:
    """An incident to create: what :meth:`PagerDutyClient.create_incident` takes."""

    title: str
    service_id: str
    incident_key: str
    urgency: str | None = None
    details: str | None = None
    # Other fields of createIncident's ``incident`` (priority, escalation_policy, assignments,
    # conference_bridge, incident_type, body), sent as given; the fields above win over them.
    forwarded: Mapping[str, Any] | None = None


class PagerDutyClient(HttpClient):
    """A synchronous PagerDuty REST API v2 client holding one keep-alive connection pool.

    Create one per worker process at start and ``close()`` it at shutdown (or use it as a
    context manager). Not meant to be shared between threads that call it concurrently:
    PagerDuty advises serial requests per token.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        from_email: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "pagerbridge/0.1",
    ) -> None:
        """Set up the client; no request is made yet.

        Args:
            base_url: e.g. ``"https://api.pagerduty.com"`` (or a simulator's URL; a path
                prefix is kept).
            token: the REST API key, sent as ``Authorization: Token token=<token>``.
            from_email: email of a user on the account; docs/pagerduty.md: required on
                ``POST``/``PUT /incidents`` (a missing ``From`` gives 400).
            connect_timeout: seconds to open a connection, and to wait for a free one from
                the pool.
            read_timeout: seconds to wait for each read of the answer, and for each write of
                the request.
            transport: an httpx transport to use instead of the network (tests pass
                ``httpx.MockTransport``); connection limits then do not apply.
            user_agent: the ``User-Agent`` header.

        Raises:
            ValueError: on a malformed base URL, token, email, user agent or timeout. The
                message never contains the token.
        """
        _require_header_value("token", token)
        _require_header_value("from_email", from_email)
        _require_header_value("user_agent", user_agent)
        if "@" not in from_email:
            raise ValueError("from_email must be the email address of a PagerDuty user")
        url = http_url(base_url, "base_url")
        self._base_url = base_url
        self._from_email = from_email
        self._write_headers = {"From": from_email}
        self._token = token
        self._rate_limit: RateLimitReading | None = None
        self._http = open_client(
            base_url=url,
            headers={
                # docs/pagerduty.md: every request carries these four.
                "Authorization": f"Token token={token}",
                "Accept": _ACCEPT,
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            },
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"PagerDutyClient(base_url={self._base_url!r}, from_email={self._from_email!r})"

    # -- incidents -------------------------------------------------------------------------

    def create_incident(
        self,
        *,
        title: str,
        service_id: str,
        incident_key: str,
        urgency: str | None = None,
        details: str | None = None,
        forwarded: Mapping[str, Any] | None = None,
    ) -> Incident:
        """Create an incident: ``POST /incidents``, expecting 201.

        ``incident_key`` is required and non-empty because it is what makes a retry safe
        (docs/pagerduty.md): if the response to this call is lost, calling again with the same key
        raises :class:`DuplicateIncidentKeyError`, and the caller adopts the open incident
        found with :meth:`find_incidents`.

        Args:
            title: the incident's title.
            service_id: the PagerDuty service ID, e.g. ``"PXFL9LI"``.
            incident_key: the de-duplication key.
            urgency: ``"high"`` or ``"low"``; ``None`` leaves the service's default.
            details: free text for the incident body; ``None`` sends no body.
            forwarded: other fields of the ``incident`` object (``priority``,
                ``escalation_policy``, ``assignments``, ...), sent as given.

        Raises:
            ValueError: empty title, service_id or incident_key, or an unknown urgency.
            PagerDutyError: see ``errors.py``.
        """
        new = NewIncident(title, service_id, incident_key, urgency, details, forwarded)
        return _created(new, self._call("POST", "/incidents", _parse_one, payload=_creation(new)))

    def create_incidents(self, incidents: Sequence[NewIncident]) -> list[Incident | PagerDutyError]:
        """Create several incidents, their requests in flight at once (one connection each).

        What :meth:`create_incident` does for each, but the errors are returned in the
        incident's place rather than raised: every request was sent, so every answer counts.
        PagerDuty advises serial requests per token; the caller decides how many go together.

        Raises:
            ValueError: as :meth:`create_incident`, before any request is sent.
        """
        payloads = [_creation(new) for new in incidents]
        answers = self._calls_together("POST", "/incidents", _parse_one, payloads)
        return [
            answer if isinstance(answer, PagerDutyError) else _created(new, answer)
            for new, answer in zip(incidents, answers, strict=True)
        ]

    def update_incident(
        self, incident_id: str, status: str | None, fields: Mapping[str, Any] | None = None
    ) -> Incident:
        """Acknowledge or resolve one incident, or change its fields: ``PUT /incidents/{id}``.

        If PagerDuty says the incident is already in the wanted state (1001 "Incident Already
        Resolved" on a resolve, 1002 "Incident Already Acknowledged" on an acknowledge) this
        returns ``AlreadyInState(incident_id, status)`` instead of raising: the status is
        reached (the fields, if any, were not applied with it).

        The caller must not acknowledge an incident it has resolved: PagerDuty reopens it
        (docs/pagerduty.md, changelog 2025-09-18). This client cannot know the history, so it sends
        what it is asked to send.

        Args:
            incident_id: PagerDuty's incident ID.
            status: ``"acknowledged"``, ``"resolved"``, or None to change ``fields`` only.
            fields: other fields of updateIncident's ``incident`` (``title``, ``priority``,
                ``assignments``, ``escalation_level``, ...), sent as given.

        Raises:
            ValueError: empty ``incident_id``, a status not in ``UPDATE_STATUSES``, or neither
                a status nor fields.
            PagerDutyError: see ``errors.py``.
        """
        update = IncidentUpdate(incident_id, status, fields)
        body = _update_body(update)
        try:
            return self._call(
                "PUT",
                # Quoted whole: an ID is one path segment, never a path of its own.
                f"/incidents/{quote(incident_id, safe='')}",
                _parse_one,
                payload={"incident": body},
            )
        except PermanentError as err:
            if status is not None and _is_already_in_state(err, status):
                return AlreadyInState(id=incident_id, status=status)
            raise

    def update_incidents(
        self, updates: Sequence[IncidentUpdate | tuple[str, str]]
    ) -> list[Incident]:
        """Acknowledge, resolve or change the fields of up to 250 incidents in one bulk
        ``PUT /incidents``, each item with its own status and fields.

        "Already in the wanted state" (1001/1002) counts as success only for a one-item
        batch, where it can only be about that item. For a larger batch the answer does not
        say which item it is about, nor whether the others were applied, so the error is
        raised as is; the caller can fall back to :meth:`update_incident` per item.

        Args:
            updates: :class:`IncidentUpdate` items, or ``(incident_id, status)`` pairs.

        Returns:
            The incidents as PagerDuty returned them.

        Raises:
            ValueError: no updates, more than ``MAX_BULK_UPDATES`` (PagerDuty would answer
                413), or an invalid item.
            PagerDutyError: see ``errors.py``.
        """
        if not updates:
            raise ValueError("updates must not be empty")
        if len(updates) > MAX_BULK_UPDATES:
            raise ValueError(
                f"at most {MAX_BULK_UPDATES} updates per bulk request, got {len(updates)}; "
                "split the batch"
            )
        items = [
            update if isinstance(update, IncidentUpdate) else IncidentUpdate(*update)
            for update in updates
        ]
        payload = {"incidents": [{**_update_body(item), "id": item.incident_id} for item in items]}
        try:
            return self._call("PUT", "/incidents", _parse_list, payload=payload)
        except PermanentError as err:
            only = items[0]
            if (
                len(items) == 1
                and only.status is not None
                and _is_already_in_state(err, only.status)
            ):
                return [AlreadyInState(id=only.incident_id, status=only.status)]
            raise

    def find_incidents(
        self, incident_key: str, *, include_resolved: bool = False
    ) -> list[Incident]:
        """Look incidents up by de-duplication key: ``GET /incidents?incident_key=...``.

        Always sends ``date_range=all``, even for open incidents only: without it PagerDuty
        searches just the last 30 days (List Incidents reference: ``since``/``until`` default
        to a 30-day window, and ``date_range=all`` ignores them; not in docs/pagerduty.md), so an
        incident still open after a month would not be found and adopting it after a
        duplicate-key refusal would fail. Unless ``include_resolved``, only ``triggered`` and
        ``acknowledged`` incidents are asked for (``statuses[]``).

        At most ``MAX_FIND_RESULTS`` (100) incidents are returned: this makes one request and
        does not page. One key has at most one open incident per service, so this only cuts
        a long resolved history short.

        PagerDuty may also return incidents whose *alerts* carry the key (grouped incidents
        have no incident_key of their own), so ``Incident.incident_key`` may differ or be
        ``None``; the list is returned as PagerDuty sent it.

        Raises:
            ValueError: empty ``incident_key`` (docs/pagerduty.md: that would list everything).
            PagerDutyError: see ``errors.py``.
        """
        _require_non_empty(incident_key=incident_key)
        params: list[tuple[str, _QueryValue]] = [
            ("incident_key", incident_key),
            ("date_range", "all"),
            ("limit", MAX_FIND_RESULTS),
        ]
        if not include_resolved:
            params += [("statuses[]", "triggered"), ("statuses[]", "acknowledged")]

        found = self._call("GET", "/incidents", _parse_list, params=params)
        if len(found) >= MAX_FIND_RESULTS:
            logger.warning(
                "PagerDuty returned %d incidents for one incident_key; more were not fetched",
                len(found),
            )
        return found

    def get_incident(self, incident_id: str) -> Incident:
        """One incident: ``GET /incidents/{id}`` (its status and service).

        Raises:
            ValueError: an empty or malformed ``incident_id``.
            PagerDutyError: see ``errors.py`` (404 for an incident PagerDuty does not have).
        """
        _require_update(incident_id, "resolved")
        return self._call("GET", f"/incidents/{incident_id}", _parse_one)

    # -- webhook subscriptions -------------------------------------------------------------

    def create_webhook_subscription(
        self, url: str, *, service_id: str, events: Sequence[str], description: str
    ) -> WebhookSubscription:
        """``POST /webhook_subscriptions``: PagerDuty posts ``events`` of the incidents of
        ``service_id`` to ``url``. The answer is the only one that carries the secret."""
        _require_non_empty(url=url, service_id=service_id)
        payload = {
            "webhook_subscription": {
                "type": "webhook_subscription",
                "delivery_method": {"type": "http_delivery_method", "url": url},
                "description": description,
                "events": list(events),
                "filter": {"type": "service_reference", "id": service_id},
            }
        }
        return self._call(
            "POST",
            "/webhook_subscriptions",
            lambda answer: _parse_subscription(answer, _field(answer, "webhook_subscription")),
            payload=payload,
        )

    def list_webhook_subscriptions(self) -> list[WebhookSubscription]:
        """``GET /webhook_subscriptions``, every page (classic pagination)."""
        found: list[WebhookSubscription] = []
        offset = 0
        while True:
            page = self._call(
                "GET",
                "/webhook_subscriptions",
                _parse_subscription_page,
                params=[("limit", MAX_FIND_RESULTS), ("offset", offset)],
            )
            found += page[0]
            if not page[1] or not page[0]:
                return found
            offset += len(page[0])

    # -- lifecycle -------------------------------------------------------------------------

    def take_rate_limit(self) -> RateLimitReading | None:
        """The ``ratelimit-*`` headers of the latest answer not taken yet (the gate paces by
        them), or ``None`` if no answer carried them since."""
        reading, self._rate_limit = self._rate_limit, None
        return reading

    # -- one request -----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[_Answer], _T],
        *,
        payload: Mapping[str, Any] | None = None,
        params: list[tuple[str, _QueryValue]] | None = None,
    ) -> _T:
        """Make one request and parse its 2xx answer, or raise the classified error.

        The single exit for every error of the client, so the token scrub cannot be missed.
        """
        try:
            return parse(self._exchange(method, path, payload=payload, params=params))
        except PagerDutyError as error:
            self._scrub(error)
            raise  # keeps the ``from exc`` cause set in _exchange

    def _calls_together(
        self,
        method: str,
        path: str,
        parse: Callable[[_Answer], _T],
        payloads: Sequence[Mapping[str, Any]],
    ) -> list[_T | PagerDutyError]:
        """One request per payload, all in flight at once; each parsed 2xx answer, or its
        classified error, in order."""
        headers = self._write_headers if method != "GET" else None
        requests = [
            self._http.build_request(method, path, content=json_content(payload), headers=headers)
            for payload in payloads
        ]
        started = time.monotonic()
        replies = self._send_together(requests)
        results: list[_T | PagerDutyError] = []
        for reply in replies:
            try:
                results.append(parse(self._answer(method, path, reply, started)))
            except PagerDutyError as error:
                self._scrub(error)
                results.append(error)
        return results

    def _exchange(
        self,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None,
        params: list[tuple[str, _QueryValue]] | None,
    ) -> _Answer:
        # docs/pagerduty.md: From is required on POST and PUT /incidents; sent on every write.
        headers = self._write_headers if method != "GET" else None
        request = self._http.build_request(
            method,
            path,
            content=None if payload is None else json_content(payload),
            headers=headers,
            params=params,
        )
        started = time.monotonic()
        return self._answer(method, path, self._send(request), started)

    def _answer(
        self, method: str, path: str, reply: httpx.Response | httpx.HTTPError, started: float
    ) -> _Answer:
        """A 2xx answer, or the classified error raised; counted in the metrics either way."""
        endpoint = _endpoint(method, path)  # for metrics: counted here, the one way out
        if isinstance(reply, httpx.HTTPError):
            # TransportError (timeouts, network, protocol) and the rest (e.g. a body that
            # cannot be decoded): either way the request got no usable answer.
            metrics.observe_pagerduty_call(endpoint, None, time.monotonic() - started)
            logger.info("PagerDuty %s %s failed: %s", method, path, type(reply).__name__)
            raise classify_transport_failure(reply) from reply

        metrics.observe_pagerduty_call(endpoint, reply.status_code, time.monotonic() - started)
        self._rate_limit = rate_limit_reading(reply.headers) or self._rate_limit
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug(
            "PagerDuty %s %s -> %d in %.0f ms", method, path, reply.status_code, elapsed_ms
        )
        if not 200 <= reply.status_code <= 299:  # else done: no headers to make and read
            error = classify_response(reply.status_code, reply.content, reply.headers)
            if error is not None:
                raise error
        return _Answer.of(reply.status_code, reply.content)

    def _scrub(self, error: PagerDutyError) -> None:
        """Remove the token from an error's text before it leaves the client.

        Nothing we put in an error should contain it (it travels only in a header, and header
        values are validated so httpx cannot fail echoing one), but error text also comes from
        the far end and from library exceptions, so check instead of trusting.
        """
        error.redact(self._token)


def _creation(new: NewIncident) -> dict[str, Any]:
    """``POST /incidents``' body for ``new``, or ValueError."""
    _require_non_empty(title=new.title, service_id=new.service_id, incident_key=new.incident_key)
    if new.urgency is not None and new.urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {sorted(URGENCIES)}, got {new.urgency!r}")
    incident: dict[str, Any] = {
        **(new.forwarded or {}),
        "type": "incident",
        "title": new.title,
        "service": {"id": new.service_id, "type": "service_reference"},
        "incident_key": new.incident_key,
    }
    if new.urgency is not None:
        incident["urgency"] = new.urgency
    if new.details is not None:
        incident["body"] = {"type": "incident_body", "details": new.details}
    return {"incident": incident}


def _update_body(update: IncidentUpdate) -> dict[str, Any]:
    """One update's ``incident`` object (without the bulk item's ``id``), or ValueError."""
    _require_non_empty(incident_id=update.incident_id)
    if update.status is None and not update.fields:
        raise ValueError("an update needs a status or fields")
    body: dict[str, Any] = {**(update.fields or {}), "type": "incident_reference"}
    if update.status is not None:
        _require_update(update.incident_id, update.status)
        body["status"] = update.status
    return body


def _created(new: NewIncident, created: Incident) -> Incident:
    if created.incident_key is None:
        # The key was accepted with the incident even if the answer left it out.
        return dataclasses.replace(created, incident_key=new.incident_key)
    return created


def _endpoint(method: str, path: str) -> str:
    """The call's name in metrics: ``create``, ``update``, ``bulk_update``, ``find`` or
    ``subscriptions``."""
    if path == "/webhook_subscriptions":
        return "subscriptions"
    if method == "POST":
        return "create"
    if method == "GET":
        return "find"
    return "bulk_update" if path == "/incidents" else "update"


@dataclass(frozen=True, slots=True)
class _Answer:
    """A 2xx answer: status, raw body, and the body parsed as JSON (``None`` if it is not)."""

    status: int
    body: bytes
    json_body: object

    @classmethod
    def of(cls, status: int, body: bytes) -> _Answer:
        try:
            # json.loads detects UTF-8/16/32 from bytes itself (RFC 8259 section 8.1).
            parsed: object = json.loads(body)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            parsed = None
        return cls(status, body, parsed)


def _parse_one(answer: _Answer) -> Incident:
    """``{"incident": {...}}`` (create and single update answers) to an Incident."""
    return _parse_incident(answer, _field(answer, "incident"))


def _parse_list(answer: _Answer) -> list[Incident]:
    """``{"incidents": [...]}`` (bulk update and list answers) to Incidents."""
    raw = _field(answer, "incidents")
    if not isinstance(raw, list):
        raise classify_malformed_success(answer.status, answer.body, "no incidents list")
    return [_parse_incident(answer, item) for item in raw]


def _field(answer: _Answer, name: str) -> object:
    """``answer.json_body[name]``; a RetryableError if the body is not a JSON object."""
    if not isinstance(answer.json_body, dict):
        raise classify_malformed_success(answer.status, answer.body, "body is not a JSON object")
    return answer.json_body.get(name)


def _parse_incident(answer: _Answer, raw: object) -> Incident:
    """Build an Incident from one JSON incident object found in ``answer``."""
    if not isinstance(raw, dict):
        raise classify_malformed_success(answer.status, answer.body, "no incident object")
    incident_id, status = raw.get("id"), raw.get("status")
    if not isinstance(incident_id, str) or not incident_id:
        raise classify_malformed_success(answer.status, answer.body, "incident without an id")
    if not isinstance(status, str) or not status:
        raise classify_malformed_success(answer.status, answer.body, "incident without a status")
    number = raw.get("incident_number")
    html_url = raw.get("html_url")
    incident_key = raw.get("incident_key")
    service = raw.get("service")
    service_id = service.get("id") if isinstance(service, dict) else None
    return Incident(
        id=incident_id,
        status=status,
        # bool is an int subclass; true/false is not an incident number.
        number=number if isinstance(number, int) and not isinstance(number, bool) else None,
        html_url=html_url if isinstance(html_url, str) else None,
        incident_key=incident_key if isinstance(incident_key, str) else None,
        service_id=service_id if isinstance(service_id, str) else None,
    )


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    """A v3 webhook subscription as PagerDuty shows it; ``secret`` only in a create's answer."""

    id: str
    url: str
    events: tuple[str, ...]
    filter_type: str
    filter_id: str | None
    description: str | None = None
    secret: str | None = field(default=None, repr=False)


def _parse_subscription(answer: _Answer, raw: object) -> WebhookSubscription:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise classify_malformed_success(answer.status, answer.body, "no webhook_subscription")
    method = raw.get("delivery_method")
    method = method if isinstance(method, dict) else {}
    where = raw.get("filter")
    where = where if isinstance(where, dict) else {}
    events = raw.get("events")
    url, secret, description = method.get("url"), method.get("secret"), raw.get("description")
    return WebhookSubscription(
        id=raw["id"],
        url=url if isinstance(url, str) else "",
        events=tuple(e for e in events if isinstance(e, str)) if isinstance(events, list) else (),
        filter_type=str(where.get("type") or ""),
        filter_id=where.get("id") if isinstance(where.get("id"), str) else None,
        description=description if isinstance(description, str) else None,
        secret=secret if isinstance(secret, str) and secret else None,
    )


def _parse_subscription_page(answer: _Answer) -> tuple[list[WebhookSubscription], bool]:
    raw = _field(answer, "webhook_subscriptions")
    if not isinstance(raw, list):
        raise classify_malformed_success(answer.status, answer.body, "no subscriptions list")
    more = isinstance(answer.json_body, dict) and answer.json_body.get("more") is True
    return [_parse_subscription(answer, item) for item in raw], more


def _is_already_in_state(error: PermanentError, wanted: str) -> bool:
    """Whether ``error`` says the incident already has the ``wanted`` status (1001/1002)."""
    code, text = _ALREADY_IN_STATE[wanted]
    texts = (error.message, *error.errors)
    return error.code == code or any(text in part.lower() for part in texts)


def _require_update(incident_id: str, status: str) -> None:
    _require_non_empty(incident_id=incident_id)
    if status not in UPDATE_STATUSES:
        raise ValueError(f"status must be one of {sorted(UPDATE_STATUSES)}, got {status!r}")


def _require_non_empty(**values: str) -> None:
    for name, value in values.items():
        if not value or not value.strip():
            raise ValueError(f"{name} must not be empty")


def _require_header_value(name: str, value: str) -> None:
    """Refuse a value that would make an invalid header, without echoing it.

    A stray newline (a token read from a file) would make h11 raise LocalProtocolError
    "Illegal header value b'Token token=...'" at request time, with the token in the message.
    """
    if not value or value != value.strip() or not all(" " <= ch <= "~" for ch in value):
        raise ValueError(
            f"{name} must be non-empty printable ASCII without leading or trailing whitespace"
        )
