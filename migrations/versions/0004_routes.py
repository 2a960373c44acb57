"""routes: which route, backend and credential each alert cycle uses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 20:40:00

``source`` widens to 80 characters: a named route's webhook alerts are ``coscale:<route>``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column's type in place.
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("source", existing_type=sa.String(length=16), type_=sa.String(length=80))
        batch.add_column(
            sa.Column("route", sa.String(length=64), server_default="default", nullable=False)
        )
        batch.add_column(
            sa.Column("backend", sa.String(length=8), server_default="rest", nullable=False)
        )
        batch.add_column(sa.Column("credential_id", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("event_payload", sa.JSON(), nullable=True))
    with op.batch_alter_table("alert_events") as batch:
        batch.alter_column("source", existing_type=sa.String(length=16), type_=sa.String(length=80))


def downgrade() -> None:
    with op.batch_alter_table("alert_events") as batch:
        batch.alter_column("source", existing_type=sa.String(length=80), type_=sa.String(length=16))
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("event_payload")
        batch.drop_column("credential_id")
        batch.drop_column("backend")
        batch.drop_column("route")
        batch.alter_column("source", existing_type=sa.String(length=80), type_=sa.String(length=16))
