"""Final status documents cached in Redis under the project's own keys, and published for long polls.

Redis is a cache of MySQL, never a second truth: only FINAL documents are cached, and a final row never
changes again, so a cached document can never be older than the row it copies. A status that is not
final is always read from MySQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from redis import Redis

from shared.schema import FINAL_STATES

KEY_PREFIX = "digits:status:"
# One channel for every final answer: each web process subscribes once and wakes its own waiters.
FINISHED_CHANNEL = "digits:finished"


def status_key(task_id: str) -> str:
    """The Redis key of a task's cached final status document."""
    return f"{KEY_PREFIX}{task_id}"


def cache_final(client: Redis, docs: Iterable[dict[str, Any]], ttl_seconds: int) -> None:
    """Cache final documents (others are ignored) and publish them, in one round trip."""
    pipe = client.pipeline(transaction=False)
    queued = False
    for doc in docs:
        if doc["state"] not in FINAL_STATES:
            continue
        value = json.dumps(doc)
        pipe.set(status_key(doc["task_id"]), value, ex=ttl_seconds)
        pipe.publish(FINISHED_CHANNEL, value)
        queued = True
    if queued:
        pipe.execute()


def cached_final(client: Redis, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The cached final documents of these ids (one MGET); ids not cached are left out."""
    docs: dict[str, dict[str, Any]] = {}
    for task_id, raw in zip(task_ids, client.mget([status_key(t) for t in task_ids]), strict=True):
        if raw is None:
            continue
        doc = json.loads(raw)
        if isinstance(doc, dict) and doc.get("task_id") == task_id and doc.get("state") in FINAL_STATES:
            docs[task_id] = doc
    return docs


def finished_document(message_data: bytes | str) -> dict[str, Any] | None:
    """The final status document a message on FINISHED_CHANNEL carries, or None if it is not one of ours."""
    try:
        doc = json.loads(message_data)
    except (TypeError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("state") in FINAL_STATES and isinstance(doc.get("task_id"), str):
        return doc
    return None
