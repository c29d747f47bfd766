"""The outbox sweeper: uploads recorded as PENDING whose queue message was lost get enqueued again.

A message can be lost after the row was written: Redis restarted without its append-only file, its
queue was flushed, or a worker died holding reserved messages (Redis gives those back only after the
visibility timeout). The row in the database is the truth, so one worker at a time (a Redis lock)
looks for PENDING rows enqueued long ago and enqueues them again, waiting twice as long after each
attempt; a row enqueued `max_attempts` times without an answer (say, an image that kills workers)
ends as FAILURE with a reason. Enqueuing a task twice is harmless: the write is idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import session_scope
from shared.queue import store_statuses
from shared.schema import Prediction, State, utcnow

log = logging.getLogger(__name__)

LOCK_KEY = "digits:sweeper"
CHUNK = 64  # task ids per re-enqueued message

Enqueue = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did."""

    requeued: list[str]
    failed: list[str]


def sweep(session_factory: sessionmaker[Session], enqueue: Enqueue, redis: Redis, settings: Settings,
          now: datetime | None = None) -> SweepResult:
    """Re-enqueue PENDING uploads whose last enqueue is older than their back-off; fail those out of attempts."""
    now = now or utcnow()
    base = settings.sweep_after_seconds
    with session_scope(session_factory) as session:
        rows = session.execute(
            select(Prediction.task_id, Prediction.attempts, Prediction.enqueued_at)
            .where(Prediction.state == State.PENDING.value,
                   Prediction.enqueued_at < now - timedelta(seconds=base))
            .order_by(Prediction.enqueued_at)
            .limit(1000)
        ).all()
    # Back-off: after the n-th enqueue wait base * 2**(n-1), so a long backlog is not flooded with copies.
    due = [r for r in rows if r.enqueued_at < now - timedelta(seconds=base * 2 ** max(r.attempts - 1, 0))]
    give_up = [r.task_id for r in due if r.attempts >= settings.max_attempts]
    retry = [r for r in due if r.attempts < settings.max_attempts]

    failed: list[str] = []
    if give_up:
        reason = f"not processed after {settings.max_attempts} attempts; the image may crash the workers"
        with session_scope(session_factory) as session:
            for task_id in give_up:
                done = session.execute(
                    update(Prediction)
                    .where(Prediction.task_id == task_id, Prediction.state == State.PENDING.value)
                    .values(state=State.FAILURE.value, error=reason, finished_at=now)
                ).rowcount
                if done:
                    failed.append(task_id)
            docs = [row.status_document()
                    for row in session.scalars(select(Prediction).where(Prediction.task_id.in_(failed)))]
        store_statuses(redis, docs, settings.result_ttl_seconds)

    requeued: list[str] = []
    if retry:
        with session_scope(session_factory) as session:
            for row in retry:
                # Guarded by what we read: a worker that finished it, or another sweeper, wins.
                claimed = session.execute(
                    update(Prediction)
                    .where(Prediction.task_id == row.task_id, Prediction.state == State.PENDING.value,
                           Prediction.attempts == row.attempts)
                    .values(attempts=row.attempts + 1, enqueued_at=now)
                ).rowcount
                if claimed:
                    requeued.append(row.task_id)
        for start in range(0, len(requeued), CHUNK):
            enqueue(requeued[start:start + CHUNK])
    if requeued or failed:
        log.warning("sweeper: re-enqueued %d lost upload(s), gave up on %d", len(requeued), len(failed))
    return SweepResult(requeued, failed)


class Sweeper:
    """Runs `sweep` every interval in a daemon thread; a Redis lock lets one worker process sweep at a time."""

    def __init__(self, session_factory: sessionmaker[Session], enqueue: Enqueue, redis: Redis,
                 settings: Settings) -> None:
        self._args = (session_factory, enqueue, redis, settings)
        self._redis = redis
        self._interval = settings.sweep_interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                # The lock lapses by itself: a sweeper that dies never blocks the others.
                if self._redis.set(LOCK_KEY, "1", nx=True, ex=max(1, int(self._interval))):
                    sweep(*self._args)
            except Exception:  # the next round tries again; a sweep must never kill the worker
                log.exception("sweep failed")
