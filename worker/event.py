"""An event as it travels from the ingress to a worker: the Celery message body.

It carries the alert's id and what CoScale said, never a secret: Celery messages sit in Redis
and in its AOF file, readable by anyone who can read those.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from worker.status import AlertStatus

SOURCE_COSCALE = "coscale"  # CoScale's Webhook contact: the alert id is CoScale's {ALERT_ID}
SOURCE_API = "api"  # the PagerDuty-shaped API contact: the alert id is one the bridge minted


@dataclass(frozen=True, slots=True)
class AlertEventMessage:
    """One CoScale event, stamped by the ingress that received it.

    ``received_at`` orders events for the same alert when the queue hands them out of order.
    ``incident_id`` is set only by the API contact, for an update naming a PagerDuty incident
    the bridge did not create (one opened before the switch to the bridge).
    """

    event_id: str
    source: str
    alert_id: str
    action: AlertStatus
    received_at: datetime
    title: str | None = None
    details: str | None = None
    service_id: str | None = None
    urgency: str | None = None
    incident_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def to_message(self) -> dict[str, Any]:
        body = asdict(self)
        body["action"] = self.action.value
        body["received_at"] = self.received_at.isoformat()
        return body

    @classmethod
    def from_message(cls, body: dict[str, Any]) -> AlertEventMessage:
        values = dict(body)
        values["action"] = AlertStatus(values["action"])
        values["received_at"] = datetime.fromisoformat(values["received_at"])
        return cls(**values)


def new_event_id() -> str:
    return uuid.uuid4().hex
