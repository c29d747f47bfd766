"""Recovery on the real database and Redis, with real Celery messages: only what is really lost comes back."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import select

from shared import predictions
from shared.config import Settings
from shared.kombu_redis import Layout
from shared.queue import enqueue, make_celery
from shared.schema import Prediction, State, utcnow
from shared.statuses import status_key
from worker.recovery import Recovery, RecoveryLoop, Snapshot

MAX_ATTEMPTS = 3
AFTER = 60.0


@pytest.fixture
def producer(settings: Settings):
    """A real Celery producer on the test's own queue."""
    return make_celery(settings.redis_url, settings.queue_name)


@pytest.fixture
def cache(settings: Settings) -> redis.Redis:
    """The test Redis."""
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def recovery(settings: Settings, db_engine, cache, producer) -> Recovery:
    """Recovery of the test's queue, re-enqueuing through the real producer."""
    return Recovery(db_engine, cache, settings.queue_name,
                    lambda ids: enqueue(producer, settings.queue_name, ids),
                    AFTER, MAX_ATTEMPTS, lambda docs: None)


def _row(db_sessions, queue: str, *, state: str = "PENDING", enqueued_s_ago: float = 600, deliveries: int = 0,
         lease_s: float | None = None) -> str:
    task_id = str(uuid.uuid4())
    at = utcnow() - timedelta(seconds=enqueued_s_ago)
    with db_sessions() as s, s.begin():
        s.add(Prediction(task_id=task_id, state=state, image=b"x", image_sha256=hashlib.sha256(b"x").hexdigest(),
                         size_bytes=1, created_at=at, enqueued_at=at, deliveries=deliveries, queue=queue,
                         claim_token=None if lease_s is None else "a-claim",
                         lease_expires_at=None if lease_s is None else utcnow() + timedelta(seconds=lease_s)))
    return task_id


def _get(db_sessions, task_id: str) -> Prediction:
    with db_sessions() as s:
        return s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()


def _reserve(producer, queue: str, held_s_ago: float) -> str:
    """Take a message as a worker does (kept in kombu's unacked hash), then die without acking it."""
    with producer.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        channel.qos.restore_at_shutdown = False  # a SIGKILLed worker restores nothing
        tag = message.delivery_tag
    redis.Redis.from_url(producer.conf.broker_url).zadd(Layout().unacked_index, {tag: time.time() - held_s_ago})
    return tag


def _messages(cache, queue: str) -> list[str]:
    return sorted(Snapshot.read(cache, queue).queued)


def test_uploads_waiting_on_the_queue_are_never_touched_however_long_they_wait(
        settings, db_sessions, producer, cache, recovery):
    ids = [_row(db_sessions, settings.queue_name, enqueued_s_ago=3600) for _ in range(5)]
    enqueue(producer, settings.queue_name, ids[:1])
    enqueue(producer, settings.queue_name, ids[1:])

    for _ in range(3):
        result = recovery.sweep()
        assert (result.requeued, result.put_back, result.poisoned) == ([], [], [])

    assert cache.llen(settings.queue_name) == 2
    assert {_get(db_sessions, t).state for t in ids} == {"PENDING"}


def test_an_upload_whose_message_is_gone_is_sent_again_once_seen_missing_twice(
        settings, db_sessions, cache, recovery):
    lost = _row(db_sessions, settings.queue_name)
    recent = _row(db_sessions, settings.queue_name, enqueued_s_ago=1)

    assert recovery.sweep().requeued == []  # once could be a message in the hand-over to a worker
    assert recovery.sweep().requeued == [lost]
    assert recovery.sweep().requeued == []  # its new message is on the queue now

    assert _messages(cache, settings.queue_name) == [lost]
    row = _get(db_sessions, lost)
    assert (row.state, row.deliveries) == ("PENDING", 0)
    assert row.enqueued_at > utcnow() - timedelta(seconds=10)
    assert _get(db_sessions, recent).enqueued_at < utcnow() - timedelta(seconds=0.5)


def test_a_message_held_too_long_by_a_dead_worker_goes_back_on_the_queue(
        settings, db_sessions, producer, cache, recovery):
    held = _row(db_sessions, settings.queue_name)
    enqueue(producer, settings.queue_name, [held])
    _reserve(producer, settings.queue_name, held_s_ago=2 * AFTER)
    assert cache.llen(settings.queue_name) == 0

    result = recovery.sweep()

    assert result.put_back == [held] and result.requeued == []
    assert _messages(cache, settings.queue_name) == [held]
    assert Snapshot.read(cache, settings.queue_name).held == []


def test_a_message_a_worker_took_moments_ago_is_left_with_it(settings, db_sessions, producer, cache, recovery):
    held = _row(db_sessions, settings.queue_name)
    enqueue(producer, settings.queue_name, [held])
    _reserve(producer, settings.queue_name, held_s_ago=1)

    for _ in range(2):
        result = recovery.sweep()
        assert (result.put_back, result.requeued) == ([], [])
    assert cache.llen(settings.queue_name) == 0


def test_an_expired_claim_goes_back_to_pending_with_its_message(settings, db_sessions, producer, cache, recovery):
    stalled = _row(db_sessions, settings.queue_name, state="STARTED", deliveries=1, lease_s=-1)
    enqueue(producer, settings.queue_name, [stalled])
    _reserve(producer, settings.queue_name, held_s_ago=2 * AFTER)

    result = recovery.sweep()

    assert result.unclaimed == [stalled] and result.put_back == [stalled]
    row = _get(db_sessions, stalled)
    assert (row.state, row.deliveries, row.claim_token) == ("PENDING", 1, None)
    assert _messages(cache, settings.queue_name) == [stalled]  # exactly one message


def test_a_live_claim_is_left_alone_even_when_its_message_is_old(settings, db_sessions, producer, cache, recovery):
    busy = _row(db_sessions, settings.queue_name, state="STARTED", deliveries=1, lease_s=60)
    enqueue(producer, settings.queue_name, [busy])
    _reserve(producer, settings.queue_name, held_s_ago=2 * AFTER)

    result = recovery.sweep()

    assert (result.unclaimed, result.put_back, result.requeued) == ([], [], [])
    assert _get(db_sessions, busy).state == "STARTED"


def test_an_upload_that_used_up_its_deliveries_ends_as_poison(settings, db_sessions, cache, recovery):
    poison = _row(db_sessions, settings.queue_name, state="STARTED", deliveries=MAX_ATTEMPTS, lease_s=-1)
    published: list = []
    recovery._publish = published.extend

    result = recovery.sweep()

    assert result.poisoned == [poison]
    row = _get(db_sessions, poison)
    assert row.state == State.FAILURE and f"{MAX_ATTEMPTS} workers started this image and died" in row.error
    assert [d["task_id"] for d in published] == [poison]


def test_recovery_looks_only_at_its_own_queue(settings, db_sessions, cache, recovery):
    theirs = _row(db_sessions, "another-deployment")
    stalled = _row(db_sessions, "another-deployment", state="STARTED", deliveries=1, lease_s=-1)

    for _ in range(2):
        result = recovery.sweep()
    assert (result.requeued, result.unclaimed) == ([], [])
    assert _get(db_sessions, theirs).enqueued_at < utcnow() - timedelta(seconds=500)
    assert _get(db_sessions, stalled).state == "STARTED"


def test_one_process_per_queue_holds_the_recovery_lock_and_keeps_it(settings, cache, recovery):
    first = RecoveryLoop(recovery, cache, settings.queue_name, "worker-a", interval=5)
    second = RecoveryLoop(recovery, cache, settings.queue_name, "worker-b", interval=5)
    elsewhere = RecoveryLoop(recovery, cache, f"{settings.queue_name}-other", "worker-b", interval=5)

    assert first.holds_lock() and not second.holds_lock()
    assert first.holds_lock()  # the holder keeps it from sweep to sweep
    assert elsewhere.holds_lock()  # another queue has a lock of its own


def test_a_message_of_a_final_upload_is_not_counted_as_work(settings, db_sessions, producer, cache, recovery):
    done = _row(db_sessions, settings.queue_name, state="SUCCESS")
    enqueue(producer, settings.queue_name, [done])
    assert json.loads(cache.lrange(settings.queue_name, 0, -1)[0])["headers"]["id"] == done
    assert recovery.sweep().requeued == [] and cache.get(status_key(done)) is None


def test_nothing_is_called_lost_while_the_queue_is_longer_than_one_read(
        settings, db_sessions, producer, cache, recovery, monkeypatch):
    monkeypatch.setattr("worker.recovery.SCAN_LIMIT", 2)
    waiting = [_row(db_sessions, settings.queue_name) for _ in range(3)]
    enqueue(producer, settings.queue_name, waiting[:1])
    enqueue(producer, settings.queue_name, waiting[1:2])
    enqueue(producer, settings.queue_name, waiting[2:])

    for _ in range(3):  # the oldest message is beyond the read: it must not be taken for lost
        assert recovery.sweep().requeued == []
    assert cache.llen(settings.queue_name) == 3


def test_a_message_put_back_gets_a_new_delivery_tag(settings, db_sessions, producer, cache, recovery):
    held = _row(db_sessions, settings.queue_name)
    enqueue(producer, settings.queue_name, [held])
    old_tag = _reserve(producer, settings.queue_name, held_s_ago=2 * AFTER)

    assert recovery.sweep().put_back == [held]

    (raw,) = cache.lrange(settings.queue_name, 0, -1)
    payload = json.loads(raw)
    # The dead worker's late ack (of old_tag) cannot remove the next holder's reservation.
    assert payload["properties"]["delivery_tag"] != old_tag
    assert payload["headers"]["redelivered"] and payload["properties"]["delivery_info"]["redelivered"]


def test_a_retry_waiting_for_its_eta_is_not_taken_for_a_stalled_message(
        settings, db_sessions, producer, cache, recovery):
    retry = _row(db_sessions, settings.queue_name)
    producer.send_task("digits.predict", args=[retry], task_id=retry, queue=settings.queue_name, countdown=600)
    _reserve(producer, settings.queue_name, held_s_ago=2 * AFTER)  # reserved long ago, but due in 10 minutes

    for _ in range(2):
        result = recovery.sweep()
        assert (result.put_back, result.requeued) == ([], [])


def test_an_unreadable_message_on_the_queue_stops_any_upload_being_called_lost(
        settings, db_sessions, cache, recovery):
    _row(db_sessions, settings.queue_name)
    cache.lpush(settings.queue_name, b"not a kombu message")

    for _ in range(3):
        assert recovery.sweep().requeued == []


def test_poison_is_never_declared_on_an_upload_a_live_worker_holds(settings, db_sessions, db_engine):
    # Seen as expired a moment ago; since then its worker renewed the lease.
    busy = _row(db_sessions, settings.queue_name, state="STARTED", deliveries=MAX_ATTEMPTS, lease_s=60)
    with db_engine.begin() as conn:
        failed = predictions.fail_poison(conn, [predictions.Found(busy, "STARTED", MAX_ATTEMPTS, leased=False)])
    assert failed == {} and _get(db_sessions, busy).state == "STARTED"
