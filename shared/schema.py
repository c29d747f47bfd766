"""The `predictions` table: one row per upload, written before the task is queued (the outbox)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Double, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

# MEDIUMBLOB on MySQL (16 MiB): room for the largest accepted upload (BLOB would stop at 64 KiB).
IMAGE_BYTES = LargeBinary().with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")
# Microseconds on MySQL/MariaDB, whose plain DATETIME keeps whole seconds only.
TIMESTAMP = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


class State(enum.StrEnum):
    """Where a prediction is in its life; only shared/predictions.py moves a row between them.

    PENDING (recorded, a message on the queue) -> STARTED (claimed by a worker, under a lease it renews)
    -> SUCCESS or FAILURE (final: never written again). An expired lease sends a row back to PENDING.
    PENDING or STARTED -> CANCELED when its owner or an operator cancels it (final too: a worker's claim on it
    is fenced, so its late write changes nothing).
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELED = "CANCELED"


FINAL_STATES = frozenset({State.SUCCESS, State.FAILURE, State.CANCELED})
# BIGINT ids on the server; SQLite autoincrements only a column declared INTEGER.
BIGINT = BigInteger().with_variant(Integer(), "sqlite")


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
        # Recovery's questions, per queue: which PENDING rows were enqueued long ago, which claims expired?
        Index("ix_predictions_queue_state_enqueued_at", "queue", "state", "enqueued_at"),
        Index("ix_predictions_queue_state_lease", "queue", "state", "lease_expires_at"),
        # A visitor's history: their rows, newest first.
        Index("ix_predictions_owner_id", "owner", "id"),
        # Retention: final rows whose image is still kept, oldest first; and final rows by age.
        Index("ix_predictions_retention", "data_removed_at", "finished_at"),
        Index("ix_predictions_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)  # 2^31 uploads is not far
    task_id: Mapped[str] = mapped_column(String(36), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=State.PENDING.value, index=True)
    digit: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Double)
    probabilities: Mapped[list[float] | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(32))  # the model's architecture, e.g. seed-cnn
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
    # The queue its messages travel on: recovery looks only at its own queue's rows.
    queue: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of the visitor's owner token (never the token itself); NULL = operators only.
    owner: Mapped[str | None] = mapped_column(String(64))
    # When a message for it was last put on the queue.
    enqueued_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    # Deliveries: how many times a worker claimed (started) it. Poison = MAX_ATTEMPTS claims, no answer.
    deliveries: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # The current claim: a token that fences the claimant's final write, and when its lease runs out.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    preprocess_ms: Mapped[float | None] = mapped_column(Double)
    inference_ms: Mapped[float | None] = mapped_column(Double)
    worker: Mapped[str | None] = mapped_column(String(255))
    # When retention removed the image's bytes (the row and its answer stay); NULL while it is kept.
    data_removed_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    # Where to POST the final status document, and which events (comma-separated: start, completed).
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_events: Mapped[str | None] = mapped_column(String(32))

    def status_document(self, webhook: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The API's status shape; the worker stores the same dict in Redis."""
        return status_document({name: getattr(self, name) for name in STATUS_COLUMNS}, webhook)


STATUS_COLUMNS = ("task_id", "state", "digit", "confidence", "probabilities", "model_name", "model_version",
                  "error", "created_at", "finished_at", "data_removed_at", "webhook_url", "webhook_events")


def status_document(values: Mapping[Any, Any], webhook: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The API's status shape from a row's values (missing ones are None) and its webhook's delivery, if any.

    `webhook` is the delivery of the `completed` event as shared/deliveries.py reports it; an upload that asked
    for a webhook whose final state is not committed yet has none, and reads as not yet delivered.
    """
    doc = {name: values.get(name) for name in STATUS_COLUMNS[:10]}
    doc["created_at"] = iso(doc["created_at"])
    doc["finished_at"] = iso(doc["finished_at"])
    doc["data_removed"] = values.get("data_removed_at") is not None
    url = values.get("webhook_url")
    doc["webhook"] = None if not url else {
        "url": url, "events": (values.get("webhook_events") or "completed").split(","),
        "state": "PENDING", "attempts": 0, "last_status": None, "delivered": False, **(webhook or {})}
    return doc


def settled(doc: Mapping[str, Any]) -> bool:
    """Whether a status document will never change again (final, and its webhook no longer being tried).

    Only settled documents are cached; retention and deletion remove their cached copies themselves.
    """
    hook = doc.get("webhook") or {}
    # A webhook for `start` alone never reports a final delivery: it does not hold the document back.
    owed = hook.get("state") == "PENDING" and "completed" in hook.get("events", ())
    return doc.get("state") in FINAL_STATES and not owed


class IdempotencyKey(Base):
    """A client's Idempotency-Key on POST /predict: which request it named and which uploads it made."""

    __tablename__ = "idempotency_keys"
    # One key per owner: a second INSERT of the same pair waits for the first transaction, then fails.
    __table_args__ = (UniqueConstraint("owner", "idem_key", name="uq_idempotency_keys_owner_key"),)

    id: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    idem_key: Mapped[str] = mapped_column(String(255), nullable=False)  # the key's SHA-256 (idempotency.stored)
    # SHA-256 of what the request asked for (its files and fields): the same key with another request is refused.
    request_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    task_ids: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP, nullable=False, default=utcnow, index=True)


class WebhookDelivery(Base):
    """One webhook event of one upload, delivered at least once: its state lives here, not in Redis."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("task_id", "event", name="uq_webhook_deliveries_task_event"),
        # The senders' question: which deliveries are due?
        Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36), nullable=False)
    event: Mapped[str] = mapped_column(String(16), nullable=False)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    # The JSON body, fixed when the event happened: every retry sends (and signs) the same bytes and webhook-id.
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # PENDING, DELIVERED or FAILED (gave up)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(255))
    next_attempt_at: Mapped[datetime] = mapped_column(TIMESTAMP, nullable=False)
    # A sender's hold on it while it tries: another sender takes it over only after this (a killed worker).
    lease_expires_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
    lease_token: Mapped[str | None] = mapped_column(String(32))  # fences what the holding sender records
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP, nullable=False, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(TIMESTAMP)
