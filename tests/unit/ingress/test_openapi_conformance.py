"""The PagerDuty-shaped API contact against PagerDuty's published OpenAPI (its openapiv3.json):
every answer's status is one the OpenAPI documents for the operation, and its body validates
against the schema documented for that operation and status; the requests the bridge's own
PagerDuty client sends validate against the same operations' request schemas.

The file is PagerDuty's, read where the shared folder keeps it (``PAGERDUTY_OPENAPI`` names
another path); where it is absent these tests skip, saying where they looked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from openapi_schema_validator import OAS30ReadValidator, OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, utcnow
from tests.fakes import ListQueue
from tests.unit.ingress.test_access import DB_TOKEN, DEFAULT_TOKEN, ROUTES, WEB_TOKEN
from worker.ingress.app import create_app
from worker.pagerduty import IncidentUpdate, PagerDutyClient
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import apply_event
from worker.settings import Settings

REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_LOCATION = REPOSITORY.parent / "shared" / "pagerduty" / "openapiv3.json"
LOCATION_VARIABLE = "PAGERDUTY_OPENAPI"
# The registry's name for the document: its own "#/components/..." references resolve in it.
DOCUMENT_URI = "urn:pagerduty:rest:openapiv3"
JSON = "application/json"
FROM = "oncall@example.com"
SERVICE = {"id": "PDEFAULT", "type": "service_reference"}
WEB_SERVICE = {"id": "PWEB001", "type": "service_reference"}
FORWARDED = {
    "priority": {"id": "PPRIO01", "type": "priority_reference"},
    "assignments": [{"assignee": {"id": "PUSER01", "type": "user_reference"}}],
    "incident_type": {"name": "major_incident"},
    "conference_bridge": {"conference_number": "+1 415-555-1212,,,,1234#"},
    "body": {"type": "incident_body", "details": {"disk": "/var", "used": 99}},
}
# updateIncident's fields beside the status (resolution goes only with a resolve).
UPDATE_FIELDS = {
    "title": "disk full on web-1",
    "urgency": "low",
    "priority": {"id": "PPRIO01", "type": "priority_reference"},
    "escalation_level": 2,
    "assignments": [{"assignee": {"id": "PUSER01", "type": "user_reference"}}],
    "incident_type": {"name": "major_incident"},
    "conference_bridge": {"conference_url": "https://meet.example/x"},
}

# Answers the bridge gives that PagerDuty's OpenAPI does not list for the operation, each with
# why, and the response whose schema its body is checked against instead. An entry the OpenAPI
# comes to document fails the test, so the list only shrinks.
UNDOCUMENTED_BY_PAGERDUTY = {
    ("updateIncident", 400): (
        "/components/responses/ArgumentError",
        "invalid input (malformed JSON, a status PagerDuty does not have, what the bridge "
        "does not take): 400 2001, as PagerDuty answers it on its other writes "
        "(docs/pagerduty.md); no status the OpenAPI lists for updateIncident (200, 401, 403, "
        "404, 429) means invalid input",
    ),
}


def _escaped(segment: str) -> str:
    """A JSON pointer segment (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    template: str
    pointer: str  # where it is in the document


class PagerDutyOpenApi:
    """PagerDuty's OpenAPI document, asked what an operation documents.

    Schemas are validated in OpenAPI 3.0's dialect (``nullable``, ``readOnly``, its formats)
    by openapi-schema-validator, the ``$ref``s resolved by ``referencing`` in the document.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(document, default_specification=DRAFT4)
        self._registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self._resolver = self._registry.resolver(DOCUMENT_URI)
        self.operations = {
            operation["operationId"]: Operation(
                operation["operationId"],
                method.upper(),
                path,
                f"/paths/{_escaped(path)}/{method}",
            )
            for path, item in document["paths"].items()
            for method, operation in item.items()
            if isinstance(operation, dict) and "operationId" in operation
        }

    def _at(self, pointer: str) -> Any:
        return self._resolver.lookup(f"{DOCUMENT_URI}#{pointer}").contents

    def _followed(self, pointer: str) -> str:
        """``pointer``, or where its ``$ref``s lead."""
        node = self._at(pointer)
        while isinstance(node, dict) and "$ref" in node:
            reference = node["$ref"]
            assert reference.startswith("#/"), reference
            pointer = reference[1:]
            node = self._at(pointer)
        return pointer

    def _problems(self, validator: Any, pointer: str, instance: Any, where: str = "") -> list[str]:
        checker = validator(
            {"$ref": f"{DOCUMENT_URI}#{pointer}"},
            registry=self._registry,
            format_checker=validator.FORMAT_CHECKER,
        )
        return [
            f"{where or error.json_path}: {error.message[:400]}"
            for error in sorted(checker.iter_errors(instance), key=str)
        ]

    def operation_of(self, method: str, path: str) -> Operation:
        """The operation a request is for: a literal path before a templated one."""
        candidates = [
            operation
            for operation in self.operations.values()
            if operation.method == method
            and re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", operation.template), path)
        ]
        assert candidates, f"{method} {path}: no operation in PagerDuty's OpenAPI"
        return min(candidates, key=lambda operation: operation.template.count("{"))

    def request_example(self, operation_id: str) -> Any:
        """The first example of the operation's JSON request body."""
        body = self._followed(f"{self.operations[operation_id].pointer}/requestBody")
        examples = self._at(f"{body}/content/{_escaped(JSON)}/examples")
        return next(iter(examples.values()))["value"]

    def documented_statuses(self, operation_id: str) -> list[str]:
        return list(self._at(f"{self.operations[operation_id].pointer}/responses"))

    def answer_problems(self, operation_id: str, status: int, body: Any) -> list[str]:
        """What is wrong with an answer to ``operation_id`` by PagerDuty's OpenAPI: a status it
        does not document for the operation, or a body its schema refuses."""
        documented = self.documented_statuses(operation_id)
        exception = UNDOCUMENTED_BY_PAGERDUTY.get((operation_id, status))
        if exception is not None:
            if str(status) in documented:
                return [f"{operation_id} now documents {status}: drop it from the exceptions"]
            response = self._followed(exception[0])
        elif str(status) not in documented:
            return [
                f"{status} is not an answer PagerDuty's OpenAPI documents for {operation_id} "
                f"(it documents {', '.join(documented)})"
            ]
        else:
            response = self._followed(f"{self.operations[operation_id].pointer}/responses/{status}")
        content = self._at(response).get("content", {})
        if JSON not in content:
            return [] if body is None else [f"{operation_id} {status}: documents no JSON body"]
        # Answers are what the server writes: readOnly fields belong, writeOnly ones do not.
        return self._problems(
            OAS30ReadValidator, f"{response}/content/{_escaped(JSON)}/schema", body
        )

    def request_problems(
        self,
        operation_id: str,
        *,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
    ) -> list[str]:
        """What is wrong with a request for ``operation_id``: its headers, path and query
        parameters and JSON body against what the operation documents."""
        operation = self.operations[operation_id]
        problems: list[str] = []
        headers = {name.lower(): value for name, value in headers.items()}
        declared = {}
        for base in (f"/paths/{_escaped(operation.template)}", operation.pointer):
            for index, _ in enumerate(self._at(base).get("parameters", [])):
                pointer = self._followed(f"{base}/parameters/{index}")
                parameter = self._at(pointer)
                declared[(parameter["in"], parameter["name"].lower())] = pointer
        for (where, name), pointer in declared.items():
            if where == "header" and self._at(pointer).get("required"):
                if name not in headers:
                    problems.append(f"header {name}: required, missing")
                else:
                    problems += self._problems(
                        OAS30Validator, f"{pointer}/schema", headers[name], f"header {name}"
                    )
        names = re.findall(r"\{([^}/]+)\}", operation.template)
        values = re.fullmatch(re.sub(r"\{[^}/]+\}", "([^/]+)", operation.template), path)
        assert values is not None, f"{path} is not {operation.template}"
        for name, value in zip(names, values.groups(), strict=True):
            problems += self._problems(
                OAS30Validator, f"{declared[('path', name.lower())]}/schema", value, f"path {name}"
            )
        for name in dict.fromkeys(name for name, _ in query):
            pointer = declared.get(("query", name.lower()))
            if pointer is None:
                problems.append(f"query {name}: not a parameter of {operation_id}")
                continue
            schema = self._at(f"{pointer}/schema")
            given = [_typed(value, schema) for key, value in query if key == name]
            # A non-array parameter given more than once (style form, explode, as PagerDuty's
            # statuses[]): each value alone.
            for value in [given] if schema.get("type") == "array" else given:
                problems += self._problems(
                    OAS30Validator, f"{pointer}/schema", value, f"query {name}"
                )
        for scheme in self._at("/security"):
            for name in scheme:
                header = self._at(f"/components/securitySchemes/{name}")["name"].lower()
                if header not in headers:
                    problems.append(f"header {header}: the {name} credentials, missing")
        if "requestBody" not in self._at(operation.pointer):
            return problems + ([] if body is None else [f"{operation_id} takes no body"])
        request_body = self._followed(f"{operation.pointer}/requestBody")
        if body is None:
            return problems + (
                [f"{operation_id}: a body is required"]
                if self._at(request_body).get("required")
                else []
            )
        # Plain OAS30Validator, not its write variant: PagerDuty's references (ServiceReference,
        # UserReference, ...) inherit ``readOnly`` id and type from Tag/allOf/0, so a write
        # validator refuses even the request examples of PagerDuty's own document.
        return problems + self._problems(
            OAS30Validator, f"{request_body}/content/{_escaped(JSON)}/schema", body
        )


def _typed(value: str, schema: dict[str, Any]) -> Any:
    """A query string value as the parameter's schema types it."""
    kind = schema.get("items", {}).get("type") if schema.get("type") == "array" else None
    kind = kind or schema.get("type")
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _location() -> Path:
    named = os.environ.get(LOCATION_VARIABLE)
    return Path(named) if named else DEFAULT_LOCATION


def load_openapi() -> PagerDutyOpenApi:
    """PagerDuty's OpenAPI where ``PAGERDUTY_OPENAPI`` or the shared folder has it; the test
    skips, saying where it looked, where it has not."""
    location = _location()
    if not location.is_file():
        pytest.skip(
            f"PagerDuty's OpenAPI is not at {location} (set {LOCATION_VARIABLE} to its "
            "openapiv3.json)"
        )
    return PagerDutyOpenApi(json.loads(location.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def openapi() -> PagerDutyOpenApi:
    return load_openapi()


# -- the bridge, driven as PagerDuty's clients drive PagerDuty -------------------------------


def pagerduty_headers(token: str | None) -> dict[str, str]:
    """What PagerDuty's clients send (PagerDuty's REST API reference: Accept, Content-Type,
    From, and the token in ``Authorization: Token token=...``)."""
    headers = {
        "Accept": "application/vnd.pagerduty+json;version=2",
        "Content-Type": JSON,
        "From": FROM,
    }
    if token is not None:
        headers["Authorization"] = f"Token token={token}"
    return headers


class Contact:
    """The bridge's API contact; every answer is checked against PagerDuty's OpenAPI."""

    def __init__(
        self,
        client: TestClient,
        openapi: PagerDutyOpenApi,
        queue: ListQueue,
        sessions: sessionmaker[Session],
    ) -> None:
        self.client = client
        self.openapi = openapi
        self.queue = queue
        self.sessions = sessions

    def call(
        self,
        operation_id: str,
        path: str,
        *,
        status: int,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        token: str | None = DEFAULT_TOKEN,
        content: bytes | None = None,
        conforming: bool = True,
    ) -> Any:
        """Send a request for ``operation_id``; check that the answer is ``status`` and that
        PagerDuty's OpenAPI documents it; return its body. A ``conforming`` request is checked
        against the OpenAPI first (the invalid input of a 400 is sent with ``conforming=False``).
        """
        operation = self.openapi.operations[operation_id]
        headers = pagerduty_headers(token)
        if conforming:
            assert content is None
            problems = self.openapi.request_problems(
                operation_id, path=path, query=query or [], headers=headers, body=body
            )
            assert problems == [], f"the test's request is not PagerDuty's: {problems}"
        answer = self.client.request(
            operation.method,
            path,
            params=query,
            headers=headers,
            content=content if content is not None else None if body is None else json.dumps(body),
        )
        parsed = answer.json()
        problems = self.openapi.answer_problems(operation_id, answer.status_code, parsed)
        assert problems == [], f"{operation_id} {answer.status_code} {parsed}: {problems}"
        assert answer.status_code == status, answer.text
        return parsed

    def create(self, token: str = DEFAULT_TOKEN, **fields: Any) -> dict[str, Any]:
        incident = {"type": "incident", "title": "disk full", "service": SERVICE, **fields}
        body = {"incident": incident}
        created = self.call("createIncident", "/incidents", status=201, body=body, token=token)
        return dict(created["incident"])

    def apply_queued(self) -> None:
        """What the worker does with the accepted events: fold them into the mapping."""
        for event in self.queue.events:
            apply_event(self.sessions, event, utcnow())
        self.queue.events.clear()

    def delivered(self, incident_id: str, number: int) -> str:
        """The incident as PagerDuty created it (its id, number and page); its PagerDuty id."""
        pagerduty_id = f"PT{number:05d}"
        with self.sessions.begin() as session:
            alert = session.scalars(select(Alert).where(Alert.source_alert_id == incident_id)).one()
            alert.pagerduty_incident_id = pagerduty_id
            alert.pagerduty_incident_number = number
            alert.pagerduty_incident_url = f"https://example.pagerduty.com/incidents/{pagerduty_id}"
            alert.confirmed_status = alert.desired_status
        return pagerduty_id


ContactFactory = Callable[..., Contact]


@pytest.fixture
def make_contact(
    openapi: PagerDutyOpenApi, sqlite_sessions: sessionmaker[Session]
) -> Iterator[ContactFactory]:
    clients = ExitStack()

    def make(**overrides: Any) -> Contact:
        queue = ListQueue()
        settings = Settings(
            ingress_tokens=DEFAULT_TOKEN,  # type: ignore[arg-type]
            pagerduty_service_id="PDEFAULT",
            public_url="https://bridge.example",
            **overrides,
        )
        app = create_app(
            settings,
            queue=DurableEventQueue(queue, sqlite_sessions),
            sessions=sqlite_sessions,
            redis_ping=lambda: None,
            routes=ROUTES,
        )
        client = clients.enter_context(TestClient(app))
        return Contact(client, openapi, queue, sqlite_sessions)

    with clients:
        yield make


# -- the checks themselves -------------------------------------------------------------------


def test_the_check_refuses_what_pagerduty_does_not_document(openapi: PagerDutyOpenApi) -> None:
    error = {"error": {"message": "Invalid Input Provided", "code": 2001, "errors": ["x"]}}
    assert openapi.answer_problems("createIncident", 400, error) == []
    assert openapi.answer_problems("createIncident", 422, error)  # FastAPI's own code
    assert openapi.answer_problems("updateIncidents", 404, error)
    assert openapi.answer_problems("getIncident", 404, {"error": {"code": "2100"}})
    assignment = {"assignee": {"id": "PUSER01", "type": "user_reference"}}
    made = {**assignment, "at": "2026-01-02T03:04:05Z"}
    incident = {"id": "P1", "type": "incident", "status": "triggered", "summary": None}
    assert openapi.answer_problems("getIncident", 200, {"incident": incident}) == []
    for wrong in ({"status": "open"}, {"created_at": "today"}, {"assignments": [assignment]}):
        assert openapi.answer_problems("getIncident", 200, {"incident": incident | wrong})
    assert (
        openapi.answer_problems(
            "getIncident", 200, {"incident": incident | {"assignments": [made]}}
        )
        == []
    )
    assert openapi.answer_problems("listIncidents", 200, {"incidents": [], "total": "3"})

    headers = pagerduty_headers(DEFAULT_TOKEN)
    create = {"incident": {"type": "incident", "title": "x", "service": SERVICE}}

    def creation(body: Any, headers: dict[str, str] = headers) -> list[str]:
        return openapi.request_problems(
            "createIncident", path="/incidents", query=[], headers=headers, body=body
        )

    def listing(*query: tuple[str, str]) -> list[str]:
        return openapi.request_problems(
            "listIncidents", path="/incidents", query=list(query), headers=headers, body=None
        )

    assert creation(create) == []
    assert creation({"incident": {"title": "x"}})
    assert creation(create, {name: value for name, value in headers.items() if name != "From"})
    assert creation(create, headers | {"From": "not an address"})
    assert listing(("statuses[]", "triggered"), ("limit", "100"), ("total", "true")) == []
    assert listing(("statuses[]", "open"))
    assert listing(("limit", "ten"))
    assert listing(("since_id", "1"))


def test_the_openapi_is_read_where_pagerduty_openapi_says_else_beside_the_repository(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(LOCATION_VARIABLE, raising=False)
    assert _location() == REPOSITORY.parent / "shared" / "pagerduty" / "openapiv3.json"
    missing = tmp_path / "elsewhere.json"
    monkeypatch.setenv(LOCATION_VARIABLE, str(missing))
    with pytest.raises(pytest.skip.Exception, match=re.escape(str(missing))):
        load_openapi()


# -- createIncident --------------------------------------------------------------------------


def test_create_incident_answers_as_pagerdutys_openapi_documents(
    make_contact: ContactFactory,
) -> None:
    contact = make_contact(allowed_service_ids=("PDEFAULT", "POTHER1"), auth_failures_per_minute=2)
    assert contact.create()["status"] == "triggered"
    full = contact.create(incident_key="disk/web-1", urgency="low", **FORWARDED)
    assert full["assignments"][0]["assignee"] == FORWARDED["assignments"][0]["assignee"]
    policy = {"id": "PPOLICY", "type": "escalation_policy_reference"}
    contact.create(escalation_policy=policy, service={"id": "POTHER1", "type": "service_reference"})
    # Invalid input: the duplicate key of an open incident, a bad value, malformed JSON.
    duplicate = {"type": "incident", "title": "x", "service": SERVICE, "incident_key": "disk/web-1"}
    refused = contact.call("createIncident", "/incidents", status=400, body={"incident": duplicate})
    assert refused["error"]["code"] == 2001
    urgent = {**duplicate, "incident_key": "k2", "urgency": "urgent"}
    contact.call(
        "createIncident", "/incidents", status=400, body={"incident": urgent}, conforming=False
    )
    contact.call(
        "createIncident", "/incidents", status=400, content=b'{"incident": ', conforming=False
    )
    # A service the default route may not name.
    elsewhere = {
        **duplicate,
        "incident_key": "k3",
        "service": {"id": "PFOREIGN", "type": "service_reference"},
    }
    contact.call("createIncident", "/incidents", status=403, body={"incident": elsewhere})
    contact.call(
        "createIncident",
        "/incidents",
        status=401,
        body={"incident": duplicate},
        token=None,
        conforming=False,
    )
    incident = {"incident": {**duplicate, "incident_key": "k4"}}
    contact.call("createIncident", "/incidents", status=401, body=incident, token="x" * 40)
    contact.call("createIncident", "/incidents", status=429, body=incident)


# -- getIncident and listIncidents -----------------------------------------------------------


def test_get_incident_answers_as_pagerdutys_openapi_documents(
    make_contact: ContactFactory,
) -> None:
    contact = make_contact(auth_failures_per_minute=2)
    queued = contact.create(incident_key="k1", **FORWARDED)
    stored = contact.create(urgency="high")
    got = contact.call("getIncident", f"/incidents/{queued['id']}", status=200)
    assert got["incident"]["bridge"]["delivery_state"] == "queued"
    contact.apply_queued()
    pagerduty_id = contact.delivered(stored["id"], 1234)
    for incident_id in (queued["id"], stored["id"], pagerduty_id):
        got = contact.call("getIncident", f"/incidents/{incident_id}", status=200)
    assert got["incident"]["incident_number"] == 1234
    mine = contact.create(WEB_TOKEN, service=WEB_SERVICE)
    contact.call("getIncident", f"/incidents/{mine['id']}", status=404)  # another route's
    contact.call("getIncident", "/incidents/PBAAAAAAAAAAAAAAAA", status=404)
    contact.call("getIncident", "/incidents/not%20an%20id", status=400)
    contact.call(
        "getIncident", f"/incidents/{stored['id']}", status=401, token=None, conforming=False
    )
    contact.call("getIncident", f"/incidents/{stored['id']}", status=401, token="y" * 40)
    contact.call("getIncident", f"/incidents/{stored['id']}", status=429)


def test_list_incidents_answers_as_pagerdutys_openapi_documents(
    make_contact: ContactFactory,
) -> None:
    contact = make_contact(auth_failures_per_minute=2)
    assert contact.call("listIncidents", "/incidents", status=200)["incidents"] == []
    first = contact.create(incident_key="k1", **FORWARDED)
    contact.create(urgency="low")
    contact.apply_queued()
    contact.delivered(first["id"], 7)
    contact.create(incident_key="k3")  # still queued: read from the inbox
    everything = contact.call("listIncidents", "/incidents", status=200, query=[("total", "true")])
    assert everything["total"] == 3 and len(everything["incidents"]) == 3
    queries = [
        [("incident_key", "k1"), ("date_range", "all")],
        [("statuses[]", "triggered"), ("statuses[]", "acknowledged")],
        [("service_ids[]", "PDEFAULT"), ("limit", "1"), ("offset", "1")],
        [("limit", "100"), ("offset", "0"), ("total", "false")],
    ]
    for query in queries:
        contact.call("listIncidents", "/incidents", status=200, query=query)
    contact.call("listIncidents", "/incidents", status=400, query=[("limit", "101")])
    window = [("limit", "100"), ("offset", "9950")]
    contact.call("listIncidents", "/incidents", status=400, query=window)
    bad_status = [("statuses[]", "open")]
    contact.call("listIncidents", "/incidents", status=400, query=bad_status, conforming=False)
    contact.call("listIncidents", "/incidents", status=401, token=None, conforming=False)
    contact.call("listIncidents", "/incidents", status=401, token="z" * 40)
    contact.call("listIncidents", "/incidents", status=429)


# -- updateIncidents and updateIncident ------------------------------------------------------


def references(ids: list[str], status: str, **fields: Any) -> dict[str, Any]:
    return {
        "incidents": [
            {"id": incident_id, "type": "incident_reference", "status": status, **fields}
            for incident_id in ids
        ]
    }


def test_update_incidents_answers_as_pagerdutys_openapi_documents(
    make_contact: ContactFactory,
) -> None:
    contact = make_contact(
        forward_foreign_updates=True, foreign_updates_per_request=1, auth_failures_per_minute=2
    )
    ids = [contact.create()["id"], contact.create()["id"]]
    updated = contact.call(
        "updateIncidents", "/incidents", status=200, body=references(ids, "acknowledged")
    )
    assert [incident["status"] for incident in updated["incidents"]] == ["acknowledged"] * 2
    contact.call("updateIncidents", "/incidents", status=200, body=references(ids[:1], "resolved"))
    # The fields PagerDuty takes beside the status, and without one.
    with_fields = references(ids[1:], "resolved", resolution="freed", **UPDATE_FIELDS)
    contact.call("updateIncidents", "/incidents", status=200, body=with_fields)
    fields_only = {"incidents": [{"id": ids[0], "type": "incident_reference", **UPDATE_FIELDS}]}
    answered = contact.call("updateIncidents", "/incidents", status=200, body=fields_only)
    assert answered["incidents"][0]["assignments"][0]["assignee"]["id"] == "PUSER01"
    # Invalid input: no incident, a status PagerDuty does not have, malformed JSON.
    contact.call("updateIncidents", "/incidents", status=400, body={"incidents": []})
    contact.call(
        "updateIncidents", "/incidents", status=400, body=references(ids, "open"), conforming=False
    )
    contact.call(
        "updateIncidents", "/incidents", status=400, content=b'{"incidents": [', conforming=False
    )
    # Incidents the token cannot reach: an unknown id, another route's incident.
    contact.call(
        "updateIncidents",
        "/incidents",
        status=400,
        body=references(["PBAAAAAAAAAAAAAAAA"], "resolved"),
    )
    web = contact.create(WEB_TOKEN, service=WEB_SERVICE)["id"]
    contact.call("updateIncidents", "/incidents", status=400, body=references([web], "resolved"))
    # An incident the bridge did not create: an Events API route's token may not update it,
    # and a REST route's token only so many.
    foreign = references(["PFOREIGN1"], "resolved")
    contact.call("updateIncidents", "/incidents", status=403, body=foreign, token=DB_TOKEN)
    two_foreign = references(["PFOREIGN1", "PFOREIGN2"], "resolved")
    contact.call("updateIncidents", "/incidents", status=429, body=two_foreign)
    contact.call("updateIncidents", "/incidents", status=200, body=foreign)
    # Too large: more incidents than PagerDuty takes at once, more bytes than the bridge reads.
    contact.call(
        "updateIncidents", "/incidents", status=413, body=references(ids * 126, "resolved")
    )
    padded = references(ids, "resolved", resolution="x" * 300_000)
    contact.call("updateIncidents", "/incidents", status=413, body=padded)
    contact.call(
        "updateIncidents", "/incidents", status=401, body=foreign, token=None, conforming=False
    )
    contact.call("updateIncidents", "/incidents", status=401, body=foreign, token="w" * 40)
    contact.call("updateIncidents", "/incidents", status=429, body=foreign)


def test_update_incident_answers_as_pagerdutys_openapi_documents(
    make_contact: ContactFactory,
) -> None:
    contact = make_contact(
        forward_foreign_updates=True, foreign_updates_per_minute=1, auth_failures_per_minute=2
    )
    incident_id = contact.create()["id"]
    path = f"/incidents/{incident_id}"

    def update(status: str, **fields: Any) -> dict[str, Any]:
        return {"incident": {"type": "incident_reference", "status": status, **fields}}

    updated = contact.call("updateIncident", path, status=200, body=update("acknowledged"))
    assert updated["incident"]["status"] == "acknowledged"
    contact.call("updateIncident", path, status=200, body=update("acknowledged", **UPDATE_FIELDS))
    fields_only = {"incident": {"type": "incident_reference", "priority": "P1"}}
    contact.call("updateIncident", path, status=200, body=fields_only)
    contact.call("updateIncident", path, status=200, body=update("resolved"))
    contact.call(
        "updateIncident", "/incidents/PBAAAAAAAAAAAAAAAA", status=404, body=update("resolved")
    )
    web = contact.create(WEB_TOKEN, service=WEB_SERVICE)["id"]
    contact.call("updateIncident", f"/incidents/{web}", status=404, body=update("resolved"))
    contact.call(
        "updateIncident",
        "/incidents/PFOREIGN1",
        status=403,
        body=update("resolved"),
        token=DB_TOKEN,
    )
    contact.call("updateIncident", "/incidents/PFOREIGN1", status=200, body=update("resolved"))
    contact.call("updateIncident", "/incidents/PFOREIGN2", status=429, body=update("resolved"))
    # 400 is not among updateIncident's answers in PagerDuty's OpenAPI (UNDOCUMENTED_BY_PAGERDUTY).
    contact.call("updateIncident", path, status=400, body=update("open"), conforming=False)
    contact.call("updateIncident", path, status=400, content=b'{"incident": ', conforming=False)
    contact.call(
        "updateIncident", path, status=401, body=update("resolved"), token=None, conforming=False
    )
    contact.call("updateIncident", path, status=401, body=update("resolved"), token="v" * 40)
    contact.call("updateIncident", path, status=429, body=update("resolved"))


# -- the bridge's PagerDuty client: what it sends ---------------------------------------------


@dataclass(frozen=True)
class Sent:
    operation_id: str
    problems: list[str]
    body: Any


class PagerDutyDouble:
    """PagerDuty behind ``httpx.MockTransport``: each request is checked against the OpenAPI and
    answered with what the operation documents (the answer checked too)."""

    def __init__(self, openapi: PagerDutyOpenApi) -> None:
        self.openapi = openapi
        self.sent: list[Sent] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        operation = self.openapi.operation_of(request.method, request.url.path)
        body = json.loads(request.content) if request.content else None
        problems = self.openapi.request_problems(
            operation.id,
            path=request.url.path,
            query=list(request.url.params.multi_items()),
            headers=dict(request.headers),
            body=body,
        )
        self.sent.append(Sent(operation.id, problems, body))
        incident = {"id": "PT4KHLK", "type": "incident", "status": "triggered"}
        status, answer = {
            "createIncident": (201, {"incident": incident}),
            "getIncident": (200, {"incident": incident}),
            "updateIncident": (200, {"incident": {**incident, "status": "resolved"}}),
            "updateIncidents": (200, {"incidents": [{**incident, "status": "acknowledged"}]}),
            "listIncidents": (200, {"incidents": [incident], "limit": 100, "offset": 0}),
        }[operation.id]
        assert self.openapi.answer_problems(operation.id, status, answer) == []
        return httpx.Response(status, json=answer)


def test_the_bridges_pagerduty_client_sends_what_pagerdutys_openapi_documents(
    openapi: PagerDutyOpenApi,
) -> None:
    pagerduty = PagerDutyDouble(openapi)
    client = PagerDutyClient(
        "https://pagerduty.test",
        "unit-test-pagerduty-token",
        FROM,
        transport=httpx.MockTransport(pagerduty),
    )
    with client:
        client.create_incident(
            title="disk full", service_id="PDEFAULT", incident_key="coscale/1/1", urgency="low"
        )
        policy = {"escalation_policy": {"id": "PPOLICY", "type": "escalation_policy_reference"}}
        client.create_incident(
            title="disk full", service_id="PDEFAULT", incident_key="k2", forwarded=FORWARDED
        )
        client.create_incident(
            title="disk full", service_id="PDEFAULT", incident_key="k3", forwarded=policy
        )
        client.update_incidents([("PT4KHLK", "acknowledged"), ("PT4KHLL", "resolved")])
        client.update_incident("PT4KHLK", "resolved")
        client.update_incidents(
            [
                IncidentUpdate("PT4KHLK", "acknowledged", UPDATE_FIELDS),
                IncidentUpdate("PT4KHLL", None, {"priority": "P1", "escalation_level": 2}),
            ]
        )
        client.update_incident("PT4KHLK", None, UPDATE_FIELDS)
        client.update_incident("PT4KHLK", "resolved", {"resolution": "freed"})
        client.find_incidents("coscale/1/1")
        client.find_incidents("coscale/1/1", include_resolved=True)
        client.get_incident("PT4KHLK")
    assert [sent.operation_id for sent in pagerduty.sent] == [
        "createIncident",
        "createIncident",
        "createIncident",
        "updateIncidents",
        "updateIncident",
        "updateIncidents",
        "updateIncident",
        "updateIncident",
        "listIncidents",
        "listIncidents",
        "getIncident",
    ]
    for sent in pagerduty.sent:
        assert sent.problems == [], (sent.operation_id, sent.body)


def test_the_clients_text_details_break_pagerdutys_schema_as_its_own_example_does(
    openapi: PagerDutyOpenApi,
) -> None:
    """CoScale's text goes in ``body.details`` as PagerDuty's own createIncident example sends
    it, while its IncidentBody schema says ``details`` is an object: the request may break the
    schema there, and only there, as long as PagerDuty's example does too."""
    pagerduty = PagerDutyDouble(openapi)
    with PagerDutyClient(
        "https://pagerduty.test",
        "unit-test-pagerduty-token",
        FROM,
        transport=httpx.MockTransport(pagerduty),
    ) as client:
        client.create_incident(
            title="disk full", service_id="PDEFAULT", incident_key="k1", details="disk at 99%"
        )
    (sent,) = pagerduty.sent
    example = openapi.request_example("createIncident")
    assert isinstance(example["incident"]["body"]["details"], str)
    example_problems = openapi.request_problems(
        "createIncident",
        path="/incidents",
        query=[],
        headers=pagerduty_headers(DEFAULT_TOKEN),
        body=example,
    )
    assert (
        [problem.split(":")[0] for problem in sent.problems]
        == [problem.split(":")[0] for problem in example_problems]
        == ["$.incident.body.details"]
    )
