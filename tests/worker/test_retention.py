"""Retention's purge on the real database and Redis: final uploads lose their image or row, unfinished ones never."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import event, insert, select, update

from shared import deliveries, idempotency, statuses
from shared.db import make_engine
from shared.predictions import COLUMNS, TABLE, stored_documents
from shared.queue import enqueue, make_celery
from shared.schema import State, utcnow
from shared.statuses import TOMBSTONE, status_key
from tests.helpers import eventually
from worker.recovery import Recovery, RecoveryLoop
from worker.retention import Purge

HOUR = 3600.0
IMAGE = b"\x89PNG-ish bytes of an upload" * 10


@pytest.fixture
def cache(settings) -> Iterator[redis.Redis]:
    """The test Redis."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _purge(db_engine, cache, *, images: float | None = HOUR, rows: float | None = None, **kw: Any) -> Purge:
    return Purge(db_engine, cache, image_retention_seconds=images, row_retention_seconds=rows,
                 idempotency_ttl_seconds=24 * HOUR, result_ttl_seconds=300, **kw)


def _rows(db_engine, queue: str, count: int = 1, *, state: State = State.SUCCESS,
          finished_s_ago: float | None = 2 * HOUR, created_s_ago: float = 3 * HOUR, webhook: bool = False) -> list[str]:
    """Insert uploads in this state, finished that long ago (unfinished ones too if given: the state guard's test)."""
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    values = [{"task_id": t, "state": state.value, "image": IMAGE, "image_sha256": hashlib.sha256(IMAGE).hexdigest(),
               "size_bytes": len(IMAGE), "created_at": now - timedelta(seconds=created_s_ago),
               "enqueued_at": now - timedelta(seconds=created_s_ago), "queue": queue, "deliveries": 1,
               "digit": 7 if state == State.SUCCESS else None, "confidence": 0.9 if state == State.SUCCESS else None,
               "finished_at": None if finished_s_ago is None else now - timedelta(seconds=finished_s_ago),
               "claim_token": "a-claim" if state == State.STARTED else None,
               "lease_expires_at": now - timedelta(seconds=1) if state == State.STARTED else None,
               "webhook_url": "https://hooks.example/x" if webhook else None,
               "webhook_events": "completed" if webhook else None}
              for t in ids]
    with db_engine.begin() as conn:
        conn.execute(insert(TABLE), values)
    return ids


def _stored(db_engine, task_ids: list[str]) -> dict[str, Any]:
    with db_engine.connect() as conn:
        return {r.task_id: r for r in conn.execute(select(COLUMNS.task_id, COLUMNS.image, COLUMNS.data_removed_at,
                                                          COLUMNS.digit)
                                                   .where(COLUMNS.task_id.in_(task_ids)))}


def _purged(what: str) -> float:
    return REGISTRY.get_sample_value("digits_purged_total", {"what": what}) or 0.0


@pytest.fixture
def statements(db_engine) -> Iterator[list[tuple[str, int]]]:
    """Every UPDATE or DELETE on predictions the engine sends, with the rows it changed (the real driver's count)."""
    seen: list[tuple[str, int]] = []

    def after(_conn, cursor, statement: str, *_: Any) -> None:
        verb = statement.split(None, 1)[0].upper()
        if verb in ("UPDATE", "DELETE") and statement.split()[1 if verb == "UPDATE" else 2].strip("`") == "predictions":
            seen.append((verb, cursor.rowcount))

    event.listen(db_engine, "after_cursor_execute", after)
    yield seen
    event.remove(db_engine, "after_cursor_execute", after)


def test_final_images_past_retention_go_and_documents_say_data_removed_while_unfinished_ones_stay(
        settings, db_engine, cache, caplog):
    queue = settings.queue_name
    old_final = [*_rows(db_engine, queue), *_rows(db_engine, queue, state=State.FAILURE),
                 *_rows(db_engine, queue, state=State.CANCELED)]
    recent = _rows(db_engine, queue, finished_s_ago=60)
    # Unfinished uploads of any age keep their image, even with a (stray) finish time far in the past.
    unfinished = [*_rows(db_engine, queue, state=State.PENDING, finished_s_ago=None, created_s_ago=30 * 24 * HOUR),
                  *_rows(db_engine, queue, state=State.STARTED, finished_s_ago=None, created_s_ago=30 * 24 * HOUR),
                  *_rows(db_engine, queue, state=State.PENDING, finished_s_ago=10 * HOUR),
                  *_rows(db_engine, queue, state=State.STARTED, finished_s_ago=10 * HOUR)]
    with db_engine.connect() as conn:  # a reader caches the settled documents, as GET /tasks/<id> does
        before = statuses.read(conn, cache, old_final, 300)
    assert not any(doc["data_removed"] for doc in before.values())
    assert all(cache.exists(status_key(t)) for t in old_final)

    with caplog.at_level(logging.INFO, logger="worker.retention"):
        purged = _purge(db_engine, cache)()

    assert purged.images == 3 and purged.rows == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.retention"]
    assert len(lines) == 1 and lines[0].startswith("retention: removed 3 image(s), deleted 0 row(s) and ")
    stored = _stored(db_engine, old_final + recent + unfinished)
    for task_id in old_final:
        assert stored[task_id].image == b"" and stored[task_id].data_removed_at is not None
    for task_id in recent + unfinished:
        assert stored[task_id].image == IMAGE and stored[task_id].data_removed_at is None
    assert not any(cache.exists(status_key(t)) for t in old_final)  # the stale copies went at once
    with db_engine.connect() as conn:
        after = statuses.read(conn, cache, old_final + recent, 300)
    assert all(after[t]["data_removed"] for t in old_final)
    assert after[old_final[0]]["digit"] == 7 and after[old_final[0]]["state"] == "SUCCESS"  # the answer stays
    assert not after[recent[0]]["data_removed"]


def test_a_document_cached_again_by_a_read_in_flight_is_dropped_by_the_next_pass(settings, db_engine, cache):
    old = _rows(db_engine, settings.queue_name)
    with db_engine.connect() as conn:  # a reader fetches the row while its image is still there...
        stale = stored_documents(conn, old)
    purge = _purge(db_engine, cache)
    purge()
    statuses.cache_final(cache, stale.values(), 300)  # ...and caches it just after the purge dropped its copy
    assert statuses.cached_final(cache, old)[old[0]]["data_removed"] is False

    purge()  # the next sweep's pass

    with db_engine.connect() as conn:
        assert statuses.read(conn, cache, old, 300)[old[0]]["data_removed"] is True


def test_row_retention_deletes_final_rows_and_their_webhook_deliveries_only(settings, db_engine, cache):
    queue = settings.queue_name
    old = _rows(db_engine, queue, 3, webhook=True)
    kept = [*_rows(db_engine, queue, finished_s_ago=60, webhook=True),
            *_rows(db_engine, queue, state=State.STARTED, finished_s_ago=None, webhook=True),
            *_rows(db_engine, queue, state=State.PENDING, finished_s_ago=None)]
    with db_engine.begin() as conn:
        deliveries.schedule(conn, [deliveries.Event(t, "completed", "https://hooks.example/x", {"task_id": t})
                                   for t in old + kept[:1]] +
                            [deliveries.Event(kept[1], "start", "https://hooks.example/x", {"task_id": kept[1]})])
        # Settled deliveries (delivered, given up) go with their rows; one still being tried keeps its row.
        owed = _rows(db_engine, queue, 1, webhook=True)
        deliveries.schedule(conn, [deliveries.Event(owed[0], "completed", "https://hooks.example/x", {})])
        conn.execute(update(deliveries.TABLE).where(deliveries.COLUMNS.task_id.in_(old))
                     .values(state=deliveries.DELIVERED))
    kept += owed
    cache.set(status_key(old[0]), '{"cached": "copy"}')

    purged = _purge(db_engine, cache, images=None, rows=HOUR)()

    assert purged.rows == 3 and purged.images == 0
    assert set(_stored(db_engine, old + kept)) == set(kept)
    with db_engine.connect() as conn:
        left = {r.task_id for r in conn.execute(select(deliveries.COLUMNS.task_id)
                                                .where(deliveries.COLUMNS.task_id.in_(old + kept)))}
        assert left == {*kept[:2], *owed}
        assert statuses.read(conn, cache, old, 300) == {}  # gone: GET /tasks/<id> answers 404
    assert {cache.get(status_key(t)).decode() for t in old} == {TOMBSTONE}


def test_each_statement_purges_at_most_a_batch_and_a_sweep_at_most_its_budget(settings, db_engine, cache, statements):
    old = _rows(db_engine, settings.queue_name, 2500)

    purged = _purge(db_engine, cache)()

    assert purged.images == 2500
    assert statements == [("UPDATE", 1000), ("UPDATE", 1000), ("UPDATE", 500)]
    assert all(r.data_removed_at is not None for r in _stored(db_engine, old).values())

    more = _rows(db_engine, settings.queue_name, 2500)
    statements.clear()
    budget = _purge(db_engine, cache, max_batches=1)
    assert budget().images == 1000 and statements == [("UPDATE", 1000)]
    assert sum(r.data_removed_at is not None for r in _stored(db_engine, more).values()) == 1000
    assert budget().images == 1000 and budget().images == 500  # the rest goes in later sweeps
    assert budget().images == 0


def test_expired_idempotency_keys_go_and_live_ones_stay(settings, db_engine, cache):
    owner = uuid.uuid4().hex
    now = utcnow()
    with db_engine.begin() as conn:
        conn.execute(insert(idempotency.TABLE), [
            {"owner": owner, "idem_key": f"k{i}", "request_sha256": "0" * 64, "task_ids": [],
             "created_at": now - timedelta(seconds=age)}
            for i, age in enumerate([25 * HOUR, 48 * HOUR, 23 * HOUR, 60])])
    before = _purged("idempotency_key")

    purged = _purge(db_engine, cache, images=None)()

    assert purged.keys >= 2  # other tests' expired keys may go too: the purge is global
    with db_engine.connect() as conn:
        left = {r.idem_key for r in conn.execute(select(idempotency.COLUMNS.idem_key)
                                                 .where(idempotency.COLUMNS.owner == owner))}
    assert left == {"k2", "k3"}
    assert _purged("idempotency_key") - before == purged.keys


def test_the_metric_counts_images_rows_and_keys(settings, db_engine, cache):
    _rows(db_engine, settings.queue_name, 4, finished_s_ago=10 * HOUR)
    _rows(db_engine, settings.queue_name, 2, finished_s_ago=2 * HOUR)
    before = {what: _purged(what) for what in ("image", "row")}

    # Rows older than 5 h go whole (and are not blanked first); those between 1 and 5 h lose their image.
    purged = _purge(db_engine, cache, images=HOUR, rows=5 * HOUR)()

    assert (purged.rows, purged.images) == (4, 2)
    assert _purged("row") - before["row"] == 4 and _purged("image") - before["image"] == 2


def test_retention_off_purges_nothing(settings, db_engine, cache):
    old = _rows(db_engine, settings.queue_name, 3, finished_s_ago=365 * 24 * HOUR)

    purged = _purge(db_engine, cache, images=None, rows=None)()

    assert (purged.images, purged.rows) == (0, 0)
    assert all(r.image == IMAGE for r in _stored(db_engine, old).values())


def test_a_redis_away_leaves_the_purge_done_and_logged(settings, db_engine, caplog):
    old = _rows(db_engine, settings.queue_name, 2)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)

    with caplog.at_level(logging.WARNING, logger="worker.retention"):
        purged = _purge(db_engine, dead)()

    assert purged.images == 2
    assert all(r.data_removed_at is not None for r in _stored(db_engine, old).values())
    assert any("could not drop 2 cached document(s)" in r.getMessage() for r in caplog.records)


@pytest.fixture
def recovery_of(settings, db_engine, cache):
    """A Recovery of the test's queue, with the purge given."""
    producer = make_celery(settings.redis_url, settings.queue_name)

    def make(purge: Purge) -> Recovery:
        return Recovery(db_engine, cache, settings.queue_name,
                        lambda ids: enqueue(producer, settings.queue_name, ids), 60.0, 3, lambda docs: None,
                        purge=purge)
    return make


def test_a_sweep_purges_at_its_end_and_a_database_away_never_stops_recovery(
        settings, db_engine, cache, recovery_of, caplog):
    stalled = _rows(db_engine, settings.queue_name, state=State.STARTED, finished_s_ago=None, created_s_ago=10)
    old = _rows(db_engine, settings.queue_name)
    away = make_engine("mysql+pymysql://root@127.0.0.1:1/digits", connect_args={"connect_timeout": 1})

    with caplog.at_level(logging.WARNING, logger="worker.retention"):
        result = recovery_of(_purge(away, cache)).sweep()

    assert result.unclaimed == stalled  # recovery did its work
    assert any("retention purge stopped" in r.getMessage() for r in caplog.records)
    assert _stored(db_engine, old)[old[0]].data_removed_at is None
    recovery_of(_purge(db_engine, cache)).sweep()
    assert _stored(db_engine, old)[old[0]].data_removed_at is not None
    away.dispose()


def test_the_recovery_loop_purges_while_it_holds_the_queue_lock(settings, db_engine, cache, recovery_of):
    old = _rows(db_engine, settings.queue_name, 5)
    loop = RecoveryLoop(recovery_of(_purge(db_engine, cache)), cache, settings.queue_name, "test-owner", 0.05)
    loop.start()
    try:
        assert eventually(lambda: all(r.data_removed_at is not None for r in _stored(db_engine, old).values()))
    finally:
        loop.stop()
