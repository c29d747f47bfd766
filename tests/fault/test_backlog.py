"""A backlog far longer than every timer, with real processes: 3,000 uploads to one slow worker, with a short image
retention purging all through the drain. One drain, two guarantees checked on it:

- it drains with no failure and no copy of any message (the lifecycle's leases and recovery);
- retention purges only final uploads: every upload ends SUCCESS, the purged ones say data_removed, and no
  unfinished row ever loses its image (it needs the purge wired into the worker: worker/bootstrap.py).

Both guarantees are about the same load, so the suite pays for the drain once (a few minutes of CPU on 2 cores).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import redis
import requests
from sqlalchemy import case, func, select

from shared.db import make_engine, make_session_factory
from shared.kombu_redis import message_task_ids
from shared.schema import FINAL_STATES, Prediction, State
from tests.fault.test_lifecycle import SLOW_WORKER, upload, wait_final
from tests.helpers import eventually, png_bytes
from tests.stack import running_stack

pytestmark = [pytest.mark.fault, pytest.mark.long(140)]

BACKLOG = 3000
# The slow worker (one upload at a time, timers far shorter than the backlog), purging every second what
# finished over a second ago: the purge runs all through the drain, next to rows still waiting.
RETENTION = SLOW_WORKER | {"IMAGE_RETENTION_SECONDS": "1", "SWEEP_INTERVAL_SECONDS": "1"}
UNFINISHED = (State.PENDING.value, State.STARTED.value)


def _count(condition):
    """Rows that meet the condition, as a column (MariaDB has no COUNT(*) FILTER)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _rows(engine, queue: str, *where) -> int:
    """The queue's rows that meet every condition."""
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Prediction)
                               .where(Prediction.queue == queue, *where)) or 0)


@dataclass
class QueueWatch:
    """Samples the queue against the uploads not yet final, until stopped: no copies, never more messages."""

    db_engine: object
    client: redis.Redis
    queue: str
    deepest: int = 0
    samples: int = 0
    excess: list[tuple[int, int]] = field(default_factory=list)  # (uploads in messages, not final) when more
    copies: int = 0  # uploads found in two messages at once

    def sample(self) -> None:
        """Read final-count, queue, row count, in this order, so not-final is never under-counted."""
        final = _rows(self.db_engine, self.queue, Prediction.state.in_([s.value for s in FINAL_STATES]))
        queued = [t for raw in self.client.lrange(self.queue, 0, -1) for t in message_task_ids(json.loads(raw))]
        not_final = _rows(self.db_engine, self.queue) - final
        self.samples += 1
        self.deepest = max(self.deepest, len(queued))
        self.copies += len(queued) - len(set(queued))
        if len(queued) > not_final:
            self.excess.append((len(queued), not_final))


@dataclass
class RetentionWatch:
    """Samples the queue's rows with SQL: unfinished rows touched, and purges made while draining."""

    db_engine: object
    queue: str
    samples: int = 0
    touched: list[int] = field(default_factory=list)  # unfinished rows without their image, per bad sample
    purged_while_draining: int = 0  # most images seen removed while uploads were still unfinished

    def sample(self) -> None:
        """One consistent snapshot of the three counts (one statement)."""
        unfinished = Prediction.state.in_(UNFINISHED)
        removed = Prediction.data_removed_at.is_not(None)
        with self.db_engine.connect() as conn:  # type: ignore[attr-defined]
            row = conn.execute(select(_count(unfinished & (removed | (func.length(Prediction.image) == 0))),
                                      _count(unfinished), _count(removed))
                               .where(Prediction.queue == self.queue)).one()
        touched, unfinished_now, removed_now = int(row[0]), int(row[1]), int(row[2])
        self.samples += 1
        if touched:
            self.touched.append(touched)
        if unfinished_now:
            self.purged_while_draining = max(self.purged_while_draining, removed_now)


def _sampling(watch: QueueWatch | RetentionWatch, every: float, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.wait(every):
            watch.sample()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@dataclass
class Drained:
    """What one drain of the backlog left: the rows, the watches, and the documents read after the purge."""

    accepted: list[str]
    found: dict[str, Prediction]
    rows: int  # the queue's rows in MySQL
    with_image: int  # of them, rows that still hold their image after the last purges
    queue: QueueWatch
    retention: RetentionWatch
    all_purged: bool  # every image removed within a few sweeps of the last answer
    documents: list[dict]
    uploaded_s: float
    drained_s: float


def _document(base_url: str, task_id: str) -> dict:
    resp = requests.get(f"{base_url}/tasks/{task_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def drained(database_url: str, redis_url: str, mnist) -> Iterator[Drained]:
    """3,000 uploads to one slow worker with a short retention, drained, with both watches sampling throughout."""
    images = [png_bytes(d) for d in mnist.x_test[:200]]
    engine = make_engine(database_url)
    try:
        with running_stack(database_url, redis_url, **RETENTION) as live:
            queue = live.settings.queue_name
            watches = QueueWatch(engine, redis.Redis.from_url(redis_url), queue), RetentionWatch(engine, queue)
            stop = threading.Event()
            samplers = [_sampling(watches[0], 0.5, stop), _sampling(watches[1], 0.2, stop)]
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                accepted = list(pool.map(lambda i: upload(live.base_url, images[i % len(images)]), range(BACKLOG)))
            uploaded_s = time.monotonic() - started
            found = wait_final(make_session_factory(engine), accepted, timeout=900)
            drained_s = time.monotonic() - started
            stop.set()
            for sampler in samplers:
                sampler.join(5)
            # The last ones finished under a second ago: within a few sweeps every image is gone.
            removed = Prediction.data_removed_at.is_not(None)
            all_purged = eventually(lambda: _rows(engine, queue, removed) == BACKLOG, timeout=30)
            with ThreadPoolExecutor(8) as pool:
                documents = list(pool.map(lambda t: _document(live.base_url, t), accepted))
        yield Drained(accepted, found, _rows(engine, queue), _rows(engine, queue, func.length(Prediction.image) > 0),
                      *watches, all_purged, documents, uploaded_s, drained_s)
    finally:
        engine.dispose()


def test_a_backlog_far_longer_than_every_timer_drains_without_a_failure_or_a_copy(drained: Drained) -> None:
    found, watch = drained.found, drained.queue
    books = {"accepted": len(set(drained.accepted)), "completed": sum(r.state == "SUCCESS" for r in found.values()),
             "failed": sum(r.state == "FAILURE" for r in found.values()), "deepest_queue": watch.deepest,
             "uploaded_s": round(drained.uploaded_s, 1), "drained_s": round(drained.drained_s, 1),
             "samples": watch.samples}
    print(f"\n    backlog: {books}")  # noqa: T201 - the figures the issue asks to report
    assert books["accepted"] == BACKLOG and books["completed"] == BACKLOG and books["failed"] == 0
    assert {r.deliveries for r in found.values()} == {1}  # each started exactly once: no copy was ever run
    assert drained.rows == BACKLOG  # one row each
    assert watch.copies == 0 and watch.excess == []  # no copies; never more queued than uploads not yet final
    assert watch.deepest > BACKLOG / 3  # the backlog was real: far more than the timers allow to drain


def test_a_short_retention_under_a_backlog_purges_only_final_uploads_and_every_upload_succeeds(
        drained: Drained) -> None:
    watch = drained.retention
    books = {"accepted": len(set(drained.accepted)),
             "succeeded": sum(r.state == "SUCCESS" for r in drained.found.values()),
             "samples": watch.samples, "purged_while_draining": watch.purged_while_draining}
    print(f"\n    retention under a backlog: {books}")  # noqa: T201 - the figures the issue asks to report
    assert books["accepted"] == BACKLOG and books["succeeded"] == BACKLOG  # none failed for a missing image
    assert drained.all_purged, "images not purged: is the purge wired into worker/bootstrap.py?"
    assert watch.touched == []  # no PENDING or STARTED row ever lost its image
    assert watch.purged_while_draining > 0 and watch.samples > 10  # the purge ran while uploads still waited
    assert all(d["state"] == "SUCCESS" and d["data_removed"] and d["digit"] is not None for d in drained.documents)
    assert drained.with_image == 0
