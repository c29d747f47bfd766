"""Coalesced ingestion (web/ingest.py): concurrent uploads share one INSERT and one queue message (real
MariaDB and Redis), each keeping its own row, task id and owner."""

from __future__ import annotations

import base64
import io
import json
import threading

import redis
from flask import Flask
from sqlalchemy import select

from shared.config import Settings
from shared.schema import Prediction
from tests.helpers import png_bytes, stored_owner
from web import create_app
from web.owner import COOKIE

# Wide enough that every thread of a test lands in one group on a loaded CI machine; what is checked is
# how uploads are grouped, never how long anything took.
WINDOW_MS = 400.0


def _queued_ids(settings: Settings) -> list[tuple[str, list[str]]]:
    """(task name, upload ids) of each message waiting in the test's queue."""
    r = redis.Redis.from_url(settings.redis_url)
    out = []
    for raw in r.lrange(settings.queue_name, 0, -1):
        message = json.loads(raw)
        arg = json.loads(base64.b64decode(message["body"]))[0][0]
        out.append((message["headers"]["task"], arg if isinstance(arg, list) else [arg]))
    return out


def _post_together(app: Flask, images: list[bytes]) -> list[tuple[int, dict, str | None]]:
    """Each image from a client of its own, all released at once; (status, body, owner cookie) per client."""
    gate = threading.Barrier(len(images))
    answers: list[tuple[int, dict, str | None]] = [(0, {}, None)] * len(images)

    def upload(n: int) -> None:
        client = app.test_client()
        gate.wait(10)
        resp = client.post("/predict", data={"file": [(io.BytesIO(images[n]), f"{n}.png")]},
                           content_type="multipart/form-data")
        cookie = client.get_cookie(COOKIE)
        answers[n] = (resp.status_code, resp.get_json(), cookie.value if cookie else None)

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def test_concurrent_uploads_share_one_insert_and_one_message_each_keeping_its_own_row(settings, db_sessions, mnist):
    app = create_app(settings.model_copy(update={"ingest_max_wait_ms": WINDOW_MS}))
    answers = _post_together(app, [png_bytes(mnist.x_test[i]) for i in range(6)])

    assert [status for status, _, _ in answers] == [202] * 6
    ids = [body["task_id"] for _, body, _ in answers]
    assert len(set(ids)) == 6
    messages = _queued_ids(settings)
    queued = [task_id for _, batch in messages for task_id in batch]
    assert sorted(queued) == sorted(ids)  # every upload queued exactly once
    assert len(messages) < 6 and any(name == "digits.predict_batch" and len(batch) > 1 for name, batch in messages)
    with db_sessions() as s:
        rows = {r.task_id: r for r in s.scalars(select(Prediction).where(Prediction.task_id.in_(ids)))}
    # Each row belongs to the visitor who sent it, although one statement wrote them all.
    assert {t: rows[t].owner for t in ids} == {body["task_id"]: stored_owner(cookie) for _, body, cookie in answers}
    assert len({r.created_at for r in rows.values()}) < 6


def test_a_lone_upload_travels_as_its_own_task(settings, mnist):
    app = create_app(settings.model_copy(update={"ingest_max_wait_ms": WINDOW_MS}))
    (status, body, _), = _post_together(app, [png_bytes(mnist.x_test[0])])
    assert status == 202
    assert _queued_ids(settings) == [("digits.predict", [body["task_id"]])]


def test_when_the_queue_is_down_every_coalesced_request_gets_503_and_leaves_no_row(database_url, db_sessions, mnist):
    # A real Redis URL on a port where nothing listens: the broker is down.
    down = Settings(redis_url="redis://127.0.0.1:1/0", database_url=database_url, queue_name="tdown",
                    ingest_max_wait_ms=WINDOW_MS)
    answers = _post_together(create_app(down), [png_bytes(mnist.x_test[i]) for i in range(4)])

    assert [(status, body["error"]["code"]) for status, body, _ in answers] == [(503, "queue_unavailable")] * 4
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []
