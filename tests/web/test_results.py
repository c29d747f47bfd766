"""Long polls: woken by the result's publication in Redis (real Redis)."""

from __future__ import annotations

import hashlib
import threading
import uuid

import redis
from sqlalchemy import select

from shared.queue import store_statuses
from shared.schema import Prediction, State, utcnow
from web import create_app
from web.results import ResultWaiter


def _store_success(settings, db_sessions, task_id: str) -> dict:
    """What a worker does at the end of a task: the row, then the result in Redis (which publishes it)."""
    with db_sessions() as s, s.begin():
        row = s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()
        row.state, row.digit, row.confidence, row.finished_at = State.SUCCESS.value, 4, 0.9, utcnow()
        row.probabilities = [0.01] * 4 + [0.9] + [0.01] * 5
        doc = row.status_document()
    store_statuses(redis.Redis.from_url(settings.redis_url), [doc], settings.result_ttl_seconds)
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

        assert finished.is_set()
        assert not unrelated.is_set()


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
    with app.extensions["digits"]["results"].slot() as held:  # another request holds the only slot
        assert held
        poller, answer = _poll_in_thread(app.test_client(), f"/tasks/{task_id}?wait=30")
        poller.join(20)  # far less than the 30 s it would have waited with a slot
        assert not poller.is_alive()
    assert answer == {"status": 200, "body": answer["body"]} and answer["body"]["state"] == "PENDING"
