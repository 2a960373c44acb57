"""API contact: an update's fields PagerDuty takes, waiting to be sent

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 15:20:00

``alerts.update_fields`` holds the fields of the API contact's updates (title, priority,
assignments, escalation_level, ...) accepted and not yet taken by PagerDuty. Existing cycles have
none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode, as 0005: SQLite alters a table by recreating it.
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("update_fields", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("update_fields")
