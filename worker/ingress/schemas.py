"""Request and answer bodies of the ingress, validated with pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _text(value: Any) -> Any:
    # CoScale pastes placeholders into the Format; an unquoted {ALERT_ID} arrives as a number.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return value


FIELD_MAX = 8192
Text = Annotated[str, BeforeValidator(_text), Field(max_length=FIELD_MAX)]
AlertId = Annotated[
    str,
    BeforeValidator(_text),
    Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
Urgency = Literal["high", "low"]


class CoScaleWebhook(BaseModel):
    """The body of CoScale's Webhook contact (the Format in the README)."""

    model_config = ConfigDict(extra="ignore")

    alert_id: AlertId
    action: Annotated[str, Field(max_length=40)]
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
    service_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
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


# -- the PagerDuty-shaped API contact (the seed's configuration) ---------------------------------


class ServiceReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Annotated[str, Field(min_length=1, max_length=64)]
    type: str = "service_reference"


class IncidentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "incident_body"
    details: Text | None = None


class NewIncident(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "incident"
    title: Annotated[str, Field(min_length=1, max_length=FIELD_MAX)]
    service: ServiceReference | None = None
    urgency: Urgency | None = None
    body: IncidentBody | None = None


class CreateIncidentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    incident: NewIncident


UpdateStatus = Literal["acknowledged", "resolved"]
IncidentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class IncidentReference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: IncidentId
    type: str = "incident_reference"
    status: UpdateStatus


class BulkUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # PagerDuty's own limit on a bulk update (PAGERDUTY.md).
    incidents: Annotated[list[IncidentReference], Field(min_length=1, max_length=250)]


class SingleUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "incident_reference"
    status: UpdateStatus


class SingleUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    incident: SingleUpdate


class IncidentAnswer(BaseModel):
    """What PagerDuty would answer, enough for CoScale's "Parse response: JSON incident.id"."""

    id: str
    type: Literal["incident"] = "incident"
    status: str
    title: str | None = None
    summary: str | None = None
    incident_key: str | None = None
    service: ServiceReference | None = None
    urgency: str | None = None
    html_url: str | None = None


class IncidentEnvelope(BaseModel):
    incident: IncidentAnswer


class IncidentsEnvelope(BaseModel):
    incidents: list[IncidentAnswer]


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
    incident_key: str
    service_id: str | None
    title: str | None
    pagerduty_incident_id: str | None
    pagerduty_incident_number: int | None
    pagerduty_incident_url: str | None
    desired_status: str
    confirmed_status: str | None
    delivery_state: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str
    updated_at: str
    timeline: list[TimelineEntry]


class ErrorDetail(BaseModel):
    message: str
    errors: list[str] = []
    field: str | None = None


class ErrorAnswer(BaseModel):
    """One error shape for every endpoint; ``message`` and ``errors`` as PagerDuty's envelope."""

    error: ErrorDetail
