"""PagerDutyClient against an in-process fake PagerDuty (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from worker.pagerduty import (
    AlreadyInState,
    CredentialsError,
    DuplicateIncidentKeyError,
    Incident,
    IncidentUpdate,
    NewIncident,
    PagerDutyClient,
    PagerDutyError,
    PermanentError,
    RetryableError,
)

TOKEN = "u+Secr3tT0kenValue_xyz"
FROM = "bridge@example.com"
BASE = "https://api.pagerduty.com"
ACCEPT = "application/vnd.pagerduty+json;version=2"

Responder = Callable[[httpx.Request], httpx.Response]


class FakePagerDuty:
    """Records every request and answers with ``respond`` (a 200 ``{}`` until told otherwise)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.respond: Responder = lambda request: httpx.Response(200, json={})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        def respond(request: httpx.Request) -> httpx.Response:
            if body is None:
                return httpx.Response(status, headers=headers)
            if isinstance(body, bytes):
                return httpx.Response(status, content=body, headers=headers)
            return httpx.Response(status, json=body, headers=headers)

        self.respond = respond

    def fail(self, exc: Exception) -> None:
        def respond(request: httpx.Request) -> httpx.Response:
            raise exc

        self.respond = respond

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content)


@pytest.fixture
def pagerduty() -> FakePagerDuty:
    return FakePagerDuty()


@pytest.fixture
def client(pagerduty: FakePagerDuty) -> Iterator[PagerDutyClient]:
    with PagerDutyClient(
        BASE,
        TOKEN,
        FROM,
        connect_timeout=2.5,
        read_timeout=7.0,
        transport=httpx.MockTransport(pagerduty),
        user_agent="pagerbridge-test/1",
    ) as pd_client:
        yield pd_client


def incident_json(**overrides: Any) -> dict[str, Any]:
    incident = {
        "id": "PT4KHLK",
        "type": "incident",
        "incident_number": 1234,
        "status": "triggered",
        "html_url": "https://acme.pagerduty.com/incidents/PT4KHLK",
        "incident_key": "coscale:alert:42",
    }
    incident.update(overrides)
    return incident


def error_json(message: str, code: int | None = None, errors: list[str] | None = None) -> Any:
    error: dict[str, Any] = {"message": message, "errors": errors or []}
    if code is not None:
        error["code"] = code
    return {"error": error}


def sent_headers(request: httpx.Request) -> dict[str, str]:
    """The headers PagerDuty would see, minus the ones httpx adds for the wire itself."""
    wire_only = {"host", "content-length", "accept-encoding", "connection"}
    return {name: value for name, value in request.headers.items() if name not in wire_only}


WRITE_HEADERS = {
    "authorization": f"Token token={TOKEN}",
    "accept": ACCEPT,
    "content-type": "application/json",
    "user-agent": "pagerbridge-test/1",
    "from": FROM,
}
READ_HEADERS = {name: value for name, value in WRITE_HEADERS.items() if name != "from"}


# -- create ----------------------------------------------------------------------------------


def test_create_sends_the_documented_request_and_parses_the_incident(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    # Given PagerDuty accepts the create
    pagerduty.answer(201, {"incident": incident_json()})

    # When an incident is created with every optional field
    incident = client.create_incident(
        title="CPU high on web-1",
        service_id="PXFL9LI",
        incident_key="coscale:alert:42",
        urgency="high",
        details="cpu 97% for 5 min",
    )

    # Then the request is exactly docs/pagerduty.md's POST /incidents
    request = pagerduty.last
    assert request.method == "POST"
    assert str(request.url) == "https://api.pagerduty.com/incidents"
    assert sent_headers(request) == WRITE_HEADERS
    assert pagerduty.last_json() == {
        "incident": {
            "type": "incident",
            "title": "CPU high on web-1",
            "service": {"id": "PXFL9LI", "type": "service_reference"},
            "incident_key": "coscale:alert:42",
            "urgency": "high",
            "body": {"type": "incident_body", "details": "cpu 97% for 5 min"},
        }
    }
    # And the answer becomes an Incident
    assert incident == Incident(
        id="PT4KHLK",
        status="triggered",
        number=1234,
        html_url="https://acme.pagerduty.com/incidents/PT4KHLK",
        incident_key="coscale:alert:42",
    )


def test_create_without_optional_fields_sends_neither_urgency_nor_body(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    # Given an answer that leaves the key out
    pagerduty.answer(201, {"incident": {"id": "P1", "status": "triggered"}})

    incident = client.create_incident(title="t", service_id="S1", incident_key="k1")

    assert pagerduty.last_json() == {
        "incident": {
            "type": "incident",
            "title": "t",
            "service": {"id": "S1", "type": "service_reference"},
            "incident_key": "k1",
        }
    }
    # The key we sent is kept on the result
    assert incident == Incident(id="P1", status="triggered", incident_key="k1")


def test_create_refused_for_an_open_duplicate_key(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(
        400,
        error_json(
            "Invalid Input Provided",
            2001,
            ["Open incident with matching dedup key already exists on this service"],
        ),
    )

    with pytest.raises(DuplicateIncidentKeyError) as caught:
        client.create_incident(title="t", service_id="S1", incident_key="k1")

    assert caught.value.status == 400


@pytest.mark.parametrize(
    "kwargs",
    [
        {"title": "t", "service_id": "S1", "incident_key": ""},
        {"title": "t", "service_id": "", "incident_key": "k"},
        {"title": " ", "service_id": "S1", "incident_key": "k"},
        {"title": "t", "service_id": "S1", "incident_key": "k", "urgency": "urgent"},
    ],
)
def test_create_refuses_bad_arguments_without_calling_pagerduty(
    client: PagerDutyClient, pagerduty: FakePagerDuty, kwargs: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match=r"must"):
        client.create_incident(**kwargs)

    assert pagerduty.requests == []


# -- single update ---------------------------------------------------------------------------


def test_update_incident_puts_the_status(client: PagerDutyClient, pagerduty: FakePagerDuty) -> None:
    pagerduty.answer(200, {"incident": incident_json(status="acknowledged")})

    incident = client.update_incident("PT4KHLK", "acknowledged")

    request = pagerduty.last
    assert request.method == "PUT"
    assert str(request.url) == "https://api.pagerduty.com/incidents/PT4KHLK"
    assert sent_headers(request) == WRITE_HEADERS
    assert pagerduty.last_json() == {
        "incident": {"type": "incident_reference", "status": "acknowledged"}
    }
    assert incident.status == "acknowledged"
    assert incident.id == "PT4KHLK"


def test_update_incident_quotes_the_id_as_one_path_segment(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incident": incident_json(status="resolved")})

    client.update_incident("../services/P1", "resolved")

    assert pagerduty.last.url.raw_path == b"/incidents/..%2Fservices%2FP1"


@pytest.mark.parametrize(
    ("wanted", "answer"),
    [
        ("resolved", error_json("Incident Already Resolved", 1001)),
        ("acknowledged", error_json("Incident Already Acknowledged", 1002)),
        # No code, only the text (docs/pagerduty.md: this behaviour is not documented)
        ("resolved", error_json("Invalid Input Provided", None, ["Incident Already Resolved"])),
        ("acknowledged", error_json("incident already acknowledged")),
    ],
)
def test_update_to_a_state_the_incident_already_has_is_success(
    client: PagerDutyClient, pagerduty: FakePagerDuty, wanted: str, answer: Any
) -> None:
    # Given PagerDuty says the incident is already there
    pagerduty.answer(400, answer)

    # When we ask for that state / Then it counts as done
    # (marked: the status is reached, nothing else the request carried was applied)
    assert client.update_incident("P1", wanted) == AlreadyInState(id="P1", status=wanted)


def test_acknowledge_of_an_already_resolved_incident_is_not_success(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    # 1001 answers a *resolve*; for an acknowledge it means the goal was not reached.
    pagerduty.answer(400, error_json("Incident Already Resolved", 1001))

    with pytest.raises(PermanentError) as caught:
        client.update_incident("P1", "acknowledged")

    assert caught.value.code == 1001


@pytest.mark.parametrize(("incident_id", "status"), [("", "resolved"), ("P1", "triggered")])
def test_update_refuses_bad_arguments(
    client: PagerDutyClient, pagerduty: FakePagerDuty, incident_id: str, status: str
) -> None:
    with pytest.raises(ValueError, match=r"must"):
        client.update_incident(incident_id, status)

    assert pagerduty.requests == []


def test_update_incident_sends_the_fields_with_the_status_or_alone(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incident": incident_json(status="acknowledged")})
    fields = {
        "priority": {"id": "PPRIO01", "type": "priority_reference"},
        "assignments": [{"assignee": {"id": "PUSER01", "type": "user_reference"}}],
    }

    client.update_incident("PT4KHLK", "acknowledged", fields)
    assert pagerduty.last_json() == {
        "incident": {"type": "incident_reference", "status": "acknowledged", **fields}
    }

    client.update_incident("PT4KHLK", None, {"escalation_level": 2, "title": "disk full"})
    assert pagerduty.last_json() == {
        "incident": {"type": "incident_reference", "escalation_level": 2, "title": "disk full"}
    }


def test_an_update_needs_a_status_or_fields(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    with pytest.raises(ValueError, match=r"a status or fields"):
        client.update_incident("P1", None)
    with pytest.raises(ValueError, match=r"a status or fields"):
        client.update_incidents([IncidentUpdate("P1", None, {})])

    assert pagerduty.requests == []


# -- bulk update -----------------------------------------------------------------------------


def test_update_incidents_sends_one_bulk_put(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(
        200,
        {
            "incidents": [
                incident_json(id="P1", status="resolved"),
                incident_json(id="P2", status="acknowledged", incident_number=7),
            ]
        },
    )

    incidents = client.update_incidents([("P1", "resolved"), ("P2", "acknowledged")])

    request = pagerduty.last
    assert request.method == "PUT"
    assert str(request.url) == "https://api.pagerduty.com/incidents"
    assert sent_headers(request) == WRITE_HEADERS
    assert pagerduty.last_json() == {
        "incidents": [
            {"id": "P1", "type": "incident_reference", "status": "resolved"},
            {"id": "P2", "type": "incident_reference", "status": "acknowledged"},
        ]
    }
    assert [(i.id, i.status, i.number) for i in incidents] == [
        ("P1", "resolved", 1234),
        ("P2", "acknowledged", 7),
    ]


def test_each_bulk_item_carries_its_own_fields(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incidents": [incident_json(id="P1"), incident_json(id="P2")]})

    client.update_incidents(
        [
            IncidentUpdate("P1", "resolved", {"resolution": "disk cleaned"}),
            IncidentUpdate("P2", None, {"priority": "P1"}),
            IncidentUpdate("P3", "resolved"),
        ]
    )

    assert pagerduty.last_json() == {
        "incidents": [
            {
                "id": "P1",
                "type": "incident_reference",
                "status": "resolved",
                "resolution": "disk cleaned",
            },
            {"id": "P2", "type": "incident_reference", "priority": "P1"},
            {"id": "P3", "type": "incident_reference", "status": "resolved"},
        ]
    }


def test_update_incidents_accepts_exactly_250(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incidents": []})

    client.update_incidents([(f"P{n}", "resolved") for n in range(250)])

    assert len(pagerduty.last_json()["incidents"]) == 250


@pytest.mark.parametrize("count", [0, 251])
def test_update_incidents_refuses_empty_or_more_than_250(
    client: PagerDutyClient, pagerduty: FakePagerDuty, count: int
) -> None:
    # docs/pagerduty.md: more than 250 items gives 413; refuse before spending a request.
    with pytest.raises(ValueError, match=r"empty|at most 250"):
        client.update_incidents([(f"P{n}", "resolved") for n in range(count)])

    assert pagerduty.requests == []


def test_bulk_of_one_already_resolved_is_success(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(400, error_json("Incident Already Resolved", 1001))

    assert client.update_incidents([("P1", "resolved")]) == [
        AlreadyInState(id="P1", status="resolved")
    ]


def test_bulk_of_many_already_resolved_is_ambiguous_and_raised(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    # Which item, and were the others applied? The answer does not say: let the caller decide.
    pagerduty.answer(400, error_json("Incident Already Resolved", 1001))

    with pytest.raises(PermanentError):
        client.update_incidents([("P1", "resolved"), ("P2", "resolved")])


# -- find ------------------------------------------------------------------------------------


def test_find_open_incidents_by_key(client: PagerDutyClient, pagerduty: FakePagerDuty) -> None:
    pagerduty.answer(200, {"incidents": [incident_json()], "limit": 100, "more": False})

    found = client.find_incidents("coscale:alert:42")

    request = pagerduty.last
    assert request.method == "GET"
    assert request.url.path == "/incidents"
    assert request.url.params.multi_items() == [
        ("incident_key", "coscale:alert:42"),
        ("date_range", "all"),
        ("limit", "100"),
        ("statuses[]", "triggered"),
        ("statuses[]", "acknowledged"),
    ]
    # A read: every header but From
    assert sent_headers(request) == READ_HEADERS
    assert request.content == b""
    assert found == [
        Incident(
            id="PT4KHLK",
            status="triggered",
            number=1234,
            html_url="https://acme.pagerduty.com/incidents/PT4KHLK",
            incident_key="coscale:alert:42",
        )
    ]


def test_find_including_resolved_has_no_status_filter(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incidents": []})

    assert client.find_incidents("k 1/&x", include_resolved=True) == []

    assert pagerduty.last.url.params.multi_items() == [
        ("incident_key", "k 1/&x"),
        ("date_range", "all"),
        ("limit", "100"),
    ]


def test_find_refuses_an_empty_key(client: PagerDutyClient, pagerduty: FakePagerDuty) -> None:
    # docs/pagerduty.md: an empty incident_key would be no filter at all.
    with pytest.raises(ValueError, match="incident_key"):
        client.find_incidents("")

    assert pagerduty.requests == []


# -- errors ----------------------------------------------------------------------------------


def test_rate_limit_answer_carries_retry_after(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(429, error_json("Rate Limit Exceeded", 2020), {"ratelimit-reset": "12"})

    with pytest.raises(RetryableError) as caught:
        client.find_incidents("k")

    assert caught.value.retry_after == 12.0
    assert caught.value.status == 429


def test_bad_token_is_a_credentials_error(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(401, error_json("Authentication failed", 2006))

    with pytest.raises(CredentialsError):
        client.update_incident("P1", "resolved")


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>ok</html>", b'{"incident": null}', b'{"incident": {"status": "triggered"}}'],
)
def test_unreadable_success_answer_is_retryable(
    client: PagerDutyClient, pagerduty: FakePagerDuty, body: bytes
) -> None:
    # The create may or may not have happened: a retry with the same key is safe.
    pagerduty.answer(201, body)

    with pytest.raises(RetryableError) as caught:
        client.create_incident(title="t", service_id="S1", incident_key="k")

    assert caught.value.status == 201


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectTimeout("timed out"), "connect timeout"),
        (httpx.ReadTimeout("The read operation timed out"), "read timeout"),
        (httpx.PoolTimeout("no free connection"), "pool timeout"),
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "DNS lookup failed"),
        (httpx.RemoteProtocolError("Server disconnected"), "connection closed by server"),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), "connection reset"),
        (httpx.DecodingError("bad gzip"), "undecodable response body"),
    ],
)
def test_transport_errors_become_retryable_errors_from_the_httpx_error(
    client: PagerDutyClient, pagerduty: FakePagerDuty, exc: Exception, kind: str
) -> None:
    pagerduty.fail(exc)

    with pytest.raises(RetryableError) as caught:
        client.create_incident(title="t", service_id="S1", incident_key="k")

    # No httpx type escapes; the original stays reachable as the cause for debugging.
    assert not isinstance(caught.value, httpx.HTTPError)
    assert caught.value.__cause__ is exc
    assert caught.value.status is None
    assert kind in str(caught.value)


def test_token_echoed_by_the_far_end_is_scrubbed_from_str_and_repr(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    # Given an answer that (against all odds) repeats the token back
    pagerduty.answer(
        401, error_json(f"Token token={TOKEN} is not valid", 2006, [f"bad token {TOKEN}"])
    )

    with pytest.raises(CredentialsError) as caught:
        client.find_incidents("k")

    # Then it appears nowhere in what gets logged
    error = caught.value
    for text in (str(error), repr(error), *error.args, error.message, *error.errors):
        assert TOKEN not in text
    assert "[redacted]" in str(error)


def test_token_in_a_transport_error_message_is_scrubbed(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.fail(httpx.ConnectError(f"proxy refused Token token={TOKEN}"))

    with pytest.raises(RetryableError) as caught:
        client.find_incidents("k")

    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503])
def test_no_error_mentions_the_token_or_the_http_client(
    client: PagerDutyClient, pagerduty: FakePagerDuty, status: int
) -> None:
    pagerduty.answer(status, error_json("nope", 2001, ["details"]))

    with pytest.raises(PagerDutyError) as caught:
        client.update_incidents([("P1", "resolved"), ("P2", "resolved")])

    for text in (str(caught.value), repr(caught.value)):
        assert TOKEN not in text
        assert "httpx" not in text
        assert "Client" not in text
        assert "\n" not in text
    assert f"HTTP {status}" in str(caught.value)


# -- construction ----------------------------------------------------------------------------


def test_timeouts_are_explicit_on_every_request(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    pagerduty.answer(200, {"incidents": []})

    client.find_incidents("k")

    assert pagerduty.last.extensions["timeout"] == {
        "connect": 2.5,
        "read": 7.0,
        "write": 7.0,
        "pool": 2.5,
    }


def test_base_url_path_prefix_is_kept(pagerduty: FakePagerDuty) -> None:
    pagerduty.answer(200, {"incidents": []})
    transport = httpx.MockTransport(pagerduty)

    with PagerDutyClient("http://simulator:8080/pd", TOKEN, FROM, transport=transport) as pd:
        pd.find_incidents("k")

    assert pagerduty.last.url.path == "/pd/incidents"
    assert pagerduty.last.headers["user-agent"] == "pagerbridge/0.1"


@pytest.mark.parametrize(
    ("base_url", "token", "from_email"),
    [
        (BASE, TOKEN + "\n", FROM),  # a token read from a file with its newline
        (BASE, " " + TOKEN, FROM),
        (BASE, "", FROM),
        (BASE, TOKEN, ""),
        (BASE, TOKEN, "not-an-email"),
        ("api.pagerduty.com", TOKEN, FROM),
        ("ftp://api.pagerduty.com", TOKEN, FROM),
    ],
)
def test_bad_configuration_is_refused_without_echoing_the_token(
    base_url: str, token: str, from_email: str
) -> None:
    with pytest.raises(ValueError) as caught:
        PagerDutyClient(base_url, token, from_email)

    assert TOKEN not in str(caught.value)


def test_client_repr_hides_the_token(client: PagerDutyClient) -> None:
    assert TOKEN not in repr(client)
    assert repr(client) == f"PagerDutyClient(base_url={BASE!r}, from_email={FROM!r})"


# -- creates in flight together ----------------------------------------------------------------


def test_create_incidents_answers_each_in_its_place_errors_returned_not_raised(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        key = json.loads(request.content)["incident"]["incident_key"]
        if key == "dup":
            message = "Open incident with matching dedup key already exists on this service"
            return httpx.Response(400, json=error_json("Invalid Input Provided", 2001, [message]))
        if key == "down":
            return httpx.Response(503, text=f"upstream down, Token token={TOKEN}")
        return httpx.Response(201, json={"incident": incident_json(id=f"P-{key}")})

    pagerduty.respond = respond
    made = client.create_incidents(
        [
            NewIncident("one", "S1", "k1", urgency="low", details="d"),
            NewIncident("two", "S1", "dup"),
            NewIncident("three", "S1", "down"),
            NewIncident("four", "S1", "k4"),
        ]
    )
    first, dup, down, last = made
    assert isinstance(first, Incident) and first.id == "P-k1"
    assert isinstance(dup, DuplicateIncidentKeyError)
    assert isinstance(down, RetryableError) and down.status == 503
    assert TOKEN not in str(down) and TOKEN not in repr(down)
    assert isinstance(last, Incident) and last.id == "P-k4"
    # Each request as create_incident sends it; in flight together, they arrive in any order
    sent = {json.loads(r.content)["incident"]["title"]: r for r in pagerduty.requests}
    assert sorted(sent) == ["four", "one", "three", "two"]
    assert json.loads(sent["one"].content)["incident"]["urgency"] == "low"
    assert all(sent_headers(r)["from"] == FROM for r in pagerduty.requests)


def test_create_incidents_fills_in_the_key_an_answer_left_out(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    body = incident_json()
    body.pop("incident_key", None)
    pagerduty.answer(201, {"incident": body})
    (made,) = client.create_incidents([NewIncident("t", "S1", "k9")])
    assert isinstance(made, Incident) and made.incident_key == "k9"


def test_create_incidents_refuses_a_bad_one_before_sending_any(
    client: PagerDutyClient, pagerduty: FakePagerDuty
) -> None:
    with pytest.raises(ValueError, match="urgency must be"):
        client.create_incidents(
            [NewIncident("t", "S1", "k1"), NewIncident("t", "S1", "k2", urgency="urgent")]
        )
    assert pagerduty.requests == []
