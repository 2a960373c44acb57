"""The mapping table: one row per CoScale alert *cycle* and the PagerDuty incident it owns.

A CoScale alert that fires, resolves and fires again is two cycles, two rows, two incidents;
keeping them apart means a late resolve for the first incident can never be lost by the second
trigger overwriting the incident id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Self, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Enum,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, UTCDateTime, utcnow
from models.bulk import update_rows
from worker.vocabulary import DEFAULT_NAMESPACE, AlertStatus, DeliveryState

# Integer on SQLite so the primary key is the rowid alias and autoincrements.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _enum(kind: type[AlertStatus] | type[DeliveryState], name: str) -> Enum:
    # Stored as the lower-case value in a VARCHAR: readable in psql, no native ENUM to migrate.
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (
        # One alert per bridge: bridges sharing a database each have their own namespace
        # (PAGERBRIDGE_NAMESPACE), and the same alert id in two is two alerts.
        UniqueConstraint("namespace", "source", "source_alert_id", "cycle"),
        # Not unique: a client of the API contact may reuse its incident_key once the incident
        # it named is resolved, as PagerDuty allows (createIncident: only an open incident
        # with the key refuses a create).
        Index("ix_alerts_namespace_incident_key", "namespace", "incident_key"),
        # The sweeper's look-up: what is due in this bridge, oldest first.
        Index("ix_alerts_due", "namespace", "delivery_state", "next_attempt_at"),
        # The API contact's look-up of a PagerDuty id it did not mint.
        Index("ix_alerts_pagerduty_incident_id", "pagerduty_incident_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    namespace: Mapped[str] = mapped_column(
        String(64), default=DEFAULT_NAMESPACE, server_default=DEFAULT_NAMESPACE
    )
    # "coscale" or "api" on the default route; "coscale:<route>" for a named route's webhook,
    # so that one CoScale alert sent to two routes is two alerts, each with its own incident.
    source: Mapped[str] = mapped_column(String(80))
    source_alert_id: Mapped[str] = mapped_column(String(255))
    cycle: Mapped[int] = mapped_column(Integer, default=1)
    incident_key: Mapped[str] = mapped_column(String(255))

    service_id: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(Text)
    details: Mapped[str | None] = mapped_column(Text)
    urgency: Mapped[str | None] = mapped_column(String(8))
    # Whether title/details came from a trigger; an acknowledge seen first fills them in
    # provisionally and the trigger, when it comes before the create, replaces them.
    title_from_trigger: Mapped[bool] = mapped_column(default=False)
    # The CoScale event of the trigger that opened the cycle (worker.coscale.occurrence): the
    # same trigger posted again after the resolve is a re-post, not a re-fire.
    trigger_occurrence: Mapped[str | None] = mapped_column(String(64))

    # Where it goes: the route's name ("default": the PAGERBRIDGE_PAGERDUTY_* settings), its
    # backend ("rest": incidents; "events": Events API v2, incident_key is the dedup_key), and
    # which credential (a hash of the API token or integration key, never the key itself).
    route: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    backend: Mapped[str] = mapped_column(String(8), default="rest", server_default="rest")
    credential_id: Mapped[str | None] = mapped_column(String(16))
    # Events backend: the trigger as the route built it at the ingress (no routing key, no
    # dedup_key: the worker adds both when it sends).
    event_payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # API contact: the create's fields PagerDuty takes that the bridge does not read itself
    # (priority, escalation_policy, assignments, ...), sent with the create as given.
    forwarded: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # API contact: updateIncident's fields (title, priority, assignments, escalation_level, ...)
    # accepted and not yet taken by PagerDuty, merged in arrival order; sent with the incident's
    # next update, or on their own, and cleared once PagerDuty took them.
    update_fields: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    pagerduty_incident_id: Mapped[str | None] = mapped_column(String(64))
    pagerduty_incident_number: Mapped[int | None] = mapped_column(Integer)
    pagerduty_incident_url: Mapped[str | None] = mapped_column(String(512))

    desired_status: Mapped[AlertStatus] = mapped_column(_enum(AlertStatus, "alert_status"))
    confirmed_status: Mapped[AlertStatus | None] = mapped_column(
        _enum(AlertStatus, "confirmed_status")
    )
    delivery_state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"))

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set before the first create is sent: from then on an unknown incident id means "maybe
    # created, answer lost", and a resolve must look the incident up by key, not skip it.
    create_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When PagerDuty first fell behind; the give-up age counts from here.
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Ingress receipt times: they order events that the queue delivered out of order.
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolve_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # What PagerDuty said about the incident by itself (its v3 webhooks, worker/pipeline/
    # responders.py): when the newest status it reported happened (PagerDuty's clock; an older
    # delivery arriving late is not applied over it), and who last changed it other than the
    # bridge, with when the bridge heard of it (the ingress clock, as CoScale's events).
    pagerduty_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    responder: Mapped[str | None] = mapped_column(String(255))
    responder_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the bridge last read the incident's status before an acknowledge (without webhooks).
    status_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return (
            f"<Alert {self.source}:{self.source_alert_id}#{self.cycle} "
            f"desired={self.desired_status} confirmed={self.confirmed_status} "
            f"state={self.delivery_state} incident={self.pagerduty_incident_id}>"
        )


def _no_default() -> None:
    return None


def _default_of(column: Any) -> Callable[[], Any]:
    default = column.default
    if default is None:
        return _no_default
    if default.is_callable:
        return lambda: default.arg(None)
    return lambda: default.arg


# Column → its default (a callable); the id is the database's to give.
ALERT_COLUMN_DEFAULTS: dict[str, Callable[[], Any]] = {
    column.key: _default_of(column) for column in Alert.__table__.columns if column.key != "id"
}


class AlertRecord:
    """An alerts row as plain attributes: a cycle the intake opens (not inserted yet), or a row
    a reconcile has locked and reads, decides on and writes back itself.

    Not an :class:`Alert`: the ORM tracks every attribute read and set on its instances for a
    unit of work, and builds an identity map of them, which neither of those paths uses (they
    write with Core statements). That bookkeeping was the costliest part of opening a cycle,
    and a good part of reconciling one. Code that decides on an alert reads and writes the
    same attributes on either (:data:`AlertLike`).
    """

    id: int  # set once inserted
    namespace: str
    source: str
    source_alert_id: str
    cycle: int
    incident_key: str
    service_id: str | None
    title: str | None
    details: str | None
    urgency: str | None
    title_from_trigger: bool
    trigger_occurrence: str | None
    route: str
    backend: str
    credential_id: str | None
    event_payload: dict[str, Any] | None
    forwarded: dict[str, Any] | None
    update_fields: dict[str, Any] | None
    pagerduty_incident_id: str | None
    pagerduty_incident_number: int | None
    pagerduty_incident_url: str | None
    desired_status: AlertStatus
    confirmed_status: AlertStatus | None
    delivery_state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    create_sent_at: datetime | None
    pending_since: datetime | None
    opened_at: datetime
    resolve_received_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    pagerduty_event_at: datetime | None
    responder: str | None
    responder_at: datetime | None
    status_read_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def __init__(self, **columns: Any) -> None:
        """A new row: the columns given, the others at their defaults; no id until inserted."""
        unknown = set(columns) - set(ALERT_COLUMN_DEFAULTS)
        if unknown:
            raise TypeError(f"not columns of alerts: {sorted(unknown)}")
        values = {name: default() for name, default in ALERT_COLUMN_DEFAULTS.items()}
        values.update(columns)
        self.__dict__.update(values)

    @classmethod
    def of_row(cls, row: Mapping[Any, Any]) -> Self:
        """A stored row, as a select of every column of ``alerts`` gave it."""
        record = cls.__new__(cls)
        record.__dict__.update(row)
        return record

    def column_values(self) -> dict[str, Any]:
        """Every column but the id, as one row of a multi-row INSERT."""
        given = self.__dict__
        return {name: given[name] for name in ALERT_COLUMN_DEFAULTS}

    def __repr__(self) -> str:
        return (
            f"<AlertRecord {self.source}:{self.source_alert_id}#{self.cycle} "
            f"desired={self.desired_status} confirmed={self.confirmed_status} "
            f"state={self.delivery_state} incident={self.pagerduty_incident_id}>"
        )


# An alert cycle as deciding or reconciling sees it: an ORM instance or a plain record.
AlertLike = Alert | AlertRecord

ALERTS_TABLE = cast(Table, Alert.__table__)


def write_back(
    session: Session, alerts: Iterable[AlertLike], columns: Iterable[str], now: datetime
) -> None:
    """Store ``columns`` of ``alerts`` (rows this transaction has locked, so nothing else
    changed them meanwhile) and their ``updated_at``, in one statement."""
    names = tuple(columns)
    update_rows(
        session,
        ALERTS_TABLE,
        [
            {"id": alert.id, **{name: getattr(alert, name) for name in names}, "updated_at": now}
            for alert in alerts
        ],
        key="id",
    )
