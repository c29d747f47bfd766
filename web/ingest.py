"""Coalesced ingestion: concurrent uploads of one web process share one INSERT and one queue message.

Each request hands its validated uploads to the process's Ingest and blocks until they are recorded and
queued. Uploads arriving within `max_wait` of each other (a few milliseconds) are written by one
multi-row INSERT and sent as one batch message; a lone upload waits no longer than that, and is sent as
its own task. Every upload keeps its own row and task id, and a request is answered only after its rows
are committed: "202 means it is in MySQL" holds for each of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import Engine

from shared import predictions
from shared.batching import Batcher
from shared.queue import enqueue

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The uploads could not be queued, so they were not accepted (their rows were withdrawn)."""


Rows = list[dict[str, Any]]


class Ingest:
    """Record and enqueue the uploads of concurrent requests together, each request getting its own rows."""

    def __init__(self, engine: Engine, producer: Celery, queue: str, retry_policy: Mapping[str, Any],
                 max_wait: float, max_requests: int = 64) -> None:
        self._engine = engine
        self._producer = producer
        self._queue = queue
        self._retry_policy = dict(retry_policy)
        self._batcher: Batcher[Sequence[predictions.NewUpload], Rows] = Batcher(
            self._accept_all, max_requests, max_wait, name="ingest")

    def accept(self, uploads: Sequence[predictions.NewUpload]) -> Rows:
        """Record (committed) and enqueue one request's uploads; their rows, or QueueUnavailable."""
        return self._batcher.submit(uploads)

    def _accept_all(self, requests: list[Sequence[predictions.NewUpload]]) -> list[Rows | BaseException]:
        """One INSERT and one enqueue for every request of the group."""
        uploads = [upload for request in requests for upload in request]
        with self._engine.begin() as conn:  # committed before anyone is told: the row is the outbox
            rows = predictions.record(conn, uploads, self._queue)
        ids = [row["task_id"] for row in rows]
        try:
            enqueue(self._producer, self._queue, ids, self._retry_policy)
        except (KombuOperationalError, RedisError, OSError) as exc:
            log.error("could not enqueue %d upload(s): %s", len(ids), exc)
            # Not queued, so not accepted: remove the rows so they never look like work in progress.
            with self._engine.begin() as conn:
                predictions.withdraw(conn, ids)
            return [QueueUnavailable(str(exc)) for _ in requests]
        log.info("accepted %d upload(s) of %d request(s): %s", len(ids), len(requests), ", ".join(ids),
                 extra={"task_ids": ids})
        out: list[Rows | BaseException] = []
        start = 0
        for request in requests:
            out.append(rows[start:start + len(request)])
            start += len(request)
        return out
