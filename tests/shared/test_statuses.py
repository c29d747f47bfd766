"""The status cache on the real Redis and MariaDB: only settled documents, set if absent, tombstones for deletes."""

from __future__ import annotations

import pytest
import redis as redis_lib

from shared import predictions, retention, statuses
from shared.predictions import NewUpload
from shared.schema import State
from tests.helpers import published


@pytest.fixture
def redis(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def _doc(task_id: str, state: str = State.SUCCESS.value, webhook: dict | None = None) -> dict:
    return {"task_id": task_id, "state": state, "digit": 7, "webhook": webhook}


def test_a_settled_document_is_cached_once_and_never_replaced(redis):
    task_id = "00000000-0000-4000-8000-000000000001"
    statuses.cache_final(redis, [_doc(task_id)], 60)
    statuses.cache_final(redis, [_doc(task_id) | {"digit": 1}], 60)
    assert statuses.cached_final(redis, [task_id])[task_id]["digit"] == 7


def test_a_document_whose_webhook_is_still_tried_is_published_but_not_cached(redis):
    task_id = "00000000-0000-4000-8000-000000000002"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(statuses.FINISHED_CHANNEL)
    pubsub.get_message(timeout=1)
    statuses.cache_final(redis, [_doc(task_id, webhook={"state": "PENDING", "events": ["completed"]})], 60)
    doc = published(pubsub, task_id)
    pubsub.close()
    assert doc is not None
    assert redis.get(statuses.status_key(task_id)) is None


def test_a_deleted_uploads_tombstone_keeps_a_late_reader_from_caching_it_again(db_engine, redis):
    upload = NewUpload(data=b"x", filename=None, content_type=None, width=1, height=1, owner="a" * 64)
    with db_engine.begin() as conn:
        predictions.record(conn, [upload], "test")
        claim = predictions.claim(conn, [upload.task_id], 0, "w", 60)
        predictions.finish(conn, claim, {upload.task_id: {"state": State.SUCCESS.value, "digit": 3}})
        stale = predictions.stored_documents(conn, [upload.task_id])  # a reader fetched the row ...
        retention.delete_uploads(conn, [upload.task_id], None)  # ... just before it was deleted
    statuses.forget(redis, [upload.task_id], 60)

    statuses.cache_final(redis, stale.values(), 60)  # the late reader's repair

    with db_engine.connect() as conn:
        assert statuses.read(conn, redis, [upload.task_id], 60) == {}  # unknown: the API says 404
