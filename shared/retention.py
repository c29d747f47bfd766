"""Data over time: deleting uploads on request, and the retention purge of images and rows.

Neither changes a prediction's state (shared/predictions.py does that): a delete removes rows of any state
(an unfinished one is thereby cancelled: a worker holding it finds its row gone and writes nothing), and the
purge only ever touches FINAL rows, whose images recovery will never need again. Every purge statement works
on at most `limit` rows picked on an index, each in its own short transaction, so the table that uploads are
written to is never locked for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, delete, exists, select, update

from shared import deliveries
from shared.predictions import COLUMNS, TABLE
from shared.schema import FINAL_STATES, utcnow

FINAL = [state.value for state in FINAL_STATES]
BATCH = 1000  # rows per purge statement


def delete_uploads(conn: Connection, task_ids: Sequence[str], owner: str | None) -> list[str]:
    """Delete these uploads of this owner (None: an operator, any owner's), with their deliveries; the ids deleted."""
    mine = [COLUMNS.owner == owner] if owner is not None else []
    ids = [r.task_id for r in conn.execute(select(COLUMNS.task_id).where(COLUMNS.task_id.in_(list(task_ids)), *mine))]
    if ids:
        deliveries.forget(conn, ids)
        conn.execute(delete(TABLE).where(COLUMNS.task_id.in_(ids)))
    return ids


def owned(conn: Connection, owner: str, limit: int = BATCH) -> list[str]:
    """Up to `limit` task ids of an owner's uploads (erasure deletes them batch by batch)."""
    return [r.task_id for r in conn.execute(select(COLUMNS.task_id).where(COLUMNS.owner == owner)
                                            .order_by(COLUMNS.id).limit(limit))]


def purge_images(conn: Connection, before: datetime, limit: int = BATCH) -> list[str]:
    """Remove the image bytes of up to `limit` final uploads finished before `before`; their task ids."""
    rows = conn.execute(select(COLUMNS.id, COLUMNS.task_id)
                        .where(COLUMNS.data_removed_at.is_(None), COLUMNS.finished_at < before,
                               COLUMNS.state.in_(FINAL))
                        .order_by(COLUMNS.finished_at).limit(limit)).all()
    if not rows:
        return []
    conn.execute(update(TABLE).where(COLUMNS.id.in_([r.id for r in rows]), COLUMNS.data_removed_at.is_(None),
                                     COLUMNS.state.in_(FINAL))
                 .values(image=b"", data_removed_at=utcnow()))
    return [r.task_id for r in rows]


def purge_rows(conn: Connection, before: datetime, limit: int = BATCH) -> list[str]:
    """Delete up to `limit` whole final uploads finished before `before`, with their deliveries; their task ids.

    An upload whose webhook is still being tried waits for it (delivered or given up): a row retention shorter
    than the back-off's span must not drop a delivery it owes.
    """
    owed = exists().where(deliveries.COLUMNS.task_id == COLUMNS.task_id, deliveries.COLUMNS.state == deliveries.PENDING)
    rows = conn.execute(select(COLUMNS.id, COLUMNS.task_id)
                        .where(COLUMNS.finished_at < before, COLUMNS.state.in_(FINAL), ~owed)
                        .order_by(COLUMNS.finished_at).limit(limit)).all()
    if not rows:
        return []
    ids = [r.task_id for r in rows]
    deliveries.forget(conn, ids)
    conn.execute(delete(TABLE).where(COLUMNS.id.in_([r.id for r in rows]), COLUMNS.state.in_(FINAL)))
    return ids
