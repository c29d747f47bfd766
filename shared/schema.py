"""The `predictions` table: one row per upload, written before the task is queued (the outbox)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Double, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

# MEDIUMBLOB on MySQL (16 MiB): room for the largest accepted upload (BLOB would stop at 64 KiB).
IMAGE_BYTES = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
# Microseconds on MySQL/MariaDB, whose plain DATETIME keeps whole seconds only.
TIMESTAMP = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class State(enum.StrEnum):
    """Where a prediction is in its life; the same names Celery uses."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


FINAL_STATES = frozenset({State.SUCCESS, State.FAILURE})


class Base(DeclarativeBase):
    """Declarative base of the project's tables."""


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (MySQL DATETIME has none; every stored time is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    """An ISO 8601 UTC timestamp for the API, or None."""
    return None if value is None else value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


class Prediction(Base):
    """One uploaded image and, once a worker got to it, its predicted digit."""

    __tablename__ = "predictions"
    # The unique task id is what makes a redelivered task harmless: it can never become a second row.
    __table_args__ = (
        UniqueConstraint("task_id", name="uq_predictions_task_id"),
        # The sweeper's question: which PENDING rows were enqueued long ago?
        Index("ix_predictions_state_enqueued_at", "state", "enqueued_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=State.PENDING.value, index=True)
    digit: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Double)
    probabilities: Mapped[list[float] | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    # The upload itself stays in the row so the task can be re-queued from MySQL alone; deferred so
    # history queries never drag the bytes along.
    image: Mapped[bytes] = deferred(mapped_column(IMAGE_BYTES, nullable=False))
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(TIMESTAMP, nullable=False, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    finished_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    # When the task was last put on the queue, and how many times: the sweeper re-enqueues a PENDING
    # row whose message was lost, and gives up (FAILURE) after too many attempts.
    enqueued_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    preprocess_ms: Mapped[float | None] = mapped_column(Double)
    inference_ms: Mapped[float | None] = mapped_column(Double)
    worker: Mapped[str | None] = mapped_column(String(255))

    def status_document(self) -> dict[str, Any]:
        """The API's status shape; the worker stores the same dict in Redis."""
        return status_document({name: getattr(self, name) for name in STATUS_COLUMNS})


STATUS_COLUMNS = ("task_id", "state", "digit", "confidence", "probabilities", "model_version", "error",
                  "created_at", "finished_at")


def status_document(values: Mapping[str, Any]) -> dict[str, Any]:
    """The API's status shape from a row's values (missing ones are None)."""
    doc = {name: values.get(name) for name in STATUS_COLUMNS}
    doc["created_at"] = iso(doc["created_at"])
    doc["finished_at"] = iso(doc["finished_at"])
    return doc
