"""shared/owners.py on the real MariaDB: the HMAC key, and moving a token's legacy rows (uploads, keys) to it."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from shared import idempotency, owners, predictions
from shared.schema import IdempotencyKey, Prediction

SECRET = "a-test-secret-of-at-least-32-characters"


def _record(engine, owner: str, key: str | None = None) -> str:
    upload = predictions.NewUpload(data=b"png", filename=None, content_type="image/png", width=28, height=28,
                                   owner=owner)
    with engine.begin() as conn:
        predictions.record(conn, [upload], "owners-test")
        if key is not None:
            idempotency.claim_all(conn, [idempotency.Claimed(owner, key, "0" * 64, [upload.task_id])], 3600)
    return upload.task_id


def test_the_key_depends_on_the_secret_and_is_as_long_as_the_column():
    key = owners.owner_key("a-token-of-twenty-two-chars", SECRET)
    assert len(key) == 64 == Prediction.__table__.c.owner.type.length
    assert key != owners.owner_key("a-token-of-twenty-two-chars", SECRET + "!")
    assert key != owners.legacy_key("a-token-of-twenty-two-chars")


def test_adopting_moves_only_that_tokens_rows_and_a_repeat_moves_nothing(db_engine):
    token = f"mine-{uuid.uuid4().hex}"
    old_mine, old_theirs = owners.legacy_key(token), owners.legacy_key(f"theirs-{uuid.uuid4().hex}")
    mine = [_record(db_engine, old_mine, key=f"k{i}") for i in range(2)]
    theirs = _record(db_engine, old_theirs, key="k0")
    with db_engine.begin() as conn:
        assert owners.adopt_legacy(conn, token, SECRET) == 2
        assert owners.adopt_legacy(conn, token, SECRET) == 0
    new = owners.owner_key(token, SECRET)
    with db_engine.connect() as conn:
        rows = dict(conn.execute(select(Prediction.task_id, Prediction.owner)
                                 .where(Prediction.task_id.in_([*mine, theirs]))).all())
        keys = conn.execute(select(IdempotencyKey.owner, IdempotencyKey.idem_key).where(IdempotencyKey.owner.in_(
            [new, old_mine, old_theirs]))).all()
    assert rows == {mine[0]: new, mine[1]: new, theirs: old_theirs}
    assert sorted(keys) == sorted([(new, idempotency.stored("k0")), (new, idempotency.stored("k1")),
                                   (old_theirs, idempotency.stored("k0"))])
