"""Owner keys over HTTP (web/owner.py) on real MariaDB and Redis: rows keep an HMAC of the token under the
service's secret, a web without a strong secret does not start, and rows stored under the old plain SHA-256
follow their owner to the new key the first time the token comes back."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from shared import idempotency, owners, predictions
from shared.config import Settings
from shared.schema import IdempotencyKey, Prediction
from tests.helpers import OWNER_TOKEN_SECRET, png_bytes, stored_owner
from web import create_app

IMAGE_NAME = "d0.png"


def _token() -> str:
    return f"owner-test-{uuid.uuid4().hex}"


def _owners(engine: Engine, task_ids: list[str]) -> set[str | None]:
    with engine.connect() as conn:
        return set(conn.scalars(select(Prediction.owner).where(Prediction.task_id.in_(task_ids))))


def _legacy_upload(engine: Engine, token: str, image: bytes, key: str | None = None) -> str:
    """An upload (and its Idempotency-Key) as a web without OWNER_TOKEN_SECRET stored it: under the token's SHA-256."""
    upload = predictions.NewUpload(data=image, filename=IMAGE_NAME, content_type="image/png", width=28, height=28,
                                   owner=owners.legacy_key(token))
    with engine.begin() as conn:
        predictions.record(conn, [upload], "legacy")
        if key is not None:
            fingerprint = idempotency.fingerprint([(IMAGE_NAME, image)], [("webhook", None), ("webhook_events", None)])
            claim = idempotency.Claimed(owners.legacy_key(token), key, fingerprint, [upload.task_id])
            idempotency.claim_all(conn, [claim], 3600)
    return upload.task_id


@pytest.fixture
def updates(app) -> Iterator[list[str]]:
    """The UPDATE statements the app's engine sends while the test runs."""
    sent: list[str] = []

    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            sent.append(statement)

    engine = app.extensions["digits"].engine
    event.listen(engine, "before_cursor_execute", _record)
    yield sent
    event.remove(engine, "before_cursor_execute", _record)


def test_rows_keep_the_tokens_hmac_under_the_secret_never_its_plain_hash(app, db_engine, mnist):
    token = _token()
    resp = app.test_client(use_cookies=False).post(
        "/predict", data={"file": [(io.BytesIO(png_bytes(mnist.x_test[0])), IMAGE_NAME)]},
        content_type="multipart/form-data", headers={"X-Owner-Token": token})
    assert resp.status_code == 202, resp.get_json()
    (stored,) = _owners(db_engine, [resp.get_json()["task_id"]])
    assert stored == stored_owner(token) == owners.owner_key(token, OWNER_TOKEN_SECRET)
    assert stored != owners.legacy_key(token) and stored != owners.owner_key(token, OWNER_TOKEN_SECRET + "x")


@pytest.mark.parametrize("secret", [None, "", "short-secret", "CHANGE_ME_64_hex_characters_from_openssl_rand_hex_32"])
def test_the_web_does_not_start_without_a_strong_secret(settings: Settings, secret: str | None):
    with pytest.raises(SystemExit, match="OWNER_TOKEN_SECRET"):
        create_app(settings.model_copy(update={"owner_token_secret": secret}))


def test_legacy_rows_follow_their_owner_to_the_new_key_once(app, db_engine, mnist, updates):
    token, stranger = _token(), _token()
    mine = [_legacy_upload(db_engine, token, png_bytes(mnist.x_test[i])) for i in range(3)]
    theirs = _legacy_upload(db_engine, stranger, png_bytes(mnist.x_test[3]))
    client = app.test_client(use_cookies=False)

    listed = client.get("/predictions", headers={"X-Owner-Token": token}).get_json()
    assert sorted(i["task_id"] for i in listed["items"]) == sorted(mine)
    assert _owners(db_engine, mine) == {stored_owner(token)}
    assert _owners(db_engine, [theirs]) == {owners.legacy_key(stranger)}  # nobody else's rows move
    moved = len(updates)
    assert moved == 2  # predictions and idempotency_keys, on the owner index
    # The same process remembers the owner: its next requests cost no statement more.
    assert client.get("/predictions", headers={"X-Owner-Token": token}).get_json()["total"] == 3
    assert len(updates) == moved


def test_a_retry_after_the_upgrade_finds_its_idempotency_key(app, db_engine, mnist):
    token, image = _token(), png_bytes(mnist.x_test[4])
    first = _legacy_upload(db_engine, token, image, key="upgrade-retry")
    retry = app.test_client(use_cookies=False).post(
        "/predict", data={"file": [(io.BytesIO(image), IMAGE_NAME)]}, content_type="multipart/form-data",
        headers={"X-Owner-Token": token, "Idempotency-Key": "upgrade-retry"})
    assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true", retry.get_json()
    assert retry.get_json()["task_id"] == first
    with db_engine.connect() as conn:
        assert set(conn.scalars(select(IdempotencyKey.owner).where(
            IdempotencyKey.idem_key == idempotency.stored("upgrade-retry")))) == {stored_owner(token)}
