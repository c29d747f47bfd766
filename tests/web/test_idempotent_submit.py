"""Idempotency-Key on POST /predict against real MariaDB and Redis (no worker): a retried submit makes nothing new,
answers with the first request's task ids, and a key never names two different requests."""

from __future__ import annotations

import io
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import requests
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from shared import idempotency, predictions
from shared.config import Settings
from shared.queue import queue_length
from shared.schema import IdempotencyKey, Prediction
from tests.helpers import eventually, png_bytes, stored_owner
from tests.stack import web_only_stack
from web import create_app

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="  # base64 of 26 bytes: a valid signing secret


def _token() -> str:
    return f"idem-test-{uuid.uuid4().hex}"


def _post(client, images: list[bytes], token: str | None, key: str | None, query: str = "",
          **fields: str):
    headers = {k: v for k, v in (("X-Owner-Token", token), ("Idempotency-Key", key)) if v is not None}
    data: dict[str, Any] = {"file": [(io.BytesIO(image), f"d{i}.png") for i, image in enumerate(images)], **fields}
    return client.post(f"/predict{query}", data=data, content_type="multipart/form-data", headers=headers)


def _rows(db_sessions, token: str) -> list[Prediction]:
    with db_sessions() as s:
        return list(s.scalars(select(Prediction).where(Prediction.owner == stored_owner(token))))


def _keys(db_sessions, token: str) -> int:
    with db_sessions() as s:
        return s.scalar(select(func.count()).select_from(IdempotencyKey)
                        .where(IdempotencyKey.owner == stored_owner(token))) or 0


def _queue(settings: Settings) -> int:
    return queue_length(redis.Redis.from_url(settings.redis_url), settings.queue_name)


def test_a_retry_after_the_first_answer_is_lost_makes_nothing_new(app, settings, db_sessions, mnist):
    client, token, key = app.test_client(use_cookies=False), _token(), str(uuid.uuid4())
    image = png_bytes(mnist.x_test[0])

    first = _post(client, [image], token, key)  # its answer "lost": the client retries the same request
    retry = _post(client, [image], token, key)

    assert first.status_code == retry.status_code == 202
    assert "Idempotent-Replayed" not in first.headers and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()
    assert retry.headers["Location"] == first.headers["Location"] == f"/tasks/{first.get_json()['task_id']}"
    assert [r.task_id for r in _rows(db_sessions, token)] == [first.get_json()["task_id"]]
    assert _queue(settings) == 1 and _keys(db_sessions, token) == 1


def test_a_retry_of_several_files_answers_the_same_tasks(app, settings, db_sessions, mnist):
    client, token, key = app.test_client(use_cookies=False), _token(), "batch-1"
    images = [png_bytes(mnist.x_test[i]) for i in range(3)]

    first, retry = (_post(client, images, token, key) for _ in range(2))

    assert first.status_code == retry.status_code == 202
    assert retry.get_json() == first.get_json()
    assert [t["filename"] for t in retry.get_json()["tasks"]] == ["d0.png", "d1.png", "d2.png"]
    assert len(_rows(db_sessions, token)) == 3 and _queue(settings) == 1  # one batch message, sent once


def test_a_replay_under_wait_answers_with_the_final_documents(app, db_sessions, mnist):
    client, token, key = app.test_client(use_cookies=False), _token(), str(uuid.uuid4())
    image = png_bytes(mnist.x_test[0])
    task_id = _post(client, [image], token, key).get_json()["task_id"]
    # Final without a worker: the owner cancels it.
    assert client.post(f"/tasks/{task_id}/cancel", headers={"X-Owner-Token": token}).status_code == 200

    replay = _post(client, [image], token, key, query="?wait=5")
    without_wait = _post(client, [image], token, key)

    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert (replay.get_json()["task_id"], replay.get_json()["state"]) == (task_id, "CANCELED")
    # Without `wait` the first request answered 202, and so does its repeat.
    assert without_wait.status_code == 202 and without_wait.get_json()["task_id"] == task_id
    assert len(_rows(db_sessions, token)) == 1


def test_the_same_key_for_another_request_is_422(database_url, redis_url, db_engine, db_sessions, mnist):
    cfg = Settings(redis_url=redis_url, database_url=database_url, queue_name=f"t-{uuid.uuid4().hex[:8]}",
                   webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1")
    client, token = create_app(cfg).test_client(use_cookies=False), _token()
    one, two = png_bytes(mnist.x_test[0]), png_bytes(mnist.x_test[1])
    hook = {"webhook": "http://127.0.0.1:9/a"}
    assert _post(client, [one], token, "k1").status_code == 202
    assert _post(client, [one], token, "k2", **hook).status_code == 202

    for key, images, fields in (("k1", [two], {}), ("k1", [one, one], {}), ("k1", [one], hook),
                                ("k2", [one], {"webhook": "http://127.0.0.1:9/b"}),
                                ("k2", [one], {**hook, "webhook_events": "start,completed"})):
        resp = _post(client, images, token, key, **fields)
        assert resp.status_code == 422, (key, fields)
        assert resp.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(_rows(db_sessions, token)) == 2
    # The events are compared as the service reads them: the same set in another order is the same request.
    again = _post(client, [one], token, "k2", **hook, webhook_events="completed")
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"


def test_keys_that_cannot_be_keys_are_400(client, db_sessions, mnist):
    token = _token()
    for key in ("", "x" * 256, "tab\there", "caf\xe9"):
        resp = _post(client, [png_bytes(mnist.x_test[0])], token, key)
        assert resp.status_code == 400, repr(key)
        assert resp.get_json()["error"]["code"] == "bad_idempotency_key"
    assert _post(client, [png_bytes(mnist.x_test[0])], token, "~" * 255).status_code == 202
    assert len(_rows(db_sessions, token)) == 1


def test_a_key_without_an_owner_token_is_400_and_records_nothing(app, db_sessions, mnist):
    resp = _post(app.test_client(use_cookies=False), [png_bytes(mnist.x_test[0])], None, "k")

    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["code"] == "owner_token_required" and "retry" in error["message"]
    with db_sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0


def test_the_pages_cookie_is_an_owner_token_too(client, db_sessions, mnist):
    client.get("/")  # the visitor's cookie
    image = png_bytes(mnist.x_test[0])
    first, retry = (_post(client, [image], None, "from-the-page") for _ in range(2))
    assert first.status_code == retry.status_code == 202 and retry.get_json() == first.get_json()


def test_keys_belong_to_their_owner(app, db_sessions, mnist):
    client, image = app.test_client(use_cookies=False), png_bytes(mnist.x_test[0])
    mine, theirs = _token(), _token()

    a, b = _post(client, [image], mine, "shared-key"), _post(client, [image], theirs, "shared-key")

    assert a.status_code == b.status_code == 202 and a.get_json() != b.get_json()
    assert "Idempotent-Replayed" not in b.headers


def test_an_expired_key_records_anew(database_url, redis_url, db_engine, db_sessions, mnist):
    cfg = Settings(redis_url=redis_url, database_url=database_url, queue_name=f"t-{uuid.uuid4().hex[:8]}",
                   idempotency_ttl_seconds=0)
    client, token, image = create_app(cfg).test_client(use_cookies=False), _token(), png_bytes(mnist.x_test[0])

    first, later = _post(client, [image], token, "k"), _post(client, [image], token, "k")

    assert first.status_code == later.status_code == 202 and first.get_json() != later.get_json()
    assert len(_rows(db_sessions, token)) == 2 and _keys(db_sessions, token) == 1


def test_when_the_queue_is_away_a_keyed_upload_is_kept_for_recovery_and_its_retry_finds_it(
        database_url, db_engine, db_sessions, mnist):
    cfg = Settings(redis_url="redis://127.0.0.1:1/0", database_url=database_url, queue_name="tdown")
    client, token, image = create_app(cfg).test_client(use_cookies=False), _token(), png_bytes(mnist.x_test[0])

    first, retry = _post(client, [image], token, "k"), _post(client, [image], token, "k")

    # In MySQL before the answer (the outbox): recovery queues it once Redis is back, so it is accepted.
    assert first.status_code == 202 and not first.headers.get("Idempotent-Replayed")
    assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json()["task_id"] == first.get_json()["task_id"]
    assert [r.state for r in _rows(db_sessions, token)] == ["PENDING"] and _keys(db_sessions, token) == 1


def _hold_key(db_engine, token: str, key: str, image: bytes):
    """A transaction that recorded the key and its upload, as a first request does, and has not committed yet."""
    upload = predictions.NewUpload(data=image, filename="d0.png", content_type="image/png", width=28, height=28,
                                   owner=stored_owner(token))
    fingerprint = idempotency.fingerprint([("d0.png", image)], [("webhook", None), ("webhook_events", None)])
    conn = db_engine.connect()
    tx = conn.begin()
    idempotency.claim_all(conn, [idempotency.Claimed(stored_owner(token), key, fingerprint, [upload.task_id])], 3600)
    predictions.record(conn, [upload], "held")
    return conn, tx, upload.task_id


def _waiting_on_the_key(db_engine) -> bool:
    """Whether a statement on idempotency_keys is running, i.e. waiting for the held key (the process list is
    live; information_schema.innodb_trx is a cache that polling too often never refreshes)."""
    with db_engine.connect() as conn:
        return bool(conn.scalar(text("SELECT COUNT(*) FROM information_schema.processlist "
                                     "WHERE info LIKE 'INSERT INTO idempotency_keys%' AND id <> CONNECTION_ID()")))


def test_a_repeat_while_the_first_is_being_recorded_waits_for_it_then_replays(app, db_engine, db_sessions, mnist):
    token, image = _token(), png_bytes(mnist.x_test[0])
    conn, tx, task_id = _hold_key(db_engine, token, "k", image)
    answers: list[Any] = []
    repeat = threading.Thread(target=lambda: answers.append(
        _post(app.test_client(use_cookies=False), [image], token, "k")))
    repeat.start()
    try:
        assert eventually(lambda: _waiting_on_the_key(db_engine))  # held on the key's unique index
    finally:
        tx.commit()
        conn.close()
    repeat.join()

    [resp] = answers
    assert resp.status_code == 202 and resp.headers["Idempotent-Replayed"] == "true"
    assert resp.get_json()["task_id"] == task_id
    assert [r.task_id for r in _rows(db_sessions, token)] == [task_id]


def test_a_repeat_that_waits_past_the_lock_timeout_is_409(settings, db_engine, db_sessions, mnist):
    # The web's connections give up a lock wait after 1 s (the server's default is 50 s).
    url = make_url(settings.database_url).update_query_dict({"init_command": "SET innodb_lock_wait_timeout=1"})
    app = create_app(settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)}))
    token, image = _token(), png_bytes(mnist.x_test[0])
    conn, tx, _ = _hold_key(db_engine, token, "k", image)
    try:
        resp = _post(app.test_client(use_cookies=False), [image], token, "k")
    finally:
        tx.rollback()
        conn.close()
        app.extensions["digits"].engine.dispose()

    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "idempotency_key_in_use"
    assert _rows(db_sessions, token) == [] and _keys(db_sessions, token) == 0


def test_sixteen_concurrent_duplicates_make_one_upload(database_url, redis_url, db_engine, db_sessions, mnist):
    token, key, image = _token(), str(uuid.uuid4()), png_bytes(mnist.x_test[0])
    with web_only_stack(database_url, redis_url) as stack:
        gate = threading.Barrier(16)

        def submit(_: int) -> requests.Response:
            gate.wait()
            return requests.post(f"{stack.base_url}/predict", files={"file": ("d.png", image)}, timeout=60,
                                 headers={"X-Owner-Token": token, "Idempotency-Key": key})

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(submit, range(16)))
        queued = queue_length(redis.Redis.from_url(redis_url), stack.settings.queue_name)

    assert [a.status_code for a in answers] == [202] * 16, [a.text for a in answers if a.status_code != 202]
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1  # one recorded, fifteen replayed
    assert [r.task_id for r in _rows(db_sessions, token)] == [answers[0].json()["task_id"]]
    assert queued == 1
