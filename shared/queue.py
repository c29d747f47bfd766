"""The Celery configuration shared by the web (producer) and the workers (consumers)."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery
from redis import Redis

# Each worker process announces itself (name, model version, device) in one hash per queue, with an
# expiry time it keeps pushing back, so the page can show the active model without asking the workers;
# one hash, so reading it costs one HGETALL however many results Redis holds.
WORKERS_KEY_PREFIX = "digits:workers:"


def _workers_key(queue: str) -> str:
    return f"{WORKERS_KEY_PREFIX}{queue}"


def announce_worker(client: Redis, queue: str, name: str, info: dict[str, Any], ttl_seconds: float) -> None:
    """Record that a worker process serves this queue, until `ttl_seconds` pass without a renewal."""
    entry = json.dumps({**info, "expires": time.time() + ttl_seconds})
    pipe = client.pipeline(transaction=False)
    pipe.hset(_workers_key(queue), name, entry)
    pipe.expire(_workers_key(queue), max(1, round(ttl_seconds)))  # the hash goes when its last worker does
    pipe.execute()


def withdraw_worker(client: Redis, queue: str, name: str) -> None:
    """Forget a worker process at once (a clean shutdown)."""
    client.hdel(_workers_key(queue), name)


def live_workers(client: Redis, queue: str) -> list[dict[str, Any]]:
    """The announcements of the worker processes serving this queue now (expired ones are removed)."""
    now = time.time()
    live: list[dict[str, Any]] = []
    stale: list[bytes | str] = []
    for name, raw in sorted(client.hgetall(_workers_key(queue)).items()):
        info = json.loads(raw)
        # Wall clocks of different hosts: a TTL of several renewal intervals absorbs their skew.
        if info.pop("expires", 0) > now:
            live.append(info)
        else:
            stale.append(name)
    if stale:
        client.hdel(_workers_key(queue), *stale)
    return live


def queue_length(client: Redis, queue: str) -> int:
    """Messages waiting on the queue (not yet reserved by a worker); a batch upload is one message."""
    return int(client.llen(queue))


def make_celery(redis_url: str, queue_name: str, main: str = "digits") -> Celery:
    """A Celery app on Redis, configured so that an accepted task is not lost by a dying worker.

    No Celery result backend: tasks ignore their results and the worker caches final status documents
    itself (shared/statuses.py); with a backend, Celery would also subscribe every sender to every
    task's result channel.
    """
    app = Celery(main, broker=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_name,
        # Ack after the result is written, and give the task back if the worker process dies mid-way:
        # a redelivery is harmless because the database write is idempotent by task id.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Redis re-delivers an unacked message after this long; it must exceed the longest task.
        broker_transport_options={"visibility_timeout": 3600, "socket_connect_timeout": 2, "socket_timeout": 5},
        task_ignore_result=True,
        # STARTED would cost a Redis write per task for a state that lasts a few milliseconds in a
        # micro-batch; the row's started_at records it.
        task_track_started=False,
        broker_connection_retry_on_startup=True,
        # Task events cost the worker a Redis publish each (about 15% of its CPU under load), so they are
        # off until a monitor asks: Flower enables them when it starts and every few seconds after.
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app
