"""AlertRecord: an alerts row as plain attributes, for the intake's new cycles and the
reconcile's locked rows (models/alert.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, AlertRecord, utcnow
from worker.vocabulary import AlertStatus, DeliveryState


def test_a_new_record_has_every_column_at_its_default_unless_given() -> None:
    now = utcnow()
    record = AlertRecord(
        source="coscale",
        source_alert_id="a1",
        incident_key="k",
        desired_status=AlertStatus.TRIGGERED,
        delivery_state=DeliveryState.PENDING,
        opened_at=now,
    )
    values = record.column_values()
    assert set(values) == {c.key for c in Alert.__table__.columns} - {"id"}
    assert (values["cycle"], values["attempts"], values["title_from_trigger"]) == (1, 0, False)
    assert (values["route"], values["backend"]) == ("default", "rest")
    assert values["title"] is None and values["lease_owner"] is None
    assert values["created_at"] >= now and values["opened_at"] == now
    with pytest.raises(AttributeError):
        _ = record.id  # none until inserted


def test_a_record_refuses_a_name_that_is_not_a_column() -> None:
    with pytest.raises(TypeError, match="desired_state"):
        AlertRecord(source="coscale", desired_state=AlertStatus.RESOLVED)


def test_a_stored_row_reads_back_as_the_orm_would_show_it(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sqlite_sessions.begin() as session:
        alert = Alert(
            source="coscale",
            source_alert_id="a2",
            cycle=2,
            incident_key="k2",
            desired_status=AlertStatus.ACKNOWLEDGED,
            confirmed_status=AlertStatus.TRIGGERED,
            delivery_state=DeliveryState.PARKED,
            opened_at=now,
            event_payload={"summary": "x"},
        )
        session.add(alert)
    with sqlite_sessions() as session:
        (row,) = session.execute(select(*Alert.__table__.columns)).mappings()
        stored = session.scalars(select(Alert)).one()
    record = AlertRecord.of_row(row)
    for column in Alert.__table__.columns:
        assert getattr(record, column.key) == getattr(stored, column.key), column.key
    assert record.desired_status is AlertStatus.ACKNOWLEDGED
    assert record.opened_at == now and record.opened_at.tzinfo is not None
