"""predictions.id as BIGINT: an INT runs out after 2^31 uploads (about 7 years at 10/s, months at 300/s).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

SQLite's INTEGER PRIMARY KEY is 64-bit already: nothing to do there. On MySQL/MariaDB, widening the column copies
the table (ALGORITHM=COPY) and blocks writes meanwhile: on a large table, plan it for a quiet hour (or use an
online schema-change tool).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute("ALTER TABLE predictions MODIFY id BIGINT NOT NULL AUTO_INCREMENT")


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute("ALTER TABLE predictions MODIFY id INTEGER NOT NULL AUTO_INCREMENT")
