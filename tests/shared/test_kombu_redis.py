"""kombu's Redis layout (shared/kombu_redis.py) against the locked kombu itself, with a key prefix and priorities.

If a kombu upgrade moves reserved messages elsewhere or restores them differently, these fail: recovery would
otherwise silently stop finding stalled workers' messages.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis
from kombu import __version__ as kombu_version

from shared import predictions
from shared.config import REPO_ROOT, Settings
from shared.kombu_redis import Layout, message_task_ids
from shared.predictions import NewUpload
from shared.queue import enqueue, make_celery, queue_length
from worker.recovery import Recovery, Snapshot, put_back

PREFIX = "tenant-a:"


def test_the_layout_is_kombus_for_any_options() -> None:
    plain = Layout()
    assert (plain.queue_key("q"), plain.queue_key("q", 5), plain.unacked) == ("q", "q\x06\x163", "unacked")
    custom = Layout.of({"global_keyprefix": "p:", "sep": ":", "priority_steps": [0, 5], "unacked_key": "held"})
    assert custom.queue_keys("q") == ["p:q", "p:q:5"] and (custom.unacked, custom.unacked_index) == (
        "p:held", "p:unacked_index")


def test_the_contract_is_checked_against_the_locked_kombu() -> None:
    locked = Path(REPO_ROOT / "requirements" / "locks" / "dev.txt").read_text()
    assert f"kombu=={kombu_version} " in locked or f"kombu=={kombu_version}\n" in locked  # the version tested


@pytest.fixture
def prefixed(settings: Settings):
    """A Celery app whose transport prefixes every key, as a shared Redis would need."""
    app = make_celery(settings.redis_url, settings.queue_name)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": PREFIX}
    return app


def _reserve(app, queue: str) -> str:
    """Take a message as a worker does (kept in kombu's unacked hash) and die without acking it."""
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.basic_get(queue, no_ack=False)
        assert message is not None
        channel.qos.restore_at_shutdown = False
        return message.delivery_tag


def test_kombu_keeps_and_restores_messages_where_the_layout_says(settings, prefixed):
    layout, queue = Layout.of(prefixed.conf.broker_transport_options), settings.queue_name
    client = redis.Redis.from_url(settings.redis_url)
    task_id = str(uuid.uuid4())
    enqueue(prefixed, queue, [task_id])
    assert client.llen(layout.queue_key(queue)) == 1 and not client.exists(queue)  # under the prefix only
    assert queue_length(client, queue, layout) == 1

    tag = _reserve(prefixed, queue)
    payload, _exchange, routing_key = json.loads(client.hget(layout.unacked, tag))
    assert routing_key == queue and message_task_ids(payload) == [task_id]
    assert abs(client.zscore(layout.unacked_index, tag) - time.time()) < 60  # the time it was reserved
    assert Snapshot.read(client, queue, layout).held[0].task_ids == [task_id]

    assert put_back(client, queue, tag, layout)
    assert not client.hexists(layout.unacked, tag) and queue_length(client, queue, layout) == 1
    with prefixed.connection_for_read() as conn:  # kombu takes it again, marked redelivered
        again = conn.default_channel.basic_get(queue, no_ack=True)
    assert again is not None and again.headers.get("redelivered") is True
    # kombu hands the body over decoded (its properties still name the transport's encoding).
    assert message_task_ids({"headers": again.headers, "body": again.body, "properties": {}}) == [task_id]


def test_recovery_puts_back_a_stalled_workers_message_under_a_key_prefix(settings, prefixed, db_engine):
    layout, queue = Layout.of(prefixed.conf.broker_transport_options), settings.queue_name
    client = redis.Redis.from_url(settings.redis_url)
    upload = NewUpload(b"png", "d.png", "image/png", 28, 28)
    with db_engine.begin() as conn:
        predictions.record(conn, [upload], queue)
    enqueue(prefixed, queue, [upload.task_id])
    _reserve(prefixed, queue)  # a worker took it and stalled
    recovery = Recovery(db_engine, client, queue, lambda ids: enqueue(prefixed, queue, ids), 0.0, 3,
                        lambda docs: None, layout=layout)
    result = recovery.sweep()
    assert result.put_back == [upload.task_id] and result.requeued == []
    assert queue_length(client, queue, layout) == 1 and client.hlen(layout.unacked) == 0
