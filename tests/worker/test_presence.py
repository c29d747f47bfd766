"""A worker's announcement on the real Redis: present at once, renewed with a TTL, withdrawn on stop."""

from __future__ import annotations

import redis

from shared.workers import announce_worker, live_workers
from worker.presence import TTL_SECONDS, Presence


def test_presence_announces_at_once_with_a_ttl_and_withdraws_on_stop(settings):
    client = redis.Redis.from_url(settings.redis_url)
    presence = Presence(client, settings.queue_name, "host:42", "abc123", "CPU:0")

    presence.start()
    try:
        [info] = live_workers(client, settings.queue_name)
        assert info["name"] == "host:42" and info["model_version"] == "abc123" and info["device"] == "CPU:0"
        assert 0 < client.ttl(f"digits:workers:{settings.queue_name}") <= TTL_SECONDS
    finally:
        presence.stop()
    assert live_workers(client, settings.queue_name) == []


def test_a_worker_that_stops_renewing_drops_out_by_itself(settings):
    client = redis.Redis.from_url(settings.redis_url)
    announce_worker(client, settings.queue_name, "killed:1", {"model_version": "v"}, ttl_seconds=-1)
    announce_worker(client, settings.queue_name, "alive:2", {"model_version": "v"}, ttl_seconds=30)

    assert [w["model_version"] for w in live_workers(client, settings.queue_name)] == ["v"]
    assert client.hkeys(f"digits:workers:{settings.queue_name}") == [b"alive:2"]  # the stale entry is gone


def test_presence_survives_redis_being_away(settings):
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    presence = Presence(client, settings.queue_name, "host:43", "abc123", "CPU:0")
    presence.start()  # logs a warning; must not raise into the worker's start-up
    presence.stop()
