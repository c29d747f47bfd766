"""Coalesced ingestion: concurrent uploads of one web process share one INSERT and one queue message.

Each request hands its validated uploads to the process's Ingest and blocks until they are recorded and
queued. Uploads arriving within `max_wait` of each other (a few milliseconds) are written by one
multi-row INSERT and sent as one batch message; a lone upload waits no longer than that, and is sent as
its own task. Every upload keeps its own row and task id, and a request is answered only after its rows
are committed: "202 means it is in MySQL" holds for each of them.

Requests with an Idempotency-Key join groups too: the group's keys are stored by one upsert in the same
transaction as its rows, and a request whose key was already live (an earlier request's, or one of the same
group) records nothing and answers with what the key names. A key held by another transaction makes the group
wait for it (the unique index); should that wait time out, the key's requests get 409 and the rest of the
group is recorded without them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from shared import idempotency, predictions
from shared.batching import Batcher
from shared.errors import BROKER_ERRORS
from shared.queue import enqueue

log = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The uploads could not be queued, so they were not accepted (their rows were withdrawn)."""


class KeyReused(Exception):
    """The Idempotency-Key was used before for another request (other files or fields)."""


class KeyInUse(Exception):
    """The Idempotency-Key's first request is still being recorded, and did not end in time."""


# MySQL's error numbers: a lock wait that timed out (the key's first request holds it), and a deadlock between
# two transactions inserting the same keys (one is rolled back and simply tries again).
LOCK_WAIT_TIMEOUT, DEADLOCK = 1205, 1213
GROUP_TRIES = 8


@dataclass(frozen=True)
class Keyed:
    """A request's Idempotency-Key, scoped to its owner, and what the request asks for (its fingerprint)."""

    owner: str
    key: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True)
class KeyedAnswer:
    """The uploads a request stands for; replayed when an earlier request with its key made them."""

    task_ids: list[str]
    replayed: bool


@dataclass(frozen=True)
class Submission:
    """One request's validated uploads, and its Idempotency-Key if it sent one."""

    uploads: Sequence[predictions.NewUpload]
    keyed: Keyed | None = None

    @property
    def task_ids(self) -> list[str]:
        """The ids its uploads get if it is recorded."""
        return [upload.task_id for upload in self.uploads]

    def fresh(self, outcome: KeyedAnswer | BaseException) -> bool:
        """Whether this outcome recorded the request's own rows (not a replay, not an error)."""
        return isinstance(outcome, KeyedAnswer) and not outcome.replayed


Outcome = KeyedAnswer | BaseException


class Ingest:
    """Record and enqueue the uploads of concurrent requests together, each request getting its own rows."""

    def __init__(self, engine: Engine, producer: Celery, queue: str, retry_policy: Mapping[str, Any],
                 max_wait: float, max_requests: int = 64) -> None:
        self._engine = engine
        self._producer = producer
        self._queue = queue
        self._retry_policy = dict(retry_policy)
        self._batcher: Batcher[Submission, KeyedAnswer] = Batcher(self._accept_all, max_requests, max_wait,
                                                                  name="ingest")

    def accept(self, uploads: Sequence[predictions.NewUpload]) -> list[str]:
        """Record (committed) and enqueue one request's uploads; their task ids, or QueueUnavailable."""
        return self._batcher.submit(Submission(uploads)).task_ids

    def accept_keyed(self, uploads: Sequence[predictions.NewUpload], keyed: Keyed) -> KeyedAnswer:
        """Record and enqueue the uploads with their key, or find what the key made (replayed).

        Raises KeyReused (the key named another request), KeyInUse (its first request still holds it) or
        QueueUnavailable (rows and key withdrawn).
        """
        return self._batcher.submit(Submission(uploads, keyed))

    def _accept_all(self, group: list[Submission]) -> list[Outcome]:
        """One transaction (keys, then rows) and one enqueue for every request of the group."""
        outcomes = self._record_group(group)
        fresh = [s for s, outcome in zip(group, outcomes, strict=True) if s.fresh(outcome)]
        ids = [task_id for s in fresh for task_id in s.task_ids]
        if not ids:
            return outcomes
        try:
            enqueue(self._producer, self._queue, ids, self._retry_policy)
        except BROKER_ERRORS as exc:
            log.error("could not enqueue %d upload(s): %s", len(ids), exc)
            self._withdraw([s for s in fresh if s.keyed is None])
            if any(s.keyed is not None for s in fresh):
                log.warning("keyed uploads kept for recovery to queue once the broker is back: %s",
                            ", ".join(t for s in fresh if s.keyed is not None for t in s.task_ids))
            return [QueueUnavailable(str(exc)) if s.fresh(o) and s.keyed is None else o
                    for s, o in zip(group, outcomes, strict=True)]
        log.info("accepted %d upload(s) of %d request(s): %s", len(ids), len(fresh), ", ".join(ids),
                 extra={"task_ids": ids})
        return outcomes

    def _withdraw(self, unkeyed: list[Submission]) -> None:
        """Uploads without a key that could not be queued were not accepted: remove their rows (the client's retry
        records them anew). Keyed ones stay, and are answered 202: they are in MySQL, recovery queues them once
        Redis is back, and a retry with their key (here, or in another web process meanwhile) finds real rows."""
        ids = [task_id for s in unkeyed for task_id in s.task_ids]
        if ids:
            with self._engine.begin() as conn:
                predictions.withdraw(conn, ids)

    def _record_group(self, group: list[Submission]) -> list[Outcome]:
        """record(), tried again after a deadlock; a key whose first request holds it too long gets 409 alone."""
        tries = 0
        while True:
            try:
                return self.record(group)
            except OperationalError as exc:
                code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
                if code == LOCK_WAIT_TIMEOUT and any(s.keyed is not None for s in group):
                    rest = [s for s in group if s.keyed is None]
                    done = iter(self._record_group(rest) if rest else [])
                    return [KeyInUse(s.keyed.key) if s.keyed is not None else next(done) for s in group]
                tries += 1
                if code != DEADLOCK or tries >= GROUP_TRIES:
                    raise  # a 503 for the whole group: the database is not answering as it should
                log.info("ingest deadlocked with a concurrent group on an Idempotency-Key; trying again")

    def record(self, group: list[Submission]) -> list[Outcome]:
        """Commit the group's keys and the rows of every request that is not a repeat; each request's outcome.

        tests/fault wraps this method to kill the process right after the commit, before anything is queued.
        """
        with self._engine.begin() as conn:  # committed before anyone is told: the row is the outbox
            keyed = [s.keyed for s in group if s.keyed is not None]
            known = idempotency.claim_all(conn, [
                idempotency.Claimed(s.keyed.owner, s.keyed.key, s.keyed.fingerprint, s.task_ids)
                for s in group if s.keyed is not None], keyed[0].ttl_seconds) if keyed else {}
            outcomes = [self._outcome(s, known) for s in group]
            predictions.record(conn, [u for s, o in zip(group, outcomes, strict=True) if s.fresh(o)
                                      for u in s.uploads], self._queue)
        return outcomes

    @staticmethod
    def _outcome(s: Submission, known: Mapping[tuple[str, str], idempotency.Remembered]) -> Outcome:
        """Fresh, unless the key's record names other uploads: then a replay of them, or KeyReused."""
        if s.keyed is None:
            return KeyedAnswer(s.task_ids, replayed=False)
        found = known.get((s.keyed.owner, s.keyed.key))
        if found is None:  # cannot happen (the upsert stored it, the locking read found it): refuse just this one
            return KeyInUse(s.keyed.key)
        if found.task_ids == s.task_ids:
            return KeyedAnswer(s.task_ids, replayed=False)
        if found.request_sha256 != s.keyed.fingerprint:
            return KeyReused(s.keyed.key)
        return KeyedAnswer(found.task_ids, replayed=True)
