"""Turn queued task ids into stored predictions: one read, one model call and one write per batch."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, bindparam, func, literal_column, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.orm import Session, sessionmaker, undefer

from shared.db import session_scope
from shared.imaging import ImageRejected
from shared.schema import FINAL_STATES, Prediction, State, status_document, utcnow

log = logging.getLogger(__name__)


class Model(Protocol):
    """What the pipeline needs of a model: a version and a batched call."""

    version: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for (N, 28, 28) images."""
        ...


@dataclass
class _Work:
    row: Prediction
    image: np.ndarray | None = None
    error: str | None = None


def run_batch(
    task_ids: Sequence[str],
    session_factory: sessionmaker[Session],
    model: Model,
    worker_name: str,
    preprocess: Callable[[bytes], np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Predict every task id's upload and store the results; returns each id's status document."""
    with session_scope(session_factory) as session:
        rows = session.scalars(
            select(Prediction).options(undefer(Prediction.image)).where(Prediction.task_id.in_(list(task_ids)))
        ).all()
    by_id = {row.task_id: row for row in rows}
    docs: dict[str, dict[str, Any]] = {}
    work: list[_Work] = []
    for task_id in task_ids:
        row = by_id.get(task_id)
        if row is None:
            # The web writes the row before it enqueues, so this is a message from elsewhere: report, don't crash.
            log.error("task %s has no row in the database; dropping it", task_id)
            docs[task_id] = status_document({"task_id": task_id, "state": State.FAILURE.value,
                                             "error": "unknown upload"})
        elif row.state in FINAL_STATES:
            docs[task_id] = row.status_document()  # a redelivery: the answer is already stored
        else:
            work.append(_Work(row))
    if not work:
        return docs

    started = utcnow()
    t0 = time.perf_counter()
    for item in work:
        try:
            item.image = preprocess(item.row.image)
        except ImageRejected as exc:
            item.error = str(exc)
        except Exception as exc:  # a poison image must end as FAILURE, never block the queue
            log.exception("preprocessing failed for task %s", item.row.task_id)
            item.error = f"could not read this image ({type(exc).__name__})"
    preprocess_ms = (time.perf_counter() - t0) * 1000 / len(work)

    ready = [item for item in work if item.image is not None]
    inference_ms = 0.0
    probabilities = np.empty((0, 10), np.float32)
    if ready:
        t1 = time.perf_counter()
        probabilities = model.predict(np.stack([item.image for item in ready]))
        inference_ms = (time.perf_counter() - t1) * 1000
    finished = utcnow()

    results = {item.row.task_id: probs for item, probs in zip(ready, probabilities, strict=True)}
    updates: dict[str, dict[str, Any]] = {}
    for item in work:
        values: dict[str, Any] = {
            "started_at": started,
            "finished_at": finished,
            "worker": worker_name,
            "preprocess_ms": round(preprocess_ms, 3),
            "model_version": model.version,
        }
        probs = results.get(item.row.task_id)
        if probs is not None:
            values |= {
                "state": State.SUCCESS.value,
                "digit": int(np.argmax(probs)),
                "confidence": round(float(np.max(probs)), 6),
                "probabilities": [round(float(p), 6) for p in probs],
                "inference_ms": round(inference_ms, 3),
                "error": None,
            }
        else:
            values |= {"state": State.FAILURE.value, "digit": None, "confidence": None, "probabilities": None,
                       "inference_ms": None, "error": item.error}
        updates[item.row.task_id] = values

    with session_scope(session_factory) as session:
        all_written = _write_batch(session, updates)
    if all_written:
        for item in work:
            for key, value in updates[item.row.task_id].items():
                setattr(item.row, key, value)
            docs[item.row.task_id] = item.row.status_document()
    else:
        # Another delivery of some of these tasks finished first: the stored answers are the truth.
        with session_scope(session_factory) as session:
            for row in session.scalars(select(Prediction).where(Prediction.task_id.in_(list(updates)))):
                docs[row.task_id] = row.status_document()
    return {task_id: docs[task_id] for task_id in task_ids if task_id in docs}


def _write_batch(session: Session, updates: dict[str, dict[str, Any]]) -> bool:
    """Write the batch's results to rows not final yet; False when some row was already final (a race)."""
    connection = session.connection()
    if connection.dialect.name in ("mysql", "mariadb"):
        return _upsert_mysql(connection, updates)
    table = Prediction.__table__
    columns = next(iter(updates.values())).keys()
    statement = (
        update(table)
        .where(table.c.task_id == bindparam("_task_id"),
               # Only a row that is not final yet is written: a task delivered twice keeps its first answer.
               *[table.c.state != state.value for state in FINAL_STATES])
        .values({name: bindparam(name) for name in columns})
    )
    rows = [{"_task_id": t, **v} for t, v in updates.items()]
    return connection.execute(statement, rows).rowcount == len(rows)


def _upsert_mysql(connection: Connection, updates: dict[str, dict[str, Any]]) -> bool:
    """MySQL: the whole batch in ONE statement (an executemany UPDATE costs a round trip per row).

    INSERT ... ON DUPLICATE KEY UPDATE on the unique task_id: every row exists (it was read at the start
    of the batch), so only the UPDATE part ever runs; its assignments keep a final row as it is, and
    `state` is assigned last because MySQL evaluates them left to right.
    """
    first = next(iter(updates.values()))
    statement = _upsert_statement(tuple(first))
    # Placeholders for the NOT NULL columns of the (never taken) insert path.
    filler = {"image": b"", "image_sha256": "", "size_bytes": 0, "created_at": first["finished_at"]}
    rows = [{"task_id": t, **filler, **v} for t, v in updates.items()]
    # Affected rows: 2 for each row updated, 1 for a row left as it was (CLIENT_FOUND_ROWS).
    return connection.execute(statement, rows).rowcount == 2 * len(rows)


@functools.lru_cache(maxsize=4)
def _upsert_statement(columns: tuple[str, ...]) -> Any:
    """The upsert for these columns, built once (building it costs more than running it)."""
    table = Prediction.__table__
    ordered = [name for name in columns if name != "state"] + ["state"]
    statement = mysql_insert(table)
    # Literal states: PyMySQL batches an executemany INSERT into one statement only when the
    # ON DUPLICATE KEY part has no parameters.
    final = or_(*[table.c.state == literal_column(f"'{state.value}'") for state in sorted(FINAL_STATES)])
    return statement.on_duplicate_key_update(
        [(name, func.IF(final, table.c[name], statement.inserted[name])) for name in ordered]
    )
