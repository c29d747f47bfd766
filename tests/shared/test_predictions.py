"""The lifecycle's owner (shared/predictions.py) on the real MariaDB: cancel, fencing, deletion, webhooks' events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from shared import deliveries, predictions, retention
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
