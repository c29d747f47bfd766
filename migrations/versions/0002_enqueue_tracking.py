"""Track when and how often each upload was enqueued, for the sweeper.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("enqueued_at", TIMESTAMP, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    # Rows from before this revision were enqueued when they were created.
    op.execute("UPDATE predictions SET enqueued_at = created_at, attempts = 1")
    op.create_index("ix_predictions_state_enqueued_at", "predictions", ["state", "enqueued_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_state_enqueued_at", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("attempts")
        batch.drop_column("enqueued_at")
