"""Cancel and delete over HTTP (web/tasks.py) against real MariaDB and Redis, no worker: an upload is its owner's
(or an operator's) to cancel or delete, a cancel ends it for good, a delete leaves nothing behind."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from shared import predictions, retention, statuses
from shared.config import Settings
from shared.schema import IdempotencyKey, Prediction, State
from tests.helpers import png_bytes, published, stored_owner
from web import create_app
from web.metrics import CANCELED

OPERATOR = "ops:a-long-operator-password"
RESULT = {"state": State.SUCCESS.value, "digit": 7, "confidence": 0.9, "probabilities": [0.01] * 9 + [0.91],
          "model_name": "seed-cnn", "model_version": "v1", "error": None}


def _token() -> str:
    return f"tasks-test-{uuid.uuid4().hex}"


def _mine(token: str, **more: str) -> dict[str, str]:
    return {"X-Owner-Token": token, **more}


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _upload(app: Flask, token: str, image: bytes, key: str | None = None) -> str:
    headers = _mine(token) | ({"Idempotency-Key": key} if key else {})
    resp = app.test_client(use_cookies=False).post(
        "/predict", data={"file": [(io.BytesIO(image), "d.png")]}, content_type="multipart/form-data", headers=headers)
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["task_id"])


def _finish(engine: Any, task_id: str) -> dict[str, Any]:
    """Make an upload SUCCESS as a worker would (claim, then finish), without a worker."""
    with engine.begin() as conn:
        claim = predictions.claim(conn, [task_id], 0, "test-worker", 60)
        return predictions.finish(conn, claim, {task_id: dict(RESULT)})[task_id]


def _state(engine: Any, task_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(select(Prediction.state).where(Prediction.task_id == task_id))


@pytest.fixture
def ops_app(settings: Settings, db_engine) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update={"admin_basic_auth": OPERATOR}))
    yield app
    app.extensions["digits"].engine.dispose()


def test_the_owner_cancels_a_pending_upload_once(app, db_engine, mnist):
    token = _token()
    task_id = _upload(app, token, png_bytes(mnist.x_test[0]))
    client = app.test_client(use_cookies=False)
    before = CANCELED.labels(by="owner")._value.get()

    first = client.post(f"/tasks/{task_id}/cancel", headers=_mine(token))
    again = client.post(f"/tasks/{task_id}/cancel", headers=_mine(token))

    assert first.status_code == 200
    assert (first.get_json()["task_id"], first.get_json()["state"]) == (task_id, "CANCELED")
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "already_final"
    assert again.get_json()["task"] == first.get_json()
    assert client.get(f"/tasks/{task_id}").get_json()["state"] == "CANCELED" == _state(db_engine, task_id)
    assert CANCELED.labels(by="owner")._value.get() == before + 1


def test_a_cancel_wakes_a_long_poll_through_the_cache(app, settings, mnist):
    token = _token()
    task_id = _upload(app, token, png_bytes(mnist.x_test[0]))
    listener = redis.Redis.from_url(settings.redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(statuses.FINISHED_CHANNEL)
    listener.get_message(timeout=1)  # the subscription is in place

    assert app.test_client().post(f"/tasks/{task_id}/cancel", headers=_mine(token)).status_code == 200

    assert published(listener, task_id) is not None
    cached = statuses.cached_final(redis.Redis.from_url(settings.redis_url), [task_id])
    assert cached[task_id]["state"] == "CANCELED"
    listener.close()


def test_a_final_upload_cannot_be_canceled(app, db_engine, mnist):
    token = _token()
    task_id = _upload(app, token, png_bytes(mnist.x_test[0]))
    _finish(db_engine, task_id)

    resp = app.test_client().post(f"/tasks/{task_id}/cancel", headers=_mine(token))

    assert resp.status_code == 409 and resp.get_json()["task"]["state"] == "SUCCESS"
    assert _state(db_engine, task_id) == "SUCCESS"


def test_another_owner_or_nobody_cannot_cancel_and_learns_nothing(app, db_engine, mnist):
    task_id = _upload(app, _token(), png_bytes(mnist.x_test[0]))
    client = app.test_client(use_cookies=False)

    for headers in (_mine(_token()), {}):
        resp = client.post(f"/tasks/{task_id}/cancel", headers=headers)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    for unknown in (str(uuid.uuid4()), "not-a-task-id"):
        assert client.post(f"/tasks/{unknown}/cancel", headers=_mine(_token())).status_code == 404
    assert _state(db_engine, task_id) == "PENDING"


def test_an_operator_cancels_anyones_upload(ops_app, db_engine, mnist):
    task_id = _upload(ops_app, _token(), png_bytes(mnist.x_test[0]))
    client = ops_app.test_client(use_cookies=False)

    wrong = client.post(f"/tasks/{task_id}/cancel", headers=_basic("ops:guess"))
    resp = client.post(f"/tasks/{task_id}/cancel", headers=_basic(OPERATOR))

    assert wrong.status_code == 401
    assert resp.status_code == 200 and resp.get_json()["state"] == "CANCELED"


def test_a_delete_leaves_nothing_behind(app, settings, db_engine, mnist):
    token = _token()
    task_id = _upload(app, token, png_bytes(mnist.x_test[0]))
    cache = redis.Redis.from_url(settings.redis_url)
    statuses.cache_final(cache, [_finish(db_engine, task_id)], settings.result_ttl_seconds)
    client = app.test_client(use_cookies=False)
    assert statuses.cached_final(cache, [task_id])[task_id]["state"] == "SUCCESS"
    assert [i["task_id"] for i in client.get("/predictions", headers=_mine(token)).get_json()["items"]] == [task_id]

    resp = client.delete(f"/tasks/{task_id}", headers=_mine(token))

    assert resp.status_code == 204 and resp.get_data() == b""
    with db_engine.connect() as conn:  # the row, and with it the image
        assert conn.scalar(select(func.count()).select_from(Prediction).where(Prediction.task_id == task_id)) == 0
    assert statuses.cached_final(cache, [task_id]) == {}
    assert cache.get(statuses.status_key(task_id)) == statuses.TOMBSTONE.encode()  # no reader can cache it again
    assert client.get(f"/tasks/{task_id}").status_code == 404
    assert client.get("/predictions", headers=_mine(token)).get_json()["total"] == 0
    assert client.delete(f"/tasks/{task_id}", headers=_mine(token)).status_code == 404


def test_a_pending_upload_can_be_deleted(app, db_engine, mnist):
    token = _token()
    task_id = _upload(app, token, png_bytes(mnist.x_test[0]))
    assert app.test_client().delete(f"/tasks/{task_id}", headers=_mine(token)).status_code == 204
    assert _state(db_engine, task_id) is None


def test_another_owner_cannot_delete(app, db_engine, mnist):
    task_id = _upload(app, _token(), png_bytes(mnist.x_test[0]))
    client = app.test_client(use_cookies=False)

    for headers in (_mine(_token()), {}):
        assert client.delete(f"/tasks/{task_id}", headers=headers).status_code == 404
    assert client.delete(f"/tasks/{uuid.uuid4()}", headers=_mine(_token())).status_code == 404
    assert _state(db_engine, task_id) == "PENDING"


def test_an_operator_deletes_anyones_upload(ops_app, db_engine, mnist):
    task_id = _upload(ops_app, _token(), png_bytes(mnist.x_test[0]))
    assert ops_app.test_client().delete(f"/tasks/{task_id}", headers=_basic(OPERATOR)).status_code == 204
    assert _state(db_engine, task_id) is None


def test_a_delete_while_redis_is_away_deletes_nothing(settings, db_engine, mnist):
    token = _token()
    task_id = _upload(create_app(settings), token, png_bytes(mnist.x_test[0]))
    away = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))

    resp = away.test_client().delete(f"/tasks/{task_id}", headers=_mine(token))

    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "cache_unavailable"
    assert _state(db_engine, task_id) == "PENDING"  # a retry deletes it


def test_erasure_removes_all_of_one_owners_uploads_and_keys_and_nobody_elses(app, settings, db_engine, mnist):
    mine, theirs = _token(), _token()
    image = png_bytes(mnist.x_test[0])
    my_ids = [_upload(app, mine, image, key=f"k{i}") for i in range(3)]
    their_id = _upload(app, theirs, image, key="k0")
    statuses.cache_final(redis.Redis.from_url(settings.redis_url), [_finish(db_engine, my_ids[0])],
                         settings.result_ttl_seconds)
    client = app.test_client(use_cookies=False)

    resp = client.delete("/predictions", headers=_mine(mine))

    assert resp.status_code == 204
    assert client.get("/predictions", headers=_mine(mine)).get_json()["total"] == 0
    assert [i["task_id"] for i in client.get("/predictions", headers=_mine(theirs)).get_json()["items"]] == [their_id]
    assert all(client.get(f"/tasks/{t}").status_code == 404 for t in my_ids)
    with db_engine.connect() as conn:
        owners = conn.scalars(select(IdempotencyKey.owner).where(
            IdempotencyKey.owner.in_([stored_owner(mine), stored_owner(theirs)]))).all()
        assert owners == [stored_owner(theirs)]  # my keys went with my uploads
    # The same key makes a new upload now; nothing to erase is fine too.
    assert _upload(app, mine, image, key="k0") not in my_ids
    assert client.delete("/predictions", headers=_mine(_token())).status_code == 204
    assert client.delete("/predictions").status_code == 204


def test_erasure_works_through_more_uploads_than_one_batch(app, db_engine):
    token = _token()
    uploads = [predictions.NewUpload(data=b"png", filename=None, content_type="image/png", width=28, height=28,
                                     owner=stored_owner(token)) for _ in range(retention.BATCH + 5)]
    with db_engine.begin() as conn:
        predictions.record(conn, uploads, "erasure-test")

    assert app.test_client().delete("/predictions", headers=_mine(token)).status_code == 204
    with db_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)
                           .where(Prediction.owner == stored_owner(token))) == 0
