"""namespaces: several bridges on one database; the CoScale event that opened a cycle

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 13:20:00

Every alert, inbox, quarantine and PagerDuty-delivery row belongs to one bridge
(``PAGERBRIDGE_NAMESPACE``). Rows stored before are the default namespace's (``pagerbridge``),
whose incident keys keep their format, so the incidents they opened are still found and
resolved.

``alerts.trigger_occurrence``: which CoScale event opened a cycle, so that the same trigger
posted again after the resolve opens nothing. Existing cycles have none (any trigger after
their resolve opens a new cycle, as before).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_NAMESPACE = "pagerbridge"  # as worker.vocabulary, frozen here as this revision saw it


def _namespace_column() -> sa.Column[str]:
    return sa.Column(
        "namespace", sa.String(length=64), server_default=DEFAULT_NAMESPACE, nullable=False
    )


def upgrade() -> None:
    # batch mode: SQLite cannot change constraints in place (it recreates the table).
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(_namespace_column())
        batch.add_column(sa.Column("trigger_occurrence", sa.String(length=64), nullable=True))
        batch.drop_constraint("uq_alerts_source_source_alert_id_cycle", type_="unique")
        batch.drop_index("ix_alerts_incident_key")
        batch.drop_index("ix_alerts_due")
        batch.create_unique_constraint(
            "uq_alerts_namespace_source_source_alert_id_cycle",
            ["namespace", "source", "source_alert_id", "cycle"],
        )
        # Not unique (revision 0005): an API-contact client may reuse a resolved incident's key.
        batch.create_index("ix_alerts_namespace_incident_key", ["namespace", "incident_key"])
        batch.create_index("ix_alerts_due", ["namespace", "delivery_state", "next_attempt_at"])
    for table in ("inbox_events", "quarantined_requests", "pagerduty_deliveries"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(_namespace_column())


def downgrade() -> None:
    # Only sound while every row is the default namespace's: two bridges' rows could break the
    # narrower constraints.
    for table in ("pagerduty_deliveries", "quarantined_requests", "inbox_events"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("namespace")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_index("ix_alerts_due")
        batch.drop_index("ix_alerts_namespace_incident_key")
        batch.drop_constraint("uq_alerts_namespace_source_source_alert_id_cycle", type_="unique")
        batch.create_unique_constraint(
            "uq_alerts_source_source_alert_id_cycle", ["source", "source_alert_id", "cycle"]
        )
        batch.create_index("ix_alerts_incident_key", ["incident_key"])
        batch.create_index("ix_alerts_due", ["delivery_state", "next_attempt_at"])
        batch.drop_column("trigger_occurrence")
        batch.drop_column("namespace")
