"""Deliveries instead of enqueues, claims with leases, the queue and the owner of each upload.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Rows from before this revision travelled on the default queue.
DEFAULT_QUEUE = "digits"


def upgrade() -> None:
    op.drop_index("ix_predictions_state_enqueued_at", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("attempts")  # counted enqueues, which say nothing about poison
        batch.add_column(sa.Column("deliveries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queue", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", TIMESTAMP, nullable=True))
    # Owner unknown: existing rows stay visible to operators only (owner NULL).
    op.execute(sa.text("UPDATE predictions SET queue = :queue").bindparams(queue=DEFAULT_QUEUE))
    # A row STARTED under the old code has no lease: give it an expired one, so recovery looks at it.
    op.execute("UPDATE predictions SET lease_expires_at = COALESCE(started_at, created_at) WHERE state = 'STARTED'")
    op.create_index("ix_predictions_queue_state_enqueued_at", "predictions", ["queue", "state", "enqueued_at"])
    op.create_index("ix_predictions_queue_state_lease", "predictions", ["queue", "state", "lease_expires_at"])
    op.create_index("ix_predictions_owner_id", "predictions", ["owner", "id"])


def downgrade() -> None:
    op.drop_index("ix_predictions_owner_id", table_name="predictions")
    op.drop_index("ix_predictions_queue_state_lease", table_name="predictions")
    op.drop_index("ix_predictions_queue_state_enqueued_at", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("claim_token")
        batch.drop_column("owner")
        batch.drop_column("queue")
        batch.drop_column("deliveries")
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_predictions_state_enqueued_at", "predictions", ["state", "enqueued_at"])
