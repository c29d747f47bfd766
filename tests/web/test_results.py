"""Long polls: woken by the result's publication in Redis (real Redis)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import uuid

import pytest
import redis
from sqlalchemy import select

from shared import predictions
from shared.schema import Prediction, State, status_document, utcnow
from shared.statuses import FINISHED_CHANNEL, cache_final, status_key
from tests.helpers import png_bytes
from web import create_app
from web.metrics import UPLOADS
from web.results import ResultWaiter


def _store_success(settings, db_sessions, task_id: str, cache: bool = True) -> dict:
    """What a worker does at the end of a task: the row, then the result in Redis (which publishes it)."""
    with db_sessions() as s, s.begin():
        row = s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()
        row.state, row.digit, row.confidence, row.finished_at = State.SUCCESS.value, 4, 0.9, utcnow()
        row.probabilities = [0.01] * 4 + [0.9] + [0.01] * 5
        doc = row.status_document()
    if not cache:  # the worker died between its commit and its Redis write
        return doc
    cache_final(redis.Redis.from_url(settings.redis_url), [doc], settings.result_ttl_seconds)
    return doc


def _add_pending(db_sessions) -> str:
    task_id = str(uuid.uuid4())
    with db_sessions() as s, s.begin():
        s.add(Prediction(task_id=task_id, state=State.PENDING.value, image=b"x",
                         image_sha256=hashlib.sha256(b"x").hexdigest(), size_bytes=1))
    return task_id


def test_waiter_is_woken_by_the_published_result(settings, db_sessions):
    waiter = ResultWaiter(redis.Redis.from_url(settings.redis_url), max_waiting=1)
    task_id = _add_pending(db_sessions)
    other = str(uuid.uuid4())

    with waiter.subscription(task_id) as finished, waiter.subscription(other) as unrelated:
        # The listener thread subscribes asynchronously: publish until it has heard one (bounded).
        for _ in range(100):
            _store_success(settings, db_sessions, task_id)
            if finished.wait(0.1):
                break

        # The published document itself reached the waiter: it answers without reading Redis or MySQL.
        assert finished.docs[task_id]["state"] == "SUCCESS"
        assert not unrelated.docs and not unrelated.is_set()


def test_long_poll_returns_the_final_result(client, settings, db_sessions):
    task_id = _add_pending(db_sessions)
    answer: dict = {}

    def poll() -> None:
        resp = client.get(f"/tasks/{task_id}?wait=20")
        answer["status"], answer["doc"] = resp.status_code, resp.get_json()

    poller = threading.Thread(target=poll)
    poller.start()
    doc = _store_success(settings, db_sessions, task_id)
    poller.join(30)

    assert answer == {"status": 200, "doc": doc}


def test_long_poll_is_answered_by_the_published_document_itself(client, settings, db_sessions):
    task_id = _add_pending(db_sessions)
    poller, answer = _poll_in_thread(client, f"/tasks/{task_id}?wait=20")
    doc = status_document({"task_id": task_id, "state": "SUCCESS", "digit": 7, "confidence": 0.99})
    publisher = redis.Redis.from_url(settings.redis_url)
    # Only published (not stored, not cached): the row stays PENDING, so no re-read could answer SUCCESS; if
    # the wake-up never fired, the poll would answer PENDING after its 20 s. Bounded, as the listener
    # subscribes asynchronously.
    for _ in range(100):
        publisher.publish(FINISHED_CHANNEL, json.dumps(doc))
        poller.join(0.1)
        if not poller.is_alive():
            break

    assert answer == {"status": 200, "body": doc}


def test_long_poll_on_an_unknown_task_is_404_at_once(client):
    resp = client.get(f"/tasks/{uuid.uuid4()}?wait=20")
    assert resp.status_code == 404


def test_long_poll_without_a_result_answers_pending_when_the_wait_ends(client, db_sessions):
    task_id = _add_pending(db_sessions)
    resp = client.get(f"/tasks/{task_id}?wait=0.3")
    assert resp.status_code == 200
    assert resp.get_json()["state"] == "PENDING"


def _poll_in_thread(client, url: str) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def poll() -> None:
        resp = client.get(url)
        answer["status"], answer["body"] = resp.status_code, resp.get_json()

    poller = threading.Thread(target=poll)
    poller.start()
    return poller, answer


def test_until_any_returns_when_one_of_several_is_final(client, settings, db_sessions):
    first, second = _add_pending(db_sessions), _add_pending(db_sessions)
    poller, answer = _poll_in_thread(client, f"/tasks?ids={first},{second}&wait=30&until=any")

    _store_success(settings, db_sessions, second)
    poller.join(25)

    # Answered before the second task was final: only `until=any` lets the request go that early.
    assert answer["status"] == 200
    assert [d["state"] for d in answer["body"]["tasks"]] == ["PENDING", "SUCCESS"]


def test_until_must_be_all_or_any(client, db_sessions):
    resp = client.get(f"/tasks?ids={_add_pending(db_sessions)}&wait=1&until=some")
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "bad_until"


def test_past_the_long_poll_slots_a_request_is_answered_at_once(settings, db_engine, db_sessions):
    app = create_app(settings.model_copy(update={"max_long_polls": 1}))
    task_id = _add_pending(db_sessions)
    with app.extensions["digits"].results.slot(30) as held:  # another request holds the only slot
        assert held
        poller, answer = _poll_in_thread(app.test_client(), f"/tasks/{task_id}?wait=30")
        poller.join(20)  # far less than the 30 s it would have waited with a slot
        assert not poller.is_alive()
    assert answer == {"status": 200, "body": answer["body"]} and answer["body"]["state"] == "PENDING"


def test_a_result_committed_but_never_cached_is_read_from_the_database_and_repaired(client, settings, db_sessions):
    task_id = _add_pending(db_sessions)
    doc = _store_success(settings, db_sessions, task_id, cache=False)
    cache = redis.Redis.from_url(settings.redis_url)
    assert cache.get(status_key(task_id)) is None

    resp = client.get(f"/tasks/{task_id}")

    assert resp.get_json() == doc
    assert json.loads(cache.get(status_key(task_id))) == doc  # the cache is repaired


def test_a_long_poll_returns_a_result_that_was_committed_but_never_published(client, settings, db_sessions):
    task_id = _add_pending(db_sessions)
    poller, answer = _poll_in_thread(client, f"/tasks/{task_id}?wait=20")
    time.sleep(0.3)  # let the poll start waiting: the point is that nothing will ever wake it
    committed = time.monotonic()
    doc = _store_success(settings, db_sessions, task_id, cache=False)
    poller.join(20)

    assert answer == {"status": 200, "body": doc}
    assert time.monotonic() - committed < 2.5  # re-read every second, not held for the whole 20 s


def test_a_stale_pending_document_in_redis_never_hides_the_final_row(client, settings, db_sessions):
    task_id = _add_pending(db_sessions)
    doc = _store_success(settings, db_sessions, task_id, cache=False)
    # What an older release cached, or anything else that is not final: it must not be believed.
    redis.Redis.from_url(settings.redis_url).set(status_key(task_id), json.dumps({**doc, "state": "PENDING"}))

    assert client.get(f"/tasks/{task_id}").get_json()["state"] == "SUCCESS"
    assert client.get(f"/tasks/{task_id}?wait=10").get_json()["state"] == "SUCCESS"


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "abc", "-5", "1e309", "31"])
def test_a_bad_wait_is_refused_at_once(client, db_sessions, wait):
    task_id = _add_pending(db_sessions)
    started = time.monotonic()
    resp = client.get(f"/tasks/{task_id}?wait={wait}")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_wait"
    assert time.monotonic() - started < 1
    assert client.get(f"/tasks?ids={task_id}&wait={wait}").status_code == 400


class _BreaksOnce(redis.Redis):
    """A real Redis client whose first pub/sub connection fails with an error that is not Redis' own."""

    broken = False

    def pubsub(self, **kwargs):
        if not _BreaksOnce.broken:
            _BreaksOnce.broken = True
            raise ValueError("a bug in the listener, say")
        return super().pubsub(**kwargs)


def test_the_result_listener_restarts_after_any_error(settings, db_sessions, caplog):
    waiter = ResultWaiter(_BreaksOnce.from_url(settings.redis_url), max_waiting=1)
    task_id = _add_pending(db_sessions)

    with waiter.subscription(task_id) as finished:
        for _ in range(100):  # bounded: until the restarted listener hears the result
            _store_success(settings, db_sessions, task_id)
            if finished.wait(0.1):
                break

    assert _BreaksOnce.broken and finished.docs[task_id]["state"] == "SUCCESS"
    assert "result listener failed; restarting it" in caplog.text


# --- one-request mode: POST /predict?wait=S ---------------------------------------------------------------


def _work_off_one_message(settings, db_engine) -> dict[str, dict]:
    """What a worker does with the next message on the queue: claim, finish, cache and publish; the documents."""
    r = redis.Redis.from_url(settings.redis_url)
    popped = r.brpop([settings.queue_name], timeout=20)
    assert popped is not None, "nothing was queued"
    arg = json.loads(base64.b64decode(json.loads(popped[1])["body"]))[0][0]
    ids = arg if isinstance(arg, list) else [arg]
    with db_engine.begin() as conn:
        claim = predictions.claim(conn, ids, 0, "test-worker", 60)
    result = {"state": "SUCCESS", "digit": 4, "confidence": 0.9, "probabilities": [0.01] * 4 + [0.9] + [0.01] * 5,
              "inference_ms": 0.1, "preprocess_ms": 0.1, "model_version": "test", "error": None}
    with db_engine.begin() as conn:
        docs = predictions.finish(conn, claim, dict.fromkeys(ids, result))
    cache_final(r, docs.values(), settings.result_ttl_seconds)
    return docs


def _upload_in_thread(client, url: str, count: int, mnist) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    files = [(io.BytesIO(png_bytes(mnist.x_test[i])), f"{i}.png") for i in range(count)]

    def upload() -> None:
        resp = client.post(url, data={"file": files}, content_type="multipart/form-data")
        answer["status"], answer["body"] = resp.status_code, resp.get_json()

    uploader = threading.Thread(target=upload)
    uploader.start()
    return uploader, answer


def test_predict_with_wait_answers_the_final_document_in_one_request(client, settings, db_engine, mnist):
    accepted = UPLOADS.labels(outcome="accepted")._value.get()
    uploader, answer = _upload_in_thread(client, "/predict?wait=20", 1, mnist)
    docs = _work_off_one_message(settings, db_engine)
    uploader.join(30)

    assert answer["status"] == 200
    assert answer["body"] == next(iter(docs.values())) and answer["body"]["state"] == "SUCCESS"
    # The same document any later status read gives.
    assert client.get(f"/tasks/{answer['body']['task_id']}").get_json() == answer["body"]
    assert UPLOADS.labels(outcome="accepted")._value.get() == accepted + 1  # counted though answered 200


def test_predict_with_wait_for_several_files_answers_once_all_are_final(client, settings, db_engine, mnist):
    uploader, answer = _upload_in_thread(client, "/predict?wait=20", 3, mnist)
    docs = _work_off_one_message(settings, db_engine)
    uploader.join(30)

    assert answer["status"] == 200
    assert [d["task_id"] for d in answer["body"]["tasks"]] == list(docs)
    assert {d["state"] for d in answer["body"]["tasks"]} == {"SUCCESS"}


def test_predict_with_wait_falls_back_to_202_when_no_answer_comes_in_time(client, settings, db_sessions, mnist):
    uploader, answer = _upload_in_thread(client, "/predict?wait=0.3", 1, mnist)
    uploader.join(20)

    assert answer["status"] == 202
    task_id = answer["body"]["task_id"]
    assert answer["body"]["status_url"] == f"/tasks/{task_id}"
    assert client.get(f"/tasks/{task_id}").get_json()["state"] == "PENDING"


@pytest.mark.parametrize("wait", ["nan", "-1", "31", "soon"])
def test_predict_with_a_bad_wait_is_refused_before_anything_is_accepted(client, settings, db_sessions, mnist, wait):
    uploader, answer = _upload_in_thread(client, f"/predict?wait={wait}", 1, mnist)
    uploader.join(20)

    assert answer["status"] == 400 and answer["body"]["error"]["code"] == "bad_wait"
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []
    assert redis.Redis.from_url(settings.redis_url).llen(settings.queue_name) == 0
