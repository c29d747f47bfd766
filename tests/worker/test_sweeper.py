"""The outbox sweeper on the real database and Redis: lost uploads go back on the queue, hopeless ones fail."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select

from shared.config import Settings
from shared.queue import make_celery, result_key
from shared.schema import Prediction, State, utcnow
from shared.tasks import PREDICT_BATCH_TASK
from worker.sweeper import sweep

NOW = utcnow()


@pytest.fixture
def run_sweep(settings: Settings, db_sessions):
    """One sweep at NOW through a real Celery producer; returns (result, messages queued)."""
    producer = make_celery(settings.redis_url, settings.queue_name)
    client = redis.Redis.from_url(settings.redis_url)

    def enqueue(ids):
        producer.send_task(PREDICT_BATCH_TASK, args=[list(ids)], queue=settings.queue_name)

    def run():
        result = sweep(db_sessions, enqueue, client, settings, now=NOW)
        queued = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]
                  for m in client.lrange(settings.queue_name, 0, -1)]
        return result, queued

    return run


def _row(db_sessions, task_id: str, *, state: str = "PENDING", enqueued_s_ago: float, attempts: int = 1) -> None:
    with db_sessions() as s, s.begin():
        s.add(Prediction(task_id=task_id, state=state, image=b"x", image_sha256=hashlib.sha256(b"x").hexdigest(),
                         size_bytes=1, created_at=NOW - timedelta(seconds=enqueued_s_ago),
                         enqueued_at=NOW - timedelta(seconds=enqueued_s_ago), attempts=attempts))


def _get(db_sessions, task_id: str) -> Prediction:
    with db_sessions() as s:
        return s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()


def test_a_lost_upload_is_enqueued_again(db_sessions, run_sweep):
    _row(db_sessions, "lost", enqueued_s_ago=120)
    _row(db_sessions, "recent", enqueued_s_ago=10)
    _row(db_sessions, "done", state="SUCCESS", enqueued_s_ago=600)

    result, queued = run_sweep()

    assert result.requeued == ["lost"] and result.failed == []
    assert queued == [["lost"]]
    lost = _get(db_sessions, "lost")
    assert (lost.attempts, lost.enqueued_at, lost.state) == (2, NOW, "PENDING")
    assert _get(db_sessions, "recent").attempts == 1


def test_each_attempt_waits_twice_as_long_as_the_one_before(db_sessions, run_sweep):
    _row(db_sessions, "third-too-soon", enqueued_s_ago=200, attempts=3)  # needs 60 * 2**2 = 240 s
    _row(db_sessions, "third-due", enqueued_s_ago=250, attempts=3)

    result, _ = run_sweep()

    assert result.requeued == ["third-due"]


def test_an_upload_out_of_attempts_ends_as_failure_with_a_reason(settings, db_sessions, run_sweep):
    _row(db_sessions, "hopeless", enqueued_s_ago=10_000, attempts=settings.max_attempts)

    result, queued = run_sweep()

    assert result.failed == ["hopeless"] and queued == []
    row = _get(db_sessions, "hopeless")
    assert row.state == State.FAILURE and "attempts" in row.error
    cached = json.loads(redis.Redis.from_url(settings.redis_url).get(result_key("hopeless")))
    assert cached["status"] == "FAILURE" and cached["result"]["error"] == row.error


def test_a_second_sweep_does_not_enqueue_the_same_upload_again_at_once(db_sessions, run_sweep):
    _row(db_sessions, "lost", enqueued_s_ago=120)

    run_sweep()
    result, queued = run_sweep()

    assert result.requeued == [] and queued == [["lost"]]
