"""API contact: the client's incident_key may repeat once resolved; forwarded create fields

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 12:40:00

``incident_key`` loses its unique constraint (a client of the PagerDuty-shaped API may reuse a
key once its incident is resolved, as PagerDuty allows) and keeps an index for the look-up of an
open incident by key; ``forwarded`` holds the create's fields sent on to PagerDuty as given.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop a constraint in place.
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint("uq_alerts_incident_key", type_="unique")
        batch.create_index("ix_alerts_incident_key", ["incident_key"])
        batch.add_column(sa.Column("forwarded", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("forwarded")
        batch.drop_index("ix_alerts_incident_key")
        batch.create_unique_constraint("uq_alerts_incident_key", ["incident_key"])
