"""Which worker processes serve a queue: each announces itself (name, model version, device) in Redis."""

from __future__ import annotations

import json
import time
from typing import Any

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
