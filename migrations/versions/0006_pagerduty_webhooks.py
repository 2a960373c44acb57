"""pagerduty webhooks: the deliveries kept, and what PagerDuty said about each cycle

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pagerduty_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("webhook_id", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("received_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("applied_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pagerduty_deliveries")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_pagerduty_deliveries_webhook_id")),
    )
    op.create_index(
        "ix_pagerduty_deliveries_applied_at", "pagerduty_deliveries", ["applied_at"], unique=False
    )
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(
            sa.Column("pagerduty_event_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("responder", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("responder_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("status_read_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("status_read_at")
        batch.drop_column("responder_at")
        batch.drop_column("responder")
        batch.drop_column("pagerduty_event_at")
    op.drop_index("ix_pagerduty_deliveries_applied_at", table_name="pagerduty_deliveries")
    op.drop_table("pagerduty_deliveries")
