"""Coalesced ingestion: concurrent uploads of one web process share one INSERT and one queue message.

Each request hands its validated uploads to the process's Ingest and blocks until they are recorded and
queued. Uploads arriving within `max_wait` of each other (a few milliseconds) are written by one
multi-row INSERT and sent as one batch message; a lone upload waits no longer than that, and is sent as
its own task. Every upload keeps its own row and task id, and a request is answered only after its rows
are committed: "202 means it is in MySQL" holds for each of them.

A request with an Idempotency-Key does not join a group: its key and rows are written in a transaction of
its own (a repeated key fails on the unique index, which would abort every other request of a group).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from shared import idempotency, predictions
from shared.batching import Batcher
from shared.queue import enqueue

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The uploads could not be queued, so they were not accepted (their rows were withdrawn)."""


class KeyReused(Exception):
    """The Idempotency-Key was used before for another request (other files or fields)."""


class KeyInUse(Exception):
    """The Idempotency-Key's first request is still being recorded, and did not end in time."""


Rows = list[dict[str, Any]]
# MySQL's error numbers: a lock wait that timed out (the key's first request holds it), and a deadlock between
# two transactions inserting the same key (one is rolled back and simply tries again).
LOCK_WAIT_TIMEOUT, DEADLOCK = 1205, 1213
KEYED_TRIES = 8


@dataclass(frozen=True)
class Keyed:
    """A request's Idempotency-Key, scoped to its owner, and what the request asks for (its fingerprint)."""

    owner: str
    key: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True)
class KeyedAnswer:
    """The uploads an idempotent request stands for; replayed when an earlier request with its key made them."""

    task_ids: list[str]
    replayed: bool


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

    def accept_keyed(self, uploads: Sequence[predictions.NewUpload], keyed: Keyed) -> KeyedAnswer:
        """Record the uploads with their key in one transaction and enqueue them, or find what the key made.

        Raises KeyReused (the key named another request), KeyInUse (its first request still holds it) or
        QueueUnavailable (rows and key withdrawn).
        """
        answer = self.record_keyed(uploads, keyed)
        if answer.replayed:
            return answer
        try:
            enqueue(self._producer, self._queue, answer.task_ids, self._retry_policy)
        except (KombuOperationalError, RedisError, OSError) as exc:
            log.error("could not enqueue %d upload(s): %s", len(answer.task_ids), exc)
            # Neither the rows nor the key were accepted: a retry with the key must record them anew.
            with self._engine.begin() as conn:
                predictions.withdraw(conn, answer.task_ids)
                idempotency.forget(conn, keyed.owner, keyed.key)
            raise QueueUnavailable(str(exc)) from exc
        log.info("accepted %d upload(s) of 1 keyed request: %s", len(answer.task_ids), ", ".join(answer.task_ids),
                 extra={"task_ids": answer.task_ids})
        return answer

    def record_keyed(self, uploads: Sequence[predictions.NewUpload], keyed: Keyed) -> KeyedAnswer:
        """Commit the key and the uploads' rows together, unless the key is known; what the key stands for.

        tests/fault wraps this method to kill the process right after the commit, before anything is queued.
        """
        for _ in range(KEYED_TRIES):
            try:
                with self._engine.begin() as conn:
                    found = self._recall(conn, keyed)
                    if found is not None:
                        return found
                    idempotency.remember(conn, keyed.owner, keyed.key, keyed.fingerprint,
                                         [u.task_id for u in uploads], keyed.ttl_seconds)
                    rows = predictions.record(conn, uploads, self._queue)
                return KeyedAnswer([row["task_id"] for row in rows], replayed=False)
            except IntegrityError:
                # A concurrent request with this key committed first (our INSERT waited for it): recall it.
                log.info("Idempotency-Key recorded by a concurrent request; replaying it")
            except OperationalError as exc:
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code == LOCK_WAIT_TIMEOUT:
                    raise KeyInUse(str(exc)) from exc
                if code != DEADLOCK:
                    raise
                log.info("Idempotency-Key insert deadlocked with a concurrent one; trying again")
        raise KeyInUse("the key's first request did not settle")

    @staticmethod
    def _recall(conn: Connection, keyed: Keyed) -> KeyedAnswer | None:
        """The uploads an earlier request with this key made, or None; KeyReused if it asked for something else."""
        found = idempotency.recall(conn, keyed.owner, keyed.key, keyed.ttl_seconds)
        if found is None:
            return None
        if found.request_sha256 != keyed.fingerprint:
            raise KeyReused(keyed.key)
        return KeyedAnswer(found.task_ids, replayed=True)
