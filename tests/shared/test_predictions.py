"""The lifecycle's owner (shared/predictions.py): every transition and fenced write on SQLite and MariaDB, then cancel,
deletion and webhooks' events on MariaDB."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from shared import deliveries, predictions, retention
from shared.db import make_engine
from shared.migrate import upgrade
from shared.predictions import NewUpload
from shared.schema import Prediction, State, WebhookDelivery

RESULT = {"state": State.SUCCESS.value, "digit": 7, "confidence": 0.9, "probabilities": [0.01] * 9 + [0.91],
          "model_name": "seed-cnn", "model_version": "v1", "error": None}
HOOK = "https://receiver.example/hook"


def _record(engine: Engine, owner: str = "a" * 64, webhook: str | None = None, events: str | None = None
            ) -> str:
    upload = NewUpload(data=b"png bytes", filename="seven.png", content_type="image/png", width=28, height=28,
                       owner=owner, webhook_url=webhook, webhook_events=events if webhook else None)
    with engine.begin() as conn:
        predictions.record(conn, [upload], "test")
    return upload.task_id


def _claim(engine: Engine, task_id: str) -> predictions.Claim:
    with engine.begin() as conn:
        return predictions.claim(conn, [task_id], 0, "test-worker", 60)


def _finish(engine: Engine, claim: predictions.Claim, task_id: str) -> dict[str, Any]:
    with engine.begin() as conn:
        return predictions.finish(conn, claim, {task_id: dict(RESULT)})[task_id]


def _row(engine: Engine, task_id: str) -> Prediction | None:
    with engine.connect() as conn:
        return conn.execute(select(Prediction.__table__).where(Prediction.task_id == task_id)).first()


def _deliveries(engine: Engine, task_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(WebhookDelivery.event, WebhookDelivery.payload)
                            .where(WebhookDelivery.task_id == task_id).order_by(WebhookDelivery.id))
        return [(r.event, r.payload) for r in rows]


def test_a_pending_upload_is_canceled_and_never_claimed(db_engine):
    task_id = _record(db_engine)
    with db_engine.begin() as conn:
        canceled = predictions.cancel(conn, task_id, "a" * 64)

    assert canceled is not None and canceled.changed
    assert canceled.document["state"] == State.CANCELED and canceled.document["finished_at"]
    assert not _claim(db_engine, task_id).images  # the queued message finds nothing to do
    assert _row(db_engine, task_id).state == State.CANCELED


def test_a_started_upload_is_canceled_and_its_workers_write_is_fenced(db_engine):
    task_id = _record(db_engine)
    claim = _claim(db_engine, task_id)
    with db_engine.begin() as conn:
        assert predictions.cancel(conn, task_id, None).changed  # an operator's cancel

    doc = _finish(db_engine, claim, task_id)

    assert doc["state"] == State.CANCELED and doc["digit"] is None  # what it publishes is what the row holds
    row = _row(db_engine, task_id)
    assert (row.state, row.digit, row.claim_token) == (State.CANCELED, None, None)


def test_cancel_answers_none_for_another_owner_and_unchanged_for_a_final_upload(db_engine):
    task_id = _record(db_engine)
    _finish(db_engine, _claim(db_engine, task_id), task_id)
    with db_engine.begin() as conn:
        assert predictions.cancel(conn, task_id, "b" * 64) is None
        assert predictions.cancel(conn, "00000000-0000-4000-8000-000000000000", None) is None
        final = predictions.cancel(conn, task_id, "a" * 64)
    assert final is not None and not final.changed and final.document["state"] == State.SUCCESS


def test_an_upload_deleted_while_claimed_stays_deleted_when_its_worker_finishes(db_engine):
    kept = _record(db_engine)
    task_id = _record(db_engine)
    claim = _claim(db_engine, task_id)
    with db_engine.begin() as conn:
        assert retention.delete_uploads(conn, [task_id], "a" * 64) == [task_id]

    with db_engine.begin() as conn:
        docs = predictions.finish(conn, claim, {task_id: dict(RESULT)})

    assert docs == {}  # nothing to publish: the upload is gone
    assert _row(db_engine, task_id) is None  # the upsert's insert path left no row behind
    assert _row(db_engine, kept) is not None
    with db_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction.__table__)) == 1


def test_delete_removes_only_the_owners_uploads_and_their_deliveries(db_engine):
    mine = _record(db_engine, webhook=HOOK)
    theirs = _record(db_engine, owner="b" * 64)
    _finish(db_engine, _claim(db_engine, mine), mine)
    assert _deliveries(db_engine, mine)
    with db_engine.begin() as conn:
        assert retention.delete_uploads(conn, [mine, theirs], "a" * 64) == [mine]
    assert _row(db_engine, mine) is None and _deliveries(db_engine, mine) == []
    assert _row(db_engine, theirs) is not None


def test_finishing_schedules_the_completed_event_with_the_final_document(db_engine):
    task_id = _record(db_engine, webhook=HOOK)
    doc = _finish(db_engine, _claim(db_engine, task_id), task_id)

    assert doc["webhook"] == {"url": HOOK, "events": ["completed"], "state": "PENDING", "attempts": 0,
                              "last_status": None, "delivered": False}
    [(event, payload)] = _deliveries(db_engine, task_id)
    assert event == "completed"
    assert deliveries.payload(doc, "completed") == payload
    with db_engine.connect() as conn:
        assert predictions.stored_documents(conn, [task_id])[task_id] == doc


def test_start_is_scheduled_at_claim_only_when_asked_for(db_engine):
    both = _record(db_engine, webhook=HOOK, events="start,completed")
    completed_only = _record(db_engine, webhook=HOOK)
    _claim(db_engine, both)
    _claim(db_engine, completed_only)
    assert [e for e, _ in _deliveries(db_engine, both)] == ["start"]
    assert _deliveries(db_engine, completed_only) == []


@pytest.mark.parametrize("how", ["cancel", "poison"])
def test_other_final_states_schedule_the_completed_event_too(db_engine, how):
    task_id = _record(db_engine, webhook=HOOK)
    with db_engine.begin() as conn:
        if how == "cancel":
            predictions.cancel(conn, task_id, None)
        else:
            predictions.fail_poison(conn, [predictions.Found(task_id, State.PENDING.value, 0, leased=False)])
    assert [e for e, _ in _deliveries(db_engine, task_id)] == ["completed"]


def test_no_event_is_scheduled_for_a_fenced_write(db_engine):
    task_id = _record(db_engine, webhook=HOOK)
    claim = _claim(db_engine, task_id)
    with db_engine.begin() as conn:
        predictions.cancel(conn, task_id, None)  # schedules its own completed event
    _finish(db_engine, claim, task_id)
    assert [e for e, _ in _deliveries(db_engine, task_id)] == ["completed"]  # one, the cancel's


def test_row_retention_waits_for_a_webhook_still_owed(db_engine):
    owed = _record(db_engine, webhook=HOOK)
    plain = _record(db_engine)
    for task_id in (owed, plain):
        _finish(db_engine, _claim(db_engine, task_id), task_id)
    later = predictions.utcnow() + timedelta(seconds=1)
    with db_engine.begin() as conn:
        assert retention.purge_rows(conn, later) == [plain]
        conn.execute(update(WebhookDelivery).values(state=deliveries.DELIVERED))
        assert retention.purge_rows(conn, later) == [owed]


def test_an_upload_claimed_again_starts_once(db_engine):
    task_id = _record(db_engine, webhook=HOOK, events="start,completed")
    first = _claim(db_engine, task_id)
    with db_engine.begin() as conn:
        predictions.release(conn, first)  # the database or Redis was away: the claim is given back
        again = predictions.claim(conn, [task_id], 0, "test-worker", 60)  # no duplicate-key error
    assert again.images and [e for e, _ in _deliveries(db_engine, task_id)] == ["start"]


# --- every transition and every fenced write, on SQLite (make run) and MariaDB (everything else) -------------


@pytest.fixture(params=["sqlite", "mariadb"])
def lifecycle_engine(request, tmp_path):
    """An engine on a migrated database of the parametrised kind."""
    if request.param == "mariadb":
        yield request.getfixturevalue("db_engine")
        return
    url = f"sqlite:///{tmp_path / 'lifecycle.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _state(engine: Engine, task_id: str) -> tuple[str, int]:
    row = _row(engine, task_id)
    assert row is not None
    return row.state, row.deliveries


def test_recorded_uploads_wait_and_a_withdrawn_one_is_gone(lifecycle_engine):
    kept, withdrawn = _record(lifecycle_engine), _record(lifecycle_engine)
    with lifecycle_engine.begin() as conn:
        predictions.withdraw(conn, [withdrawn])
        assert predictions.states(conn, [kept, withdrawn]) == {kept: "PENDING"}
        found = predictions.look_up(conn, [kept, withdrawn])
    assert list(found) == [kept] and found[kept].claimable and found[kept].deliveries == 0


def test_claim_starts_an_upload_once_and_a_live_claim_cannot_be_taken(lifecycle_engine):
    task_id = _record(lifecycle_engine)
    first = _claim(lifecycle_engine, task_id)
    assert list(first.images) == [task_id] and _state(lifecycle_engine, task_id) == ("STARTED", 1)
    with lifecycle_engine.begin() as conn:
        assert not predictions.claim(conn, [task_id], 1, "other", 60).images  # its lease is live
        assert not predictions.claim(conn, [task_id], 0, "other", 60).images  # and the count moved on
        assert predictions.look_up(conn, [task_id])[task_id].leased


def test_finish_ends_a_held_claim_and_is_fenced_once_the_claim_is_gone(lifecycle_engine):
    done, taken = _record(lifecycle_engine), _record(lifecycle_engine)
    assert _finish(lifecycle_engine, _claim(lifecycle_engine, done), done)["state"] == "SUCCESS"
    with lifecycle_engine.begin() as conn:
        stale = predictions.claim(conn, [taken], 0, "slow", -1)  # a lease that has already run out
        assert predictions.unclaim(conn, predictions.expired_claims(conn, "test")) == [taken]
        fresh = predictions.claim(conn, [taken], 1, "rescuer", 60)
        assert predictions.finish(conn, fresh, {taken: dict(RESULT, digit=3)})[taken]["digit"] == 3
        late = predictions.finish(conn, stale, {taken: dict(RESULT, digit=9)})  # the stalled worker's write
    assert late[taken]["digit"] == 3 and _state(lifecycle_engine, taken) == ("SUCCESS", 2)
    row = _row(lifecycle_engine, taken)
    assert row is not None and row.worker == "rescuer"


def test_release_gives_a_claim_back_without_counting_a_delivery(lifecycle_engine):
    task_id = _record(lifecycle_engine)
    held = _claim(lifecycle_engine, task_id)
    with lifecycle_engine.begin() as conn:
        predictions.release(conn, held)
    assert _state(lifecycle_engine, task_id) == ("PENDING", 0)
    with lifecycle_engine.begin() as conn:
        predictions.release(conn, held)  # a second release of the same claim changes nothing
        assert predictions.claim(conn, [task_id], 0, "again", 60).images
    assert _state(lifecycle_engine, task_id) == ("STARTED", 1)


def test_renew_keeps_only_the_claims_still_held(lifecycle_engine):
    mine, lost = _record(lifecycle_engine), _record(lifecycle_engine)
    with lifecycle_engine.begin() as conn:
        held = predictions.claim(conn, [mine], 0, "w", -1)
        gone = predictions.claim(conn, [lost], 0, "w", -1)
        predictions.unclaim(conn, [f for f in predictions.expired_claims(conn, "test") if f.task_id == lost])
        predictions.renew(conn, [held, gone], 60)
        assert [f.task_id for f in predictions.expired_claims(conn, "test")] == []  # mine renewed, lost PENDING
        assert predictions.states(conn, [mine, lost]) == {mine: "STARTED", lost: "PENDING"}


def test_poison_fails_only_an_upload_nobody_holds_at_the_count_seen(lifecycle_engine):
    task_id, live = _record(lifecycle_engine), _record(lifecycle_engine)
    with lifecycle_engine.begin() as conn:
        predictions.claim(conn, [task_id], 0, "dies", -1)
        (seen,) = predictions.expired_claims(conn, "test")
        predictions.claim(conn, [task_id], 1, "dies too", -1)  # taken again meanwhile: the count moved on
        assert predictions.fail_poison(conn, [seen]) == {}
        (seen,) = predictions.expired_claims(conn, "test")
        docs = predictions.fail_poison(conn, [seen])
        held = predictions.claim(conn, [live], 0, "alive", 60)
        assert predictions.fail_poison(conn, [predictions.Found(live, "STARTED", 1, leased=False)]) == {}
    assert docs[task_id]["state"] == "FAILURE" and "2 workers" in docs[task_id]["error"]
    assert _state(lifecycle_engine, task_id) == ("FAILURE", 2) and _state(lifecycle_engine, live) == ("STARTED", 1)
    assert held.images


def test_cancel_ends_pending_and_started_uploads_and_fences_the_worker(lifecycle_engine):
    pending, started = _record(lifecycle_engine), _record(lifecycle_engine)
    held = _claim(lifecycle_engine, started)
    with lifecycle_engine.begin() as conn:
        assert predictions.cancel(conn, pending, None).changed
        assert predictions.cancel(conn, started, "a" * 64).changed
        assert predictions.cancel(conn, started, None).changed is False  # already final
        late = predictions.finish(conn, held, {started: dict(RESULT)})
    assert late[started]["state"] == "CANCELED" and _state(lifecycle_engine, pending)[0] == "CANCELED"


def test_lost_uploads_are_found_by_age_and_marked_once(lifecycle_engine):
    task_id = _record(lifecycle_engine)
    with lifecycle_engine.begin() as conn:
        assert predictions.waiting_longer_than(conn, "test", 3600, 10) == []
        assert task_id in predictions.waiting_longer_than(conn, "test", -3600, 10)  # "older than an hour ahead"
        assert predictions.mark_requeued(conn, [task_id]) == [task_id]
        assert predictions.waiting_longer_than(conn, "test", 60, 10) == []  # re-enqueued just now
