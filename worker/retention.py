"""Retention's purge: image bytes and whole rows of final uploads past their settings, and expired idempotency keys.

It runs once per recovery sweep, at its end, under the recovery lock of the worker's own queue. The purge itself
is global (every queue's rows share one table), so with several queues there are several purgers at once. That
is harmless: each statement works on at most BATCH rows picked on an index, in its own short transaction, and
re-checks its guard (final, image still kept) as it writes, so two purgers at worst blank the same rows' bytes
twice or find them already gone. Only FINAL rows are ever touched: recovery may still need an unfinished
upload's image, and shared/retention.py's queries never select one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from shared import idempotency, retention, statuses
from shared.config import Settings
from shared.errors import REDIS_ERRORS
from shared.schema import utcnow
from worker.metrics import PURGED

log = logging.getLogger(__name__)

BATCH = retention.BATCH  # rows per statement (the bound: at most 1,000, on an index)
BATCHES_PER_SWEEP = 50  # per kind: a sweep never runs long; what is left waits for the next sweep
WHAT = ("image", "row", "idempotency_key")  # PURGED's labels


@dataclass(frozen=True)
class Purged:
    """What one purge removed: image bytes, whole rows and idempotency keys (counts), in how many batches."""

    images: int = 0
    rows: int = 0
    keys: int = 0
    batches: int = 0

    @property
    def anything(self) -> bool:
        """Whether it removed anything at all."""
        return bool(self.images or self.rows or self.keys)


class Purge:
    """One retention pass per call, in bounded batches; a database error ends the pass (the next sweep goes on)."""

    def __init__(self, engine: Engine, redis: Redis, *, image_retention_seconds: float | None,
                 row_retention_seconds: float | None, idempotency_ttl_seconds: float, result_ttl_seconds: int,
                 batch: int = BATCH, max_batches: int = BATCHES_PER_SWEEP, max_seconds: float | None = None) -> None:
        self._engine = engine
        self._redis = redis
        self._images = image_retention_seconds
        self._rows = row_retention_seconds
        self._keys = idempotency_ttl_seconds
        self._result_ttl = result_ttl_seconds
        self._batch = batch
        self._max_batches = max_batches
        self._max_seconds = max_seconds
        # Ids whose cached documents the last pass dropped, dropped again by the next one: a reader that read
        # the row just before its image went may have cached it again (SET if absent) just after the first drop.
        self._uncached: list[list[str]] = []
        for what in WHAT:  # each series shows on /metrics at 0 from the start, so rate() sees the first purge
            PURGED.labels(what=what)

    @classmethod
    def from_settings(cls, engine: Engine, redis: Redis, settings: Settings) -> Purge:
        """The purge the settings ask for; a pass never runs longer than a sweep interval (the lock outlives it)."""
        return cls(engine, redis, image_retention_seconds=settings.image_retention_seconds,
                   row_retention_seconds=settings.row_retention_seconds,
                   idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
                   result_ttl_seconds=settings.result_ttl_seconds, max_seconds=settings.sweep_interval_seconds)

    def __call__(self) -> Purged:
        """Purge what retention allows: whole rows first (their images need no blanking then), images, keys."""
        deadline = None if self._max_seconds is None else time.monotonic() + self._max_seconds
        rows = images = keys = batches = 0
        self._drop_again()
        try:
            if self._rows is not None:
                rows, spent = self._ids(retention.purge_rows, self._rows, self._tombstone, deadline)
                batches += spent
            if self._images is not None:
                images, spent = self._ids(retention.purge_images, self._images, self._uncache, deadline)
                batches += spent
            keys, spent = self._expired_keys(deadline)
            batches += spent
        except (SQLAlchemyError, OSError) as exc:  # the database is away: recovery goes on, the next sweep retries
            log.warning("retention purge stopped: %s", exc)
        purged = Purged(images, rows, keys, batches)
        if purged.anything:
            log.info("retention: removed %d image(s), deleted %d row(s) and %d expired idempotency key(s) "
                     "in %d batch(es)", images, rows, keys, batches)
        return purged

    def _more(self, spent: int, deadline: float | None) -> bool:
        return spent < self._max_batches and (deadline is None or time.monotonic() < deadline)

    def _ids(self, query: Callable[[Connection, datetime, int], list[str]], seconds: float,
             after: Callable[[list[str]], None], deadline: float | None) -> tuple[int, int]:
        """Run a purge query batch by batch while batches come back full; (rows purged, batches run)."""
        before = utcnow() - timedelta(seconds=seconds)
        done = spent = 0
        while self._more(spent, deadline):
            with self._engine.begin() as conn:  # one short transaction per batch
                ids = query(conn, before, self._batch)
            spent += 1
            done += len(ids)
            if ids:
                after(ids)
            if len(ids) < self._batch:
                break
        return done, spent

    def _expired_keys(self, deadline: float | None) -> tuple[int, int]:
        done = spent = 0
        while self._more(spent, deadline):
            with self._engine.begin() as conn:
                removed = idempotency.purge_expired(conn, self._keys, self._batch)
            spent += 1
            done += removed
            if removed < self._batch:
                break
        if done:
            PURGED.labels(what="idempotency_key").inc(done)
        return done, spent

    def _uncache(self, task_ids: list[str]) -> None:
        """Count blanked images and drop their cached documents, so reads say data_removed at once."""
        PURGED.labels(what="image").inc(len(task_ids))
        self._uncached.append(task_ids)
        try:
            statuses.uncache(self._redis, task_ids)
        except REDIS_ERRORS as exc:  # the copies lapse after RESULT_TTL_SECONDS anyway
            log.warning("retention: could not drop %d cached document(s): %s", len(task_ids), exc)

    def _drop_again(self) -> None:
        """Drop the last pass's documents once more (a sweep interval later, no read is still in flight)."""
        batches, self._uncached = self._uncached, []
        try:
            for task_ids in batches:
                statuses.uncache(self._redis, task_ids)
        except REDIS_ERRORS as exc:
            log.warning("retention: could not drop cached documents again: %s", exc)

    def _tombstone(self, task_ids: Sequence[str]) -> None:
        """Count deleted rows and tombstone their cached documents, as a delete on request does."""
        PURGED.labels(what="row").inc(len(task_ids))
        try:
            statuses.forget(self._redis, task_ids, self._result_ttl)
        except REDIS_ERRORS as exc:
            log.warning("retention: could not tombstone %d cached document(s): %s", len(task_ids), exc)
