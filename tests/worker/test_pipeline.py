"""The worker's batch pipeline with the real model and the real database."""

from __future__ import annotations

import hashlib
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from shared import predictions, preprocessing
from shared.db import make_engine, make_session_factory
from shared.deskew import deskew
from shared.migrate import upgrade
from shared.schema import Prediction, State, utcnow
from tests.helpers import eventually, png_bytes
from worker.leases import Leases
from worker.model import load_predictor
from worker.pipeline import Pipeline


@pytest.fixture(scope="module")
def predictor(trained_model):
    """The trained seed model, loaded once for the module."""
    return load_predictor(trained_model)


def _add(sessions, data: bytes, task_id: str, **values) -> None:
    with sessions() as s, s.begin():
        s.add(Prediction(**{"state": State.PENDING.value, **values}, task_id=task_id, image=data, queue="test",
                         image_sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)))


def _pipeline(sessions, predictor, preprocess=preprocessing.preprocess, published: list | None = None) -> Pipeline:
    engine = sessions.kw["bind"]
    return Pipeline(engine=engine, model=predictor, worker_name="test-worker", preprocess=preprocess,
                    leases=Leases(engine, 60), max_attempts=3,
                    publish=(published if published is not None else []).extend)


def _run(ids, sessions, predictor):
    return _pipeline(sessions, predictor).run(ids)


def test_batch_predicts_and_stores_every_row(db_sessions, predictor, mnist):
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(8)]
    for i, task_id in enumerate(ids):
        _add(db_sessions, png_bytes(mnist.x_test[i]), task_id)

    docs = _run(ids, db_sessions, predictor)

    assert list(docs) == ids
    assert [d["digit"] for d in docs.values()] == [int(y) for y in mnist.y_test[:8]]
    with db_sessions() as s:
        rows = {r.task_id: r for r in s.scalars(select(Prediction))}
    for task_id, doc in docs.items():
        row = rows[task_id]
        assert row.state == State.SUCCESS
        assert doc == row.status_document()
        assert len(row.probabilities) == 10 and abs(sum(row.probabilities) - 1) < 1e-3
        assert row.confidence == pytest.approx(max(row.probabilities), abs=1e-5)
        assert (row.model_name, row.model_version) == (predictor.name, predictor.version) == (
            "seed-cnn", predictor.version)
        assert row.worker == "test-worker"
        assert row.started_at <= row.finished_at


def test_redelivered_task_keeps_its_first_answer_and_one_row(db_sessions, predictor, mnist):
    task_id = "00000000-0000-4000-8000-000000000100"
    _add(db_sessions, png_bytes(mnist.x_test[0]), task_id)

    first = _run([task_id], db_sessions, predictor)[task_id]
    second = _run([task_id], db_sessions, predictor)[task_id]

    assert first == second
    with db_sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.task_id == task_id)) == 1


def test_poison_and_blank_images_fail_with_a_reason_without_blocking_the_batch(db_sessions, predictor, mnist):
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, format="PNG")
    ids = {"ok": "00000000-0000-4000-8000-000000000201", "blank": "00000000-0000-4000-8000-000000000202",
           "poison": "00000000-0000-4000-8000-000000000203"}
    _add(db_sessions, png_bytes(mnist.x_test[0]), ids["ok"])
    _add(db_sessions, blank.getvalue(), ids["blank"])
    _add(db_sessions, b"\x89PNG\r\n\x1a\n garbage", ids["poison"])

    docs = _run(list(ids.values()), db_sessions, predictor)

    assert docs[ids["ok"]]["state"] == "SUCCESS"
    assert docs[ids["blank"]]["state"] == "FAILURE"
    assert "digit" in docs[ids["blank"]]["error"].lower()
    assert docs[ids["poison"]]["state"] == "FAILURE"
    assert docs[ids["poison"]]["error"]


def test_unknown_task_id_is_reported_not_raised(db_sessions, predictor):
    docs = _run(["00000000-0000-4000-8000-000000000999"], db_sessions, predictor)
    assert docs["00000000-0000-4000-8000-000000000999"]["state"] == "FAILURE"


def test_the_workers_batched_call_matches_keras_predict(predictor, mnist, trained_model):
    import keras

    batch = mnist.x_test[:64].astype(np.float32) / 255
    fast = predictor.predict(batch)
    assert predictor.deskew  # the training command trains on deskewed digits, and says so in the metadata
    slow = keras.models.load_model(trained_model, compile=False).predict(deskew(batch)[..., None], verbose=0)
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_on_sqlite_too_a_redelivered_task_keeps_its_first_answer(tmp_path, predictor, mnist):
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    upgrade(url)
    sessions = make_session_factory(make_engine(url))
    task_id = "00000000-0000-4000-8000-000000000300"
    _add(sessions, png_bytes(mnist.x_test[0]), task_id)

    first = _run([task_id], sessions, predictor)[task_id]
    with sessions() as s, s.begin():  # as if another delivery had finished in between
        s.execute(update(Prediction).where(Prediction.task_id == task_id).values(digit=9))
    second = _run([task_id], sessions, predictor)[task_id]

    assert first["state"] == "SUCCESS"
    assert second["digit"] == 9  # the stored answer wins; nothing is written twice


def test_a_batch_racing_another_delivery_reports_the_stored_answer(db_sessions, predictor, mnist):
    ids = ["00000000-0000-4000-8000-000000000401", "00000000-0000-4000-8000-000000000402"]
    for i, task_id in enumerate(ids):
        _add(db_sessions, png_bytes(mnist.x_test[i]), task_id)

    def preprocess_then_race(data: bytes):
        # While this batch works (stalled past its lease, say), recovery gave the first task to another
        # worker, which claimed and finished it.
        with db_sessions() as s, s.begin():
            s.execute(update(Prediction).where(Prediction.task_id == ids[0], Prediction.state == "STARTED")
                      .values(state="SUCCESS", digit=5, confidence=1.0, claim_token="another-claim"))
        return preprocessing.preprocess(data)

    docs = _pipeline(db_sessions, predictor, preprocess_then_race).run(ids)

    assert docs[ids[0]]["digit"] == 5  # the other delivery's answer, as stored
    assert docs[ids[1]]["state"] == "SUCCESS" and docs[ids[1]]["digit"] == int(mnist.y_test[1])
    with db_sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.task_id.in_(ids))) == 2


def _row(sessions, task_id: str) -> Prediction:
    with sessions() as s:
        return s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()


def test_a_claim_counts_one_delivery_and_the_answer_is_published(db_sessions, predictor, mnist):
    task_id = "00000000-0000-4000-8000-000000000501"
    _add(db_sessions, png_bytes(mnist.x_test[0]), task_id)
    published: list = []

    doc = _pipeline(db_sessions, predictor, published=published).run([task_id])[task_id]

    assert _row(db_sessions, task_id).deliveries == 1
    assert published == [doc] and doc["state"] == "SUCCESS"


def test_an_upload_another_worker_holds_under_a_live_lease_is_left_to_it(db_sessions, predictor, mnist):
    task_id = "00000000-0000-4000-8000-000000000502"
    _add(db_sessions, png_bytes(mnist.x_test[0]), task_id, state="STARTED", deliveries=1, claim_token="theirs",
         lease_expires_at=utcnow() + timedelta(seconds=60))

    doc = _run([task_id], db_sessions, predictor)[task_id]

    assert doc["state"] == "STARTED"
    row = _row(db_sessions, task_id)
    assert (row.deliveries, row.claim_token) == (1, "theirs")


def test_an_upload_whose_lease_ran_out_is_claimed_again(db_sessions, predictor, mnist):
    task_id = "00000000-0000-4000-8000-000000000503"
    _add(db_sessions, png_bytes(mnist.x_test[3]), task_id, state="STARTED", deliveries=1, claim_token="dead",
         lease_expires_at=utcnow() - timedelta(seconds=1))

    doc = _run([task_id], db_sessions, predictor)[task_id]

    assert doc["state"] == "SUCCESS" and doc["digit"] == int(mnist.y_test[3])
    assert _row(db_sessions, task_id).deliveries == 2


def test_an_upload_out_of_deliveries_ends_as_poison_without_being_tried(db_sessions, predictor, mnist):
    task_id = "00000000-0000-4000-8000-000000000504"
    _add(db_sessions, png_bytes(mnist.x_test[0]), task_id, deliveries=3)  # max_attempts=3 workers died on it
    tried: list = []

    doc = _pipeline(db_sessions, predictor, lambda data: tried.append(data)).run([task_id])[task_id]

    assert tried == []
    assert doc["state"] == "FAILURE" and "3 workers started this image and died" in doc["error"]


def test_uploads_that_killed_a_worker_before_are_tried_alone_after_the_fresh_ones_are_stored(
        db_sessions, predictor, mnist):
    fresh = ["00000000-0000-4000-8000-000000000601", "00000000-0000-4000-8000-000000000602"]
    retried = ["00000000-0000-4000-8000-000000000603", "00000000-0000-4000-8000-000000000604"]
    for i, task_id in enumerate(fresh + retried):
        _add(db_sessions, png_bytes(mnist.x_test[i]), task_id, deliveries=1 if task_id in retried else 0)
    seen: list[dict] = []

    def preprocess_and_look(data: bytes):
        with db_sessions() as s:
            seen.append(dict(s.execute(select(Prediction.task_id, Prediction.state)
                                       .where(Prediction.task_id.in_(fresh + retried))).all()))
        return preprocessing.preprocess(data)

    docs = _pipeline(db_sessions, predictor, preprocess_and_look).run(fresh + retried)

    assert all(d["state"] == "SUCCESS" for d in docs.values())
    # The first two calls are the fresh batch; each retried upload is claimed alone, after them.
    assert [states[fresh[0]] for states in seen] == ["STARTED", "STARTED", "SUCCESS", "SUCCESS"]
    assert [states[retried[1]] for states in seen[2:]] == ["PENDING", "STARTED"]


def test_a_retry_waits_until_no_other_group_is_in_flight_in_the_process(db_sessions, predictor, mnist):
    # Two batch runners share a process: a retried upload that kills it again must not take a fresh group along.
    fresh, retried = "00000000-0000-4000-8000-000000000701", "00000000-0000-4000-8000-000000000702"
    images = {fresh: png_bytes(mnist.x_test[0]), retried: png_bytes(mnist.x_test[1])}
    for task_id, data in images.items():
        _add(db_sessions, data, task_id, deliveries=1 if task_id == retried else 0)
    names = {data: task_id for task_id, data in images.items()}
    started: list[str] = []
    release = threading.Event()

    def preprocess_slowly(data: bytes):
        started.append(names[data])
        if names[data] == fresh:
            release.wait(10)
        return preprocessing.preprocess(data)

    pipeline = _pipeline(db_sessions, predictor, preprocess_slowly)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(pipeline.run, [fresh])
        assert eventually(lambda: started == [fresh])
        second = pool.submit(pipeline.run, [retried])
        assert eventually(lambda: pipeline.isolation.waiting_alone == 1)
        assert started == [fresh]  # the retry has not begun while the fresh group is in flight
        release.set()
        docs = first.result(10) | second.result(10)

    assert started == [fresh, retried]
    assert [docs[t]["state"] for t in (fresh, retried)] == ["SUCCESS", "SUCCESS"]


def test_a_held_claim_is_renewed_but_not_forever(db_sessions, monkeypatch):
    task_id = "00000000-0000-4000-8000-000000000701"
    _add(db_sessions, b"x", task_id)
    engine = db_sessions.kw["bind"]
    leases = Leases(engine, 60)
    with engine.begin() as conn:
        claim = predictions.claim(conn, [task_id], 0, "test-worker", lease_seconds=1)
    first = _row(db_sessions, task_id).lease_expires_at

    with leases.holding(claim):
        leases.renew_now()
        renewed = _row(db_sessions, task_id).lease_expires_at
        monkeypatch.setattr("worker.leases.MAX_HOLD_LEASES", 0)  # as if held past every reasonable batch
        leases.renew_now()
        hung = _row(db_sessions, task_id).lease_expires_at

    assert renewed > first + timedelta(seconds=30)
    assert hung == renewed  # a hung batch stops renewing: its lease runs out and recovery takes over


class _Held:
    """A model whose call waits until released: a batch in flight while a rollout swaps the model."""

    def __init__(self, inner, version: str) -> None:
        self.inner, self.name, self.version = inner, inner.name, version
        self.called, self.release = threading.Event(), threading.Event()

    def predict(self, batch):
        self.called.set()
        assert self.release.wait(30)
        return self.inner.predict(batch)


def test_a_batch_in_flight_when_the_model_is_swapped_finishes_on_its_own_model(db_sessions, predictor, mnist):
    first, second = "00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2"
    _add(db_sessions, png_bytes(mnist.x_test[0]), first)
    _add(db_sessions, png_bytes(mnist.x_test[1]), second)
    old, new = _Held(predictor, "old-version"), _Held(predictor, "new-version")
    new.release.set()
    pipeline = _pipeline(db_sessions, old)

    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(pipeline.run, [first])
        assert old.called.wait(30)
        pipeline.model = new  # what WorkerRuntime.swap_model does between the model call and the write
        old.release.set()
        assert in_flight.result(timeout=30)[first]["model_version"] == "old-version"
    assert pipeline.run([second])[second]["model_version"] == "new-version"
    with db_sessions() as s:
        stored = dict(s.execute(select(Prediction.task_id, Prediction.model_version)
                                .where(Prediction.task_id.in_([first, second]))).all())
    assert stored == {first: "old-version", second: "new-version"}
