"""Final status documents cached in Redis under the project's own keys, and published for long polls.

Redis is a cache of MySQL, never a second truth: only SETTLED documents are cached (final, and no webhook
still being tried), and such a row never changes again, so a cached document can never be older than the
row it copies. A status that is not settled is always read from MySQL. The two writes that do touch a settled
row remove its copy: retention (uncache) and deletion, which leaves a tombstone so that a reader who fetched
the row just before it was deleted cannot put it back (cached documents are only ever SET if absent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis import Redis
from sqlalchemy import Connection

from shared.errors import REDIS_ERRORS
from shared.predictions import stored_documents
from shared.schema import FINAL_STATES, settled

log = logging.getLogger(__name__)

KEY_PREFIX = "digits:status:"
# One channel for every final answer: each web process subscribes once and wakes its own waiters.
FINISHED_CHANNEL = "digits:finished"


def status_key(task_id: str) -> str:
    """The Redis key of a task's cached final status document."""
    return f"{KEY_PREFIX}{task_id}"


def cache_final(client: Redis, docs: Iterable[dict[str, Any]], ttl_seconds: int) -> None:
    """Publish final documents (others are ignored) and cache the settled ones if absent, in one round trip."""
    pipe = client.pipeline(transaction=False)
    queued = False
    for doc in docs:
        if doc["state"] not in FINAL_STATES:
            continue
        value = json.dumps(doc)
        if settled(doc):
            # If absent: a settled document never changes, and a deleted upload's tombstone must stay.
            pipe.set(status_key(doc["task_id"]), value, ex=ttl_seconds, nx=True)
        pipe.publish(FINISHED_CHANNEL, value)
        queued = True
    if queued:
        pipe.execute()


TOMBSTONE = json.dumps({"deleted": True})


def forget(client: Redis, task_ids: Sequence[str], ttl_seconds: int) -> None:
    """Replace deleted uploads' cached documents by tombstones that outlive any read in flight."""
    if task_ids:
        pipe = client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.set(status_key(task_id), TOMBSTONE, ex=ttl_seconds)
        pipe.execute()


def uncache(client: Redis, task_ids: Sequence[str]) -> None:
    """Drop cached documents whose rows changed (their image removed); the next read caches them anew."""
    if task_ids:
        client.delete(*[status_key(t) for t in task_ids])


def cached_final(client: Redis, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The cached final documents of these ids (one MGET); ids not cached are left out."""
    docs: dict[str, dict[str, Any]] = {}
    for task_id, raw in zip(task_ids, client.mget([status_key(t) for t in task_ids]), strict=True):
        if raw is None:
            continue
        doc = json.loads(raw)
        if isinstance(doc, dict) and doc.get("task_id") == task_id and settled(doc):
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


def read(conn: Connection, redis: Redis, task_ids: Sequence[str], ttl_seconds: int) -> dict[str, dict[str, Any]]:
    """Status documents by id: final ones from the Redis cache, the rest from MySQL; unknown ids left out.

    A document that is not final is never taken from Redis, so a read can never report an older state than
    the row holds (a worker may die between its MySQL commit and its Redis write); a settled row found missing
    from the cache is put back.
    """
    try:
        docs = cached_final(redis, task_ids)
    except REDIS_ERRORS as exc:
        log.warning("Redis unavailable, reading statuses from the database: %s", exc)
        docs = {}
    missing = [t for t in task_ids if t not in docs]
    if not missing:
        return docs
    stored = stored_documents(conn, missing)
    repair = [doc for doc in stored.values() if settled(doc)]
    if repair:
        try:
            cache_final(redis, repair, ttl_seconds)
        except REDIS_ERRORS as exc:  # the answer is right anyway; the next read tries again
            log.warning("could not repair the status cache: %s", exc)
    return docs | stored
