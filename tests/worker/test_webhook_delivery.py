"""The worker's webhook sender (worker/webhooks.py) on the real database, to a real HTTP receiver on loopback.

Uploads are recorded, claimed and finished through shared/predictions.py as the pipeline would (or by the pipeline
itself), which schedules their deliveries; a Deliverer then sends them. For speed the tests shorten what the
Deliverer takes as parameters (the lease it holds deliveries under, the send timeout) and the settings' back-off
base; the production values are LEASE_SECONDS (60 s), 5 s and WEBHOOK_RETRY_BASE_SECONDS.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select
from standardwebhooks.webhooks import Webhook

from shared import deliveries, predictions, preprocessing
from shared.config import Settings
from shared.schema import WebhookDelivery, utcnow
from tests.helpers import eventually, png_bytes
from worker import webhooks
from worker.leases import Leases
from worker.model import load_predictor
from worker.pipeline import Pipeline
from worker.webhooks import Deliverer, make_deliverer

log = logging.getLogger(__name__)
QUEUE = "test-webhooks"


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    wall: datetime = field(default_factory=utcnow)  # UTC, as the database's times


Answer = Callable[[BaseHTTPRequestHandler], None]


def status(code: int, **headers: str) -> Answer:
    """An answer with this status (and headers), and a short body."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")
    return answer


class Receiver:
    """A webhook receiver on 127.0.0.1 in threads: records every request, answers from a script (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Answer] = []
        self.release = threading.Event()  # what a held request waits for
        self.held = threading.Event()  # set when a held request has arrived
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                    answer = receiver.script.pop(0) if receiver.script else status(200)
                answer(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
                log.debug(format, *args)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def hold(self, handler: BaseHTTPRequestHandler) -> None:
        """An answer that keeps the request open until `release` is set, then answers 200."""
        self.held.set()
        self.release.wait(60)
        with contextlib.suppress(OSError):  # the sender may have given up (timed out) meanwhile
            status(200)(handler)

    def to(self, path: str) -> list[Received]:
        """The requests to this path."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        """Let held requests go and stop serving."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver for one test."""
    receiver = Receiver()
    yield receiver
    receiver.close()


SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Settings that allow the loopback receiver, with a short back-off."""
    return settings.model_copy(update={"webhook_secret": SECRET, "webhook_allowed_hosts": "127.0.0.1",
                                       "webhook_retry_base_seconds": 0.05, "webhook_senders": 2})


@pytest.fixture
def engine(db_engine):
    """The test database with no deliveries left from earlier tests (a sender would take them)."""
    with db_engine.begin() as conn:
        conn.execute(delete(WebhookDelivery))
    return db_engine


@pytest.fixture
def deliverers(engine) -> Iterator[Callable[..., Deliverer]]:
    """Start Deliverers on the test database; stopped after the test."""
    started: list[Deliverer] = []

    def start(settings: Settings, **kwargs: Any) -> Deliverer:
        deliverer = Deliverer(engine, settings, **kwargs)
        deliverer.start()
        started.append(deliverer)
        return deliverer

    yield start
    for deliverer in started:
        deliverer.stop(timeout=2)


RESULT = {"state": "SUCCESS", "digit": 7, "confidence": 0.93, "probabilities": [0.007] * 9 + [0.93],
          "inference_ms": 0.1, "preprocess_ms": 0.2, "model_name": "seed-cnn", "model_version": "test",
          "error": None}


def record_upload(engine, url: str, events: str = "completed", data: bytes = b"\x89PNG fake") -> str:
    """Record an upload that asks for a webhook, as the web would; its task id."""
    upload = predictions.NewUpload(data=data, filename="d.png", content_type="image/png", width=28, height=28,
                                   webhook_url=url, webhook_events=events)
    with engine.begin() as conn:
        predictions.record(conn, [upload], QUEUE)
    return upload.task_id


def claim(engine, task_id: str) -> predictions.Claim:
    """Claim it as a worker would (which schedules a `start` event if asked for)."""
    with engine.begin() as conn:
        return predictions.claim(conn, [task_id], 0, "test-worker", 60)


def finish(engine, held: predictions.Claim) -> None:
    """Finish it with a made-up answer (which schedules the `completed` event)."""
    with engine.begin() as conn:
        predictions.finish(conn, held, {task_id: RESULT for task_id in held.images})


def completed_upload(engine, url: str, events: str = "completed") -> str:
    """An upload claimed and finished, its events scheduled; its task id."""
    task_id = record_upload(engine, url, events)
    finish(engine, claim(engine, task_id))
    return task_id


def document(engine, task_id: str) -> dict[str, Any]:
    """The upload's status document as the API shows it (from MySQL)."""
    with engine.begin() as conn:
        return predictions.stored_documents(conn, [task_id])[task_id]


def delivery(engine, task_id: str, event: str = "completed") -> WebhookDelivery:
    """The delivery row of one event."""
    with engine.begin() as conn:
        return conn.execute(select(WebhookDelivery).where(WebhookDelivery.task_id == task_id,
                                                          WebhookDelivery.event == event)).one()


def hook_state(engine, task_id: str, state: str) -> Callable[[], bool]:
    """A condition: the upload's `completed` delivery is in this state."""
    return lambda: (document(engine, task_id)["webhook"] or {}).get("state") == state


def attempts_counted(outcome: str) -> float:
    """digits_webhook_attempts_total{outcome} in this process."""
    return REGISTRY.get_sample_value("digits_webhook_attempts_total", {"outcome": outcome}) or 0.0


def test_the_final_document_is_posted_signed_per_standard_webhooks(engine, hook_settings, receiver, deliverers):
    task_id = completed_upload(engine, receiver.url)
    finished = time.monotonic()
    deliverers(hook_settings)

    assert eventually(hook_state(engine, task_id, "DELIVERED"))
    [got] = receiver.to("/hook")
    print(f"\n    finish to receipt: {(got.at - finished) * 1000:.0f} ms")  # noqa: T201 - reported, not asserted
    body = Webhook(SECRET).verify(got.body, got.headers)  # raises unless the signature is right
    final = document(engine, task_id)
    assert body == {"type": "prediction.completed", "data": {k: v for k, v in final.items() if k != "webhook"}}
    assert body["data"]["state"] == "SUCCESS" and body["data"]["digit"] == 7
    assert got.headers["webhook-id"] == deliveries.message_id(task_id, "completed")
    assert got.headers["Content-Type"] == "application/json"
    assert final["webhook"] == {"url": receiver.url, "events": ["completed"], "state": "DELIVERED", "attempts": 1,
                                "last_status": 200, "delivered": True}


def test_a_receiver_failing_twice_gets_exactly_three_attempts_under_one_id(
        engine, hook_settings, receiver, deliverers):
    receiver.script = [status(500), status(500)]
    before = {outcome: attempts_counted(outcome) for outcome in ("retry", "delivered", "gave_up")}
    task_id = completed_upload(engine, receiver.url)
    deliverer = deliverers(hook_settings)

    assert eventually(hook_state(engine, task_id, "DELIVERED"))
    assert deliverer.wait_idle(5)
    got = receiver.to("/hook")
    print(f"\n    3 attempts over {(got[-1].at - got[0].at) * 1000:.0f} ms (base 0.05 s)")  # noqa: T201
    assert len(got) == 3
    assert {r.headers["webhook-id"] for r in got} == {deliveries.message_id(task_id, "completed")}
    for request in got:
        Webhook(SECRET).verify(request.body, request.headers)
    assert document(engine, task_id)["webhook"] | {"url": None} == {
        "url": None, "events": ["completed"], "state": "DELIVERED", "attempts": 3, "last_status": 200,
        "delivered": True}
    after = {outcome: attempts_counted(outcome) for outcome in before}
    assert {k: after[k] - before[k] for k in before} == {"retry": 2, "delivered": 1, "gave_up": 0}


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(engine, hook_settings, receiver, deliverers):
    receiver.script = [status(302, Location="/elsewhere"), status(302, Location="/elsewhere")]
    task_id = completed_upload(engine, receiver.url)
    deliverer = deliverers(hook_settings.model_copy(update={"webhook_max_attempts": 2}))

    assert eventually(hook_state(engine, task_id, "FAILED"))
    assert deliverer.wait_idle(5)
    assert len(receiver.to("/hook")) == 2 and receiver.to("/elsewhere") == []
    assert document(engine, task_id)["webhook"] | {"url": None} == {
        "url": None, "events": ["completed"], "state": "FAILED", "attempts": 2, "last_status": 302,
        "delivered": False}
    assert "redirect" in (delivery(engine, task_id).last_error or "")


def test_a_target_refused_at_send_time_is_a_failed_attempt(engine, hook_settings, receiver, deliverers):
    # As if DNS now pointed the host at a private address: the sender's own check refuses it, nothing is sent.
    task_id = completed_upload(engine, receiver.url)
    deliverers(hook_settings.model_copy(update={"webhook_allowed_hosts": "", "webhook_max_attempts": 1}))

    assert eventually(hook_state(engine, task_id, "FAILED"))
    row = delivery(engine, task_id)
    assert (row.attempts, row.last_status, receiver.requests) == (1, None, [])
    assert "WEBHOOK_ALLOWED_HOSTS" in (row.last_error or "")


@pytest.mark.parametrize(("check_seconds", "checks"), [(60.0, 1), (0.0, 3)])
def test_a_target_is_checked_again_once_its_check_is_older_than_check_seconds(
        engine, hook_settings, receiver, deliverers, monkeypatch, check_seconds, checks):
    made: list[str] = []
    check_target = webhooks.check_target

    def counted_check(url: str, allowed: frozenset[str]) -> Any:
        made.append(url)
        return check_target(url, allowed)

    monkeypatch.setattr(webhooks, "check_target", counted_check)
    monkeypatch.setattr(webhooks, "CHECK_SECONDS", check_seconds)
    task_ids = [completed_upload(engine, receiver.url) for _ in range(3)]
    deliverers(hook_settings.model_copy(update={"webhook_senders": 1}))

    assert eventually(lambda: all(hook_state(engine, t, "DELIVERED")() for t in task_ids))
    assert made == [receiver.url] * checks


def test_attempts_whose_record_failed_give_their_room_back_and_are_sent_again_after_their_hold(
        engine, hook_settings, receiver, deliverers, monkeypatch):
    record_many = deliveries.record_many
    failures = [RuntimeError("MySQL went away")]

    def failing_once(conn: Any, outcomes: Any) -> list[bool]:
        if failures:
            raise failures.pop()
        return record_many(conn, outcomes)

    monkeypatch.setattr(deliveries, "record_many", failing_once)
    task_id = completed_upload(engine, receiver.url)
    deliverer = deliverers(hook_settings, lease_seconds=2.0, timeout=1.0, poll_seconds=0.1)

    assert eventually(hook_state(engine, task_id, "DELIVERED"))
    assert deliverer.wait_idle(5) and not failures
    first, again = receiver.to("/hook")  # sent, not recorded; sent again once the hold ran out
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert again.at - first.at >= 1.5


def test_a_receiver_that_never_answers_times_out_as_a_failed_attempt(engine, hook_settings, receiver, deliverers):
    receiver.script = [receiver.hold]  # answers only when the test ends
    task_id = completed_upload(engine, receiver.url)
    # The send timeout is 5 s in production; a Deliverer parameter shortens it here.
    deliverers(hook_settings.model_copy(update={"webhook_max_attempts": 1}), timeout=0.5)

    assert eventually(hook_state(engine, task_id, "FAILED"))
    row = delivery(engine, task_id)
    assert (row.attempts, row.last_status, row.last_error) == (1, None, "timed out after 0.5 s")
    assert receiver.held.is_set() and not receiver.release.is_set()


@pytest.fixture(scope="module")
def predictor(trained_model):
    """The trained seed model, loaded once for the module."""
    return load_predictor(trained_model)


def pipeline_for(engine, predictor, deliverer: Deliverer) -> Pipeline:
    """A worker process's pipeline whose webhook sender is this Deliverer."""
    return Pipeline(engine=engine, model=predictor, worker_name="test-worker", preprocess=preprocessing.preprocess,
                    leases=Leases(engine, 60), max_attempts=3, publish=lambda docs: None, webhooks=deliverer)


def test_a_hung_receiver_holds_no_prediction_batch(engine, hook_settings, receiver, deliverers, predictor, mnist):
    receiver.script = [receiver.hold]
    # One sender that never polls by itself: the pipeline hands it each batch's events.
    deliverer = deliverers(hook_settings.model_copy(update={"webhook_senders": 1}), poll_seconds=3600)
    pipeline = pipeline_for(engine, predictor, deliverer)
    first = record_upload(engine, receiver.url, data=png_bytes(mnist.x_test[0]))
    pipeline.run([first])
    assert receiver.held.wait(10)  # its delivery is in flight, and stays so

    second = record_upload(engine, receiver.url, data=png_bytes(mnist.x_test[1]))
    doc = pipeline.run([second])[second]

    # The batch finished (its delivery scheduled) while the only sender hangs on the first receiver.
    assert doc["state"] == "SUCCESS" and doc["digit"] == int(mnist.y_test[1])
    assert not receiver.release.is_set() and len(receiver.requests) == 1
    assert (delivery(engine, first).attempts, delivery(engine, second).attempts) == (0, 0)
    receiver.release.set()
    assert eventually(lambda: all(hook_state(engine, t, "DELIVERED")() for t in (first, second)))
    assert [json.loads(r.body)["data"]["task_id"] for r in receiver.requests] == [first, second]


def test_a_batchs_completed_webhooks_go_to_its_processs_sender_without_a_take(
        engine, hook_settings, receiver, deliverers, predictor, mnist, monkeypatch):
    taken: list[int] = []
    take_due = deliveries.take_due

    def counted_take(*args: Any, **kwargs: Any) -> list[deliveries.Due]:
        found = take_due(*args, **kwargs)
        taken.append(len(found))
        return found

    monkeypatch.setattr(deliveries, "take_due", counted_take)
    deliverer = deliverers(hook_settings, poll_seconds=3600)
    task_ids = [record_upload(engine, receiver.url, data=png_bytes(mnist.x_test[i])) for i in range(3)]

    docs = pipeline_for(engine, predictor, deliverer).run(task_ids)

    assert all(doc["state"] == "SUCCESS" for doc in docs.values())
    assert eventually(lambda: all(hook_state(engine, t, "DELIVERED")() for t in task_ids))
    assert sorted(json.loads(r.body)["data"]["task_id"] for r in receiver.requests) == sorted(task_ids)
    assert sum(taken) == 0  # held as the batch's transaction scheduled them: no take, no second read
    assert deliverer.wait_idle(5)


def test_events_beyond_the_senders_room_wait_for_a_take(engine, hook_settings, receiver, deliverers, predictor,
                                                        mnist):
    deliverer = deliverers(hook_settings.model_copy(update={"webhook_senders": 1}), poll_seconds=3600)
    full = deliverer.reserve(1000)  # every sender's room taken (as by a slow receiver's deliveries)
    assert full is not None and deliverer.reserve(1) is None
    task_id = record_upload(engine, receiver.url, data=png_bytes(mnist.x_test[0]))

    assert pipeline_for(engine, predictor, deliverer).run([task_id])[task_id]["state"] == "SUCCESS"

    assert delivery(engine, task_id).lease_token is None  # scheduled, held by nobody
    deliverer.hand(full, committed=False)  # the room comes back: the poller takes what waits
    assert eventually(hook_state(engine, task_id, "DELIVERED"))


def test_a_hold_whose_transaction_rolled_back_sends_nothing_and_gives_its_room_back(
        engine, hook_settings, receiver, deliverers):
    deliverer = deliverers(hook_settings, poll_seconds=3600)
    hold = deliverer.reserve(2)
    assert hold is not None and hold.room == 2
    with contextlib.suppress(RuntimeError), engine.begin() as conn:
        deliveries.schedule(conn, [deliveries.Event("00000000-0000-4000-8000-000000000001", "completed",
                                                    receiver.url, {"task_id": "x"})], hold)
        raise RuntimeError("the batch's transaction failed")
    assert len(hold.held) == 1

    deliverer.hand(hold, committed=False)

    assert deliverer.wait_idle(0) and receiver.requests == []
    with engine.begin() as conn:
        assert conn.execute(select(WebhookDelivery)).all() == []


def test_the_start_event_is_delivered_when_asked_for(engine, hook_settings, receiver, deliverers):
    deliverers(hook_settings)
    task_id = record_upload(engine, receiver.url, events="start,completed")
    held = claim(engine, task_id)
    assert eventually(lambda: len(receiver.requests) == 1)
    finish(engine, held)
    assert eventually(hook_state(engine, task_id, "DELIVERED"))

    start, completed = (Webhook(SECRET).verify(r.body, r.headers) for r in receiver.requests)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [
        deliveries.message_id(task_id, "start"), deliveries.message_id(task_id, "completed")]
    assert start["type"] == "prediction.start" and start["data"]["state"] == "STARTED"
    assert completed["type"] == "prediction.completed" and completed["data"]["state"] == "SUCCESS"
    assert delivery(engine, task_id, "start").state == "DELIVERED"


def test_a_delivery_held_by_a_dead_sender_is_taken_over_when_its_hold_runs_out(
        engine, hook_settings, receiver, deliverers):
    task_id = completed_upload(engine, receiver.url)
    with engine.begin() as conn:  # a sender took it, then died before it recorded anything
        [dead] = deliveries.take_due(conn, 10, lease_seconds=1.0)
    held_until = delivery(engine, task_id).lease_expires_at
    # Production holds for LEASE_SECONDS (60 s); short holds here, through take_due's and the Deliverer's parameter.
    deliverers(hook_settings, lease_seconds=2.0, timeout=1.0, poll_seconds=0.1)

    assert eventually(hook_state(engine, task_id, "DELIVERED"))
    [got] = receiver.to("/hook")
    assert got.wall >= held_until  # nobody sent it while the dead sender's hold lasted
    assert got.headers["webhook-id"] == deliveries.message_id(dead.task_id, "completed")
    with engine.begin() as conn:  # the dead sender's late record is fenced: it changes nothing
        assert not deliveries.record(conn, dead, 500, "HTTP 500", delivered=False, retry_in=1.0)
    assert document(engine, task_id)["webhook"] | {"url": None} == {
        "url": None, "events": ["completed"], "state": "DELIVERED", "attempts": 1, "last_status": 200,
        "delivered": True}


def test_a_deliverer_needs_a_valid_secret(engine, settings):
    with pytest.raises(ValueError):
        Deliverer(engine, settings)  # no WEBHOOK_SECRET
    with pytest.raises(ValueError):
        Deliverer(engine, settings.model_copy(update={"webhook_secret": "whsec_short"}))


def test_a_worker_without_a_secret_says_so_once_and_starts_no_sender(settings, caplog):
    caplog.set_level(logging.INFO, logger="worker.webhooks")
    before = set(threading.enumerate())
    assert make_deliverer(settings) is None
    assert [r.getMessage() for r in caplog.records] == ["WEBHOOK_SECRET is not set: this worker delivers no webhooks"]
    assert set(threading.enumerate()) - before == set()


def test_the_workers_sender_runs_on_threads_and_a_pool_of_its_own(engine, hook_settings, receiver):
    before = set(threading.enumerate())
    deliverer = make_deliverer(hook_settings)
    assert deliverer is not None and set(threading.enumerate()) == before  # nothing runs before start()
    deliverer.start()
    try:
        started = set(threading.enumerate()) - before
        assert {t.name for t in started} == {"webhook-poller", "webhook-sender-0", "webhook-sender-1"}
        task_id = completed_upload(engine, receiver.url)
        deliverer.scheduled()  # as the pipeline does after a finish that scheduled events nobody holds
        assert eventually(hook_state(engine, task_id, "DELIVERED"))
    finally:
        deliverer.stop()
    assert eventually(lambda: not any(t.is_alive() for t in started), timeout=5)
