"""Request and answer bodies of the ingress, validated with pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from worker.title import TITLE_LIMIT, truncate


def _text(value: Any) -> Any:
    # CoScale pastes placeholders into the Format; an unquoted {ALERT_ID} arrives as a number.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return value


FIELD_MAX = 8192
# No NUL: PostgreSQL's text cannot hold one, and an event the worker cannot store would sit in
# the inbox for ever. (Lone surrogates, which UTF-8 cannot hold either, pydantic refuses itself.)
NO_NUL = r"^[^\x00]*$"


def _or_scalar(text_schema: dict[str, Any]) -> WithJsonSchema:
    """The OpenAPI schema of a text field that also takes a number or a boolean (``_text``)."""
    return WithJsonSchema({"anyOf": [text_schema, {"type": "number"}, {"type": "boolean"}]})


# The constraints before the BeforeValidator: they are then the text schema's own, checked in
# pydantic's core after _text; after it, pydantic would check them in Python, on any sequence
# ("at most 8192 items after validation").
Text = Annotated[
    str,
    Field(max_length=FIELD_MAX, pattern=NO_NUL),
    BeforeValidator(_text),
    _or_scalar({"type": "string", "maxLength": FIELD_MAX, "pattern": NO_NUL}),
]
NonEmptyText = Annotated[str, Field(min_length=1, max_length=FIELD_MAX, pattern=NO_NUL)]
ALERT_ID_MAX = 200
# No control characters (C0, DEL, C1): the id is shown in tables, logs and URLs.
ALERT_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
AlertId = Annotated[
    str,
    Field(min_length=1, max_length=ALERT_ID_MAX, pattern=ALERT_ID_PATTERN),
    BeforeValidator(_text),
    _or_scalar(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": ALERT_ID_MAX,
            "pattern": ALERT_ID_PATTERN,
        }
    ),
]
# PagerDuty's ids are short and alphanumeric (PXFL9LI).
ServiceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# A `type` field PagerDuty's bodies carry; read, never used.
TypeName = Annotated[str, Field(max_length=64)]
Urgency = Literal["high", "low"]


def _any_case(word: str) -> str:
    return "".join(f"[{char.lower()}{char.upper()}]" for char in word)


# What worker.vocabulary.parse_action accepts, for the OpenAPI schema only: parse_action's own 422
# ("unknown action 'x': expected ...") says more than a pattern mismatch would.
ACTION_PATTERN = (
    r"^\s*(?:"
    + "|".join(
        _any_case(word)
        for word in ("triggered", "trigger", "acknowledged", "acknowledge", "resolved", "resolve")
    )
    + r")\s*$"
)


class CoScaleWebhook(BaseModel):
    """The body of CoScale's Webhook contact (the Format in the README)."""

    model_config = ConfigDict(extra="ignore")

    alert_id: AlertId
    action: Annotated[str, Field(max_length=40, json_schema_extra={"pattern": ACTION_PATTERN})]
    message: Text | None = None
    metric: Text | None = None
    subject: Text | None = None
    dimensions: Text | None = None
    app: Text | None = None
    link: Text | None = None
    date: Text | None = None
    time: Text | None = None
    host: Text | None = None
    timestamp: Text | None = None
    service_id: ServiceId | None = None
    title: Text | None = None
    urgency: Urgency | None = None


class EventAccepted(BaseModel):
    alert_id: str
    event_id: str
    action: str
    state: Literal["queued"] = "queued"
    # "database+queue" normally; one of them alone while the other is unavailable.
    queued_in: Literal["database+queue", "database", "queue"] = "database+queue"
    alert_url: str
    # True when the body was not valid JSON and the bridge read it as CoScale meant it (a value
    # held an unescaped quote, backslash or newline; README "Hostile input").
    repaired: bool = False


# -- the PagerDuty-shaped API contact (the seed's configuration) ---------------------------------
# Shapes as PagerDuty's OpenAPI (createIncident, updateIncident, updateIncidents) has them: a
# ``type`` PagerDuty would refuse is refused, the ``type`` left out is taken as the one expected.


class ServiceReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: ServiceId
    type: Literal["service_reference", "service"] = "service_reference"


class PriorityReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: ServiceId
    type: Literal["priority_reference", "priority"] = "priority_reference"


class EscalationPolicyReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: ServiceId
    type: Literal["escalation_policy_reference", "escalation_policy"] = (
        "escalation_policy_reference"
    )


class UserReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: ServiceId
    type: Literal["user_reference", "user"] = "user_reference"


class Assignment(BaseModel):
    model_config = ConfigDict(extra="ignore")
    assignee: UserReference


class IncidentTypeReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]


class ConferenceBridge(BaseModel):
    model_config = ConfigDict(extra="ignore")
    conference_number: Annotated[str, Field(max_length=200, pattern=NO_NUL)] | None = None
    conference_url: Annotated[str, Field(max_length=2000, pattern=NO_NUL)] | None = None


class IncidentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["incident_body"] = "incident_body"
    # Text (CoScale's Format), or an object as PagerDuty's IncidentBody schema has it.
    details: Text | dict[str, Any] | None = None


def _no_empty_key(value: Any) -> Any:
    # An empty incident_key is no key, as PagerDuty takes it.
    return None if value == "" else value


INCIDENT_KEY_MAX = 255  # the mapping's column
IncidentKey = Annotated[
    str,
    Field(min_length=1, max_length=INCIDENT_KEY_MAX, pattern=NO_NUL),
    BeforeValidator(_no_empty_key),
]
# PagerDuty's limit on an incident's assignees (createIncident: "up to 25").
MAX_ASSIGNMENTS = 25
# createIncident's fields the bridge sends on as given: it reads none of them itself.
FORWARDED_FIELDS = frozenset(
    {"priority", "escalation_policy", "assignments", "incident_type", "conference_bridge"}
)


class NewIncident(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["incident"] = "incident"
    title: NonEmptyText
    service: ServiceReference | None = None
    urgency: Urgency | None = None
    body: IncidentBody | None = None
    incident_key: IncidentKey | None = None
    priority: PriorityReference | None = None
    escalation_policy: EscalationPolicyReference | None = None
    assignments: Annotated[list[Assignment], Field(max_length=MAX_ASSIGNMENTS)] | None = None
    incident_type: IncidentTypeReference | None = None
    conference_bridge: ConferenceBridge | None = None

    @model_validator(mode="after")
    def _assignees_or_policy(self) -> NewIncident:
        # createIncident: assignments "Cannot be specified if an escalation policy is given."
        if self.assignments and self.escalation_policy is not None:
            raise ValueError("assignments cannot be specified if an escalation_policy is given")
        return self

    def forwarded(self) -> dict[str, Any] | None:
        """The fields sent on to PagerDuty as given (and a body whose details are an object)."""
        fields = self.model_dump(mode="json", include=set(FORWARDED_FIELDS), exclude_none=True)
        if self.body is not None and isinstance(self.body.details, dict):
            fields["body"] = {"type": "incident_body", "details": self.body.details}
        return fields or None

    def details_text(self) -> str | None:
        return self.body.details if self.body and isinstance(self.body.details, str) else None


class CreateIncidentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    incident: NewIncident


INCIDENT_ID_MAX = 64
INCIDENT_ID_PATTERN = r"^[A-Za-z0-9_-]+$"
IncidentId = Annotated[
    str, Field(min_length=1, max_length=INCIDENT_ID_MAX, pattern=INCIDENT_ID_PATTERN)
]
# PagerDuty's own limit on a bulk update (docs/pagerduty.md; updateIncidents answers 413 past it).
MAX_BULK_UPDATES = 250
# updateIncident's fields besides the status that the bridge sends on as given (PagerDuty's
# REST API reference, updateIncident and updateIncidents); it reads none of them itself.
UPDATE_FIELDS = (
    "resolution",
    "title",
    "urgency",
    "priority",
    "escalation_level",
    "escalation_policy",
    "assignments",
    "incident_type",
    "conference_bridge",
)
# What the bridge does not forward: a reopen, and a move to another service.
REOPEN_REFUSED = (
    "status triggered (reopening an incident) is not supported by the bridge: create a new "
    "incident instead"
)
SERVICE_REFUSED = (
    "moving an incident to another service is not supported by the bridge: it would bypass "
    "the route and service checks (docs/security.md)"
)
# A priority by name: "the highest priority with a matching name will be used" (updateIncident).
PriorityName = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
# Escalation levels count from 1; an escalation policy has far fewer than this.
MAX_ESCALATION_LEVEL = 1000


class SingleUpdate(BaseModel):
    """One item of updateIncident/updateIncidents, in PagerDuty's shapes: a status, fields
    PagerDuty takes besides it (sent on with it), or fields alone (the status left as is)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["incident", "incident_reference"] = "incident_reference"
    # "triggered" is PagerDuty's (a reopen), refused by the validator below with a reason.
    status: Literal["acknowledged", "resolved", "triggered"] | None = None
    resolution: Annotated[str, Field(max_length=FIELD_MAX, pattern=NO_NUL)] | None = None
    title: NonEmptyText | None = None
    urgency: Urgency | None = None
    priority: PriorityReference | PriorityName | None = None
    escalation_level: Annotated[StrictInt, Field(ge=1, le=MAX_ESCALATION_LEVEL)] | None = None
    escalation_policy: EscalationPolicyReference | None = None
    assignments: Annotated[list[Assignment], Field(max_length=MAX_ASSIGNMENTS)] | None = None
    incident_type: IncidentTypeReference | None = None
    conference_bridge: ConferenceBridge | None = None
    # updateIncident's "Assign the incident to this service": read only to be refused.
    service: Any = None

    @field_validator("status")
    @classmethod
    def _no_reopen(cls, status: str | None) -> str | None:
        if status == "triggered":
            raise ValueError(REOPEN_REFUSED)
        return status

    @field_validator("service")
    @classmethod
    def _no_move(cls, service: Any) -> None:
        if service is not None:
            raise ValueError(SERVICE_REFUSED)
        return None

    @model_validator(mode="after")
    def _as_pagerduty_takes_it(self) -> SingleUpdate:
        if self.resolution is not None and self.status != "resolved":
            # updateIncident: "This field is used only when setting the incident status to
            # resolved."
            raise ValueError("resolution is taken only with status resolved")
        if self.assignments and self.escalation_policy is not None:
            # As createIncident's rule: one of the two decides who is paged.
            raise ValueError("assignments cannot be specified if an escalation_policy is given")
        if self.status is None and not self.fields():
            raise ValueError(
                "nothing to update: send a status (acknowledged, resolved) or a field "
                "PagerDuty takes (" + ", ".join(UPDATE_FIELDS) + ")"
            )
        return self

    def fields(self) -> dict[str, Any] | None:
        """The fields sent on to PagerDuty as given, the title cut to the bridge's limit."""
        fields = self.model_dump(mode="json", include=set(UPDATE_FIELDS), exclude_none=True)
        if "title" in fields:
            fields["title"] = truncate(fields["title"], TITLE_LIMIT)
        return fields or None


class IncidentReference(SingleUpdate):
    id: IncidentId


class BulkUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # Over MAX_BULK_UPDATES is answered 413 before this is read (worker/ingress/incidents.py).
    incidents: Annotated[list[IncidentReference], Field(min_length=1)]


class SingleUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    incident: SingleUpdate


class ServiceAnswer(BaseModel):
    """The service in an answer: whatever the bridge was configured with."""

    id: str
    type: str = "service_reference"


class BridgeState(BaseModel):
    """Beside PagerDuty's fields: where the bridge is with the incident."""

    # "queued" (accepted, not yet applied), else the mapping's delivery state.
    delivery_state: str
    # What the bridge is bringing PagerDuty to.
    desired_status: str
    pagerduty_incident_id: str | None = None
    alert_url: str


class IncidentAnswer(BaseModel):
    """What PagerDuty would answer, enough for CoScale's "Parse response: JSON incident.id"."""

    id: str
    type: Literal["incident"] = "incident"
    status: str
    title: str | None = None
    summary: str | None = None
    incident_number: int | None = None
    incident_key: str | None = None
    created_at: str | None = None
    service: ServiceAnswer | None = None
    urgency: str | None = None
    html_url: str | None = None
    priority: dict[str, Any] | None = None
    escalation_policy: dict[str, Any] | None = None
    assignments: list[dict[str, Any]] | None = None
    incident_type: dict[str, Any] | None = None
    conference_bridge: dict[str, Any] | None = None
    bridge: BridgeState | None = None


class IncidentEnvelope(BaseModel):
    incident: IncidentAnswer


class IncidentsEnvelope(BaseModel):
    incidents: list[IncidentAnswer]


class IncidentList(BaseModel):
    """listIncidents' answer: classic pagination (PagerDuty's "Pagination" guide)."""

    incidents: list[IncidentAnswer]
    limit: int
    offset: int
    more: bool
    total: int | None = None


# -- the mapping, for operators --------------------------------------------------------------


class TimelineEntry(BaseModel):
    at: str
    kind: str
    action: str | None
    outcome: str
    detail: str | None


class AlertView(BaseModel):
    source: str
    alert_id: str
    cycle: int
    cycles: int
    route: str = "default"
    # "rest" (incidents) or "events" (Events API v2; incident_key is then the dedup_key)
    backend: str = "rest"
    credential_id: str | None = None  # a hash of the API token or integration key, never it
    incident_key: str
    service_id: str | None
    title: str | None
    pagerduty_incident_id: str | None
    pagerduty_incident_number: int | None
    pagerduty_incident_url: str | None
    desired_status: str
    confirmed_status: str | None
    # The last change made in PagerDuty by someone other than the bridge (its webhooks).
    responder: str | None = None
    responder_at: str | None = None
    delivery_state: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str
    updated_at: str
    timeline: list[TimelineEntry]


class PagerDutyWebhookTaken(BaseModel):
    """The answer to a PagerDuty webhook delivery: what it did (worker/pipeline/responders.py:
    responder, echo, stale, unknown, ignored, duplicate; stored: applied by the sweeper)."""

    webhook_id: str
    event_type: str
    outcome: str


class ErrorDetail(BaseModel):
    message: str
    # PagerDuty's error code, on the PagerDuty-shaped endpoints (2001, 2100, ...).
    code: int | None = None
    errors: list[str] = []
    field: str | None = None

    @model_serializer(mode="wrap")
    def _without_absent_code(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The CoScale endpoints' documented shape has no code: it appears only where set.
        data: dict[str, Any] = handler(self)
        if data.get("code") is None:
            data.pop("code", None)
        return data


class ErrorAnswer(BaseModel):
    """One error shape for every endpoint; ``message`` and ``errors`` as PagerDuty's envelope."""

    error: ErrorDetail

    @classmethod
    def of(
        cls,
        message: str,
        *,
        field: str | None = None,
        errors: list[str] | None = None,
        code: int | None = None,
    ) -> ErrorAnswer:
        return cls(
            error=ErrorDetail(message=message, code=code, errors=errors or [message], field=field)
        )
