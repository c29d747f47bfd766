"""POST /predict's `webhook` and `webhook_events` fields (real MariaDB and Redis, no worker): checked at submit
with the SSRF guard, refused without a signing secret, stored on every upload of the request."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from shared.config import Settings
from shared.schema import Prediction
from tests.helpers import png_bytes
from web import create_app

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def make_app(settings: Settings, db_engine) -> Iterator[Callable[..., Flask]]:
    """Apps on the test's services with these settings changed."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        apps.append(create_app(settings.model_copy(update=overrides)))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["digits"].engine.dispose()


def _post(app: Flask, images: list[bytes], **fields: str):
    data: dict[str, Any] = {"file": [(io.BytesIO(image), f"d{i}.png") for i, image in enumerate(images)], **fields}
    return app.test_client().post("/predict", data=data, content_type="multipart/form-data")


def _refused(resp) -> tuple[int, str]:
    return resp.status_code, resp.get_json()["error"]["code"]


def _rows(db_sessions, task_ids: list[str]) -> list[Prediction]:
    with db_sessions() as s:
        return list(s.scalars(select(Prediction).where(Prediction.task_id.in_(task_ids)).order_by(Prediction.id)))


def test_loopback_is_refused_unless_the_operator_allows_it(make_app, db_sessions, mnist):
    image = png_bytes(mnist.x_test[0])
    refused = _post(make_app(webhook_secret=SECRET), [image], webhook=HOOK)
    assert _refused(refused) == (400, "webhook_not_allowed")
    assert "WEBHOOK_ALLOWED_HOSTS" in refused.get_json()["error"]["message"]

    allowed = make_app(webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1")
    resp = _post(allowed, [image, image], webhook=HOOK, webhook_events="completed, START")

    assert resp.status_code == 202
    ids = [t["task_id"] for t in resp.get_json()["tasks"]]
    assert [(r.webhook_url, r.webhook_events) for r in _rows(db_sessions, ids)] == [(HOOK, "start,completed")] * 2
    doc = allowed.test_client().get(f"/tasks/{ids[0]}").get_json()
    assert doc["webhook"] == {"url": HOOK, "events": ["start", "completed"], "state": "PENDING", "attempts": 0,
                              "last_status": None, "delivered": False}


def test_the_events_default_to_completed_and_the_history_reports_the_webhook(make_app, db_sessions, mnist):
    app = make_app(webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1")
    client = app.test_client()
    data = {"file": [(io.BytesIO(png_bytes(mnist.x_test[0])), "d.png")], "webhook": HOOK}
    task_id = client.post("/predict", data=data, content_type="multipart/form-data").get_json()["task_id"]

    assert [r.webhook_events for r in _rows(db_sessions, [task_id])] == ["completed"]
    [item] = client.get("/predictions").get_json()["items"]  # the visitor's cookie came back with the 202
    assert (item["task_id"], item["webhook"]["events"], item["webhook"]["state"]) == (task_id, ["completed"],
                                                                                       "PENDING")


def test_without_a_signing_secret_webhooks_are_refused(make_app, db_sessions, mnist):
    resp = _post(make_app(webhook_allowed_hosts="127.0.0.1"), [png_bytes(mnist.x_test[0])], webhook=HOOK)
    assert _refused(resp) == (400, "webhooks_disabled")
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []


@pytest.mark.parametrize("fields,code", [
    ({"webhook_events": "completed"}, "bad_webhook_events"),  # events without a URL
    ({"webhook": HOOK, "webhook_events": "finished"}, "bad_webhook_events"),
    ({"webhook": "ftp://127.0.0.1/hook"}, "bad_webhook"),
    ({"webhook": "http://user:pw@127.0.0.1/hook"}, "bad_webhook"),
    ({"webhook": "http://169.254.169.254/latest/meta-data"}, "webhook_not_allowed"),
])
def test_bad_webhook_fields_are_400_with_their_code(make_app, db_sessions, mnist, fields, code):
    resp = _post(make_app(webhook_secret=SECRET), [png_bytes(mnist.x_test[0])], **fields)
    assert _refused(resp) == (400, code)
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []


def test_an_upload_without_a_webhook_stores_none(client, db_sessions, mnist):
    task_id = _post(client.application, [png_bytes(mnist.x_test[0])]).get_json()["task_id"]
    assert [(r.webhook_url, r.webhook_events) for r in _rows(db_sessions, [task_id])] == [(None, None)]
