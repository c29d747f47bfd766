"""The JSON API against real MariaDB and Redis (no worker: the queue is inspected directly)."""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid

import numpy as np
import redis
from sqlalchemy import select

from shared.config import Settings
from shared.schema import Prediction, State
from shared.workers import announce_worker, withdraw_worker
from tests.helpers import png_bytes, stored_owner
from web import create_app


def _post(client, *files: tuple[bytes, str]):
    data = {"file": [(io.BytesIO(content), name) for content, name in files]}
    return client.post("/predict", data=data, content_type="multipart/form-data")


def _queued(settings: Settings) -> list[tuple[str, list]]:
    """(task name, args) of the messages waiting in the test's Redis queue, oldest first."""
    r = redis.Redis.from_url(settings.redis_url)
    messages = [json.loads(m) for m in reversed(r.lrange(settings.queue_name, 0, -1))]
    return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def test_predict_records_row_then_queues_and_answers_202(client, settings, db_sessions, mnist):
    resp = _post(client, (png_bytes(mnist.x_test[0]), "seven.png"))

    assert resp.status_code == 202
    body = resp.get_json()
    task_id = body["task_id"]
    assert body["status_url"] == f"/tasks/{task_id}"
    assert resp.headers["Location"] == body["status_url"]
    with db_sessions() as s:
        row = s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()
        assert row.state == State.PENDING
        assert row.filename == "seven.png"
        assert row.content_type == "image/png"
        assert (row.width, row.height) == (28, 28)
    assert _queued(settings) == [("digits.predict", [task_id])]


def test_status_of_a_queued_upload_is_pending(client, mnist):
    task_id = _post(client, (png_bytes(mnist.x_test[1]), "two.png")).get_json()["task_id"]

    resp = client.get(f"/tasks/{task_id}")

    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["task_id"] == task_id
    assert doc["state"] == "PENDING"
    assert set(doc) == {"task_id", "state", "digit", "confidence", "probabilities", "model_name", "model_version",
                        "error", "created_at", "finished_at", "data_removed", "webhook"}
    assert (doc["data_removed"], doc["webhook"]) == (False, None)
    assert doc["created_at"].endswith("Z")


def test_several_files_in_one_request_each_get_a_task_and_travel_as_one_batch(client, settings, mnist):
    resp = _post(client, *[(png_bytes(mnist.x_test[i]), f"d{i}.png") for i in range(3)])

    assert resp.status_code == 202
    body = resp.get_json()
    ids = [t["task_id"] for t in body["tasks"]]
    assert [t["filename"] for t in body["tasks"]] == ["d0.png", "d1.png", "d2.png"]
    assert _queued(settings) == [("digits.predict_batch", [ids])]
    statuses = client.get(body["status_url"]).get_json()["tasks"]
    assert [(d["task_id"], d["state"]) for d in statuses] == [(i, "PENDING") for i in ids]


def test_status_of_several_tasks_refuses_unknown_and_too_many_ids(client):
    assert client.get(f"/tasks?ids={uuid.uuid4()}").status_code == 404
    assert client.get("/tasks?ids=").status_code == 400
    many = ",".join(str(uuid.uuid4()) for _ in range(101))
    assert client.get(f"/tasks?ids={many}").status_code == 400


def test_unknown_task_is_404_not_pending_forever(client):
    for task_id in (str(uuid.uuid4()), "not-a-task-id"):
        resp = client.get(f"/tasks/{task_id}")
        assert resp.status_code == 404
        assert resp.get_json()["error"]["code"] == "not_found"


def test_missing_field_is_400(client):
    resp = client.post("/predict", data={"other": (io.BytesIO(b"x"), "a.png")}, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert "field named 'file'" in resp.get_json()["error"]["message"]


def test_empty_file_is_400(client):
    resp = _post(client, (b"", "empty.png"))
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "empty_file"


def test_text_named_png_is_415(client, db_sessions):
    resp = _post(client, (b"hello, I am not an image\n" * 10, "fake.png"))
    assert resp.status_code == 415
    err = resp.get_json()["error"]
    assert err["code"] == "not_an_image"
    assert "fake.png" in err["message"]
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []  # nothing recorded for a refused upload


def test_truncated_png_is_400(client, mnist):
    data = png_bytes(mnist.x_test[0])
    resp = _post(client, (data[: len(data) // 2], "cut.png"))
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "truncated"


def test_non_multipart_body_is_415(client):
    resp = client.post("/predict", data=b"\x89PNG", content_type="image/png")
    assert resp.status_code == 415


def test_file_over_the_limit_is_413(database_url, redis_url, db_engine, mnist):
    settings = Settings(redis_url=redis_url, database_url=database_url, max_upload_bytes=200, queue_name="t413")
    client = create_app(settings).test_client()
    resp = _post(client, (png_bytes(np.full((64, 64), 7, np.uint8)) + b"\0" * 300, "big.png"))
    assert resp.status_code == 413
    assert resp.get_json()["error"] == {"code": "too_large",
                                        "message": "'big.png' is larger than 200 bytes, the most this service takes."}


def test_body_over_the_request_limit_is_413(database_url, redis_url, db_engine):
    settings = Settings(redis_url=redis_url, database_url=database_url, max_upload_bytes=1000,
                        max_files_per_request=1, queue_name="t413b")
    client = create_app(settings).test_client()
    resp = _post(client, (b"\0" * 200_000, "huge.png"))
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "too_large"


def test_too_many_files_is_400(database_url, redis_url, db_engine, mnist):
    settings = Settings(redis_url=redis_url, database_url=database_url, max_files_per_request=2, queue_name="tmany")
    client = create_app(settings).test_client()
    resp = _post(client, *[(png_bytes(mnist.x_test[i]), f"{i}.png") for i in range(3)])
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "too_many_files"


def test_queue_unavailable_is_503_and_leaves_no_row(database_url, db_engine, db_sessions, mnist):
    # A real Redis URL on a port where nothing listens: the broker is down.
    settings = Settings(redis_url="redis://127.0.0.1:1/0", database_url=database_url, queue_name="tdown")
    client = create_app(settings).test_client()

    resp = _post(client, (png_bytes(mnist.x_test[0]), "a.png"))

    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "queue_unavailable"
    with db_sessions() as s:
        assert s.scalars(select(Prediction)).all() == []


def test_history_is_paginated_newest_first(client, mnist):
    ids = [_post(client, (png_bytes(mnist.x_test[i]), f"h{i}.png")).get_json()["task_id"] for i in range(3)]

    page1 = client.get("/predictions?per_page=2").get_json()
    page2 = client.get("/predictions?per_page=2&page=2").get_json()

    assert page1["total"] == 3
    assert [i["task_id"] for i in page1["items"]] == ids[::-1][:2]
    assert [i["task_id"] for i in page2["items"]] == ids[:1]
    assert page1["items"][0]["filename"] == "h2.png"
    assert client.get("/predictions?per_page=1000").status_code == 400
    huge = "986091181711387642325690203599011840"  # found by schemathesis: MariaDB refused the OFFSET
    assert client.get(f"/predictions?page={huge}").status_code == 400


def test_index_page_is_served_without_external_assets(client):
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'name="file"' in html
    assert "http://" not in html and "https://" not in html
    assert client.get("/static/app.js").status_code == 200


def test_every_response_carries_security_headers(client):
    for resp in (client.get("/"), client.get("/healthz"), client.get(f"/tasks/{uuid.uuid4()}")):
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
    html = client.get("/").get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html and " on" + "click=" not in html  # nothing inline


def test_uploads_beyond_the_rate_limit_get_429_with_retry_after(database_url, redis_url, db_engine, mnist):
    settings = Settings(redis_url=redis_url, database_url=database_url, rate_limit="2/minute",
                        queue_name=f"limit-{uuid.uuid4().hex[:8]}")
    client = create_app(settings).test_client()
    image = (png_bytes(mnist.x_test[0]), "d.png")

    statuses = [_post(client, image).status_code for _ in range(2)]
    refused = _post(client, image)

    assert statuses == [202, 202]
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert client.get("/healthz").status_code == 200  # only uploads are limited


def test_accepting_logs_the_task_ids_for_following_an_upload(client, mnist, caplog):
    logger = logging.getLogger("web.ingest")
    logger.addHandler(caplog.handler)  # directly: create_app reconfigures the root logger's handlers
    try:
        task_id = _post(client, (png_bytes(mnist.x_test[0]), "d.png")).get_json()["task_id"]
    finally:
        logger.removeHandler(caplog.handler)
    assert any(getattr(r, "task_ids", None) == [task_id] for r in caplog.records)


def test_system_reports_live_workers_their_models_and_the_queue(client, settings, mnist):
    r = redis.Redis.from_url(settings.redis_url)
    empty = client.get("/system").get_json()
    assert empty["workers"] == 0 and empty["model_versions"] == [] and empty["queue_length"] == 0

    announce_worker(r, settings.queue_name, "a:1", {"model_version": "seed-1", "device": "CPU:0"}, 30)
    announce_worker(r, settings.queue_name, "b:2", {"model_version": "strong-2", "device": "CPU:0"}, 30)
    announce_worker(r, "another-queue", "c:3", {"model_version": "other", "device": "GPU:0"}, 30)
    _post(client, (png_bytes(mnist.x_test[0]), "seven.png"))
    _post(client, (png_bytes(mnist.x_test[1]), "two.png"), (png_bytes(mnist.x_test[2]), "one.png"))

    body = client.get("/system").get_json()
    assert body["workers"] == 2  # only this queue's workers
    assert body["model_versions"] == ["seed-1", "strong-2"]
    assert body["devices"] == ["CPU:0"]
    assert body["queue_length"] == 2  # messages: the two-file upload travels as one
    assert body["max_upload_bytes"] == settings.max_upload_bytes

    withdraw_worker(r, settings.queue_name, "b:2")
    assert client.get("/system").get_json()["model_versions"] == ["seed-1"]


def test_system_says_503_when_redis_is_away(settings, db_engine):
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    resp = app.test_client().get("/system")
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "queue_unavailable"


def test_a_visitor_gets_an_owner_cookie_and_another_client_never_sees_their_uploads(app, client, db_sessions, mnist):
    page = client.get("/")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("digits_owner=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    mine = _post(client, (png_bytes(mnist.x_test[0]), "mine.png")).get_json()["task_id"]
    stranger = app.test_client()
    theirs = _post(stranger, (png_bytes(mnist.x_test[1]), "theirs.png")).get_json()["task_id"]

    assert [i["task_id"] for i in client.get("/predictions").get_json()["items"]] == [mine]
    assert [i["task_id"] for i in stranger.get("/predictions").get_json()["items"]] == [theirs]
    # Without any token: nothing. The stored owner is the token's hash, never the token itself.
    assert app.test_client(use_cookies=False).get("/predictions").get_json() == {
        "items": [], "page": 1, "per_page": 20, "total": 0}
    token = client.get_cookie("digits_owner").value
    with db_sessions() as s:
        assert s.scalars(select(Prediction.owner).where(Prediction.task_id == mine)).one() == stored_owner(token)
    # The unguessable task id stays readable by whoever holds it.
    assert stranger.get(f"/tasks/{mine}").status_code == 200


def test_an_api_client_keeps_its_history_with_the_owner_header(app, mnist):
    api = app.test_client(use_cookies=False)
    token = "an-api-client-token-0123456789"
    headers = {"X-Owner-Token": token}
    data = {"file": [(io.BytesIO(png_bytes(mnist.x_test[2])), "api.png")]}
    task_id = api.post("/predict", data=data, content_type="multipart/form-data", headers=headers).get_json()["task_id"]

    assert [i["task_id"] for i in api.get("/predictions", headers=headers).get_json()["items"]] == [task_id]
    assert api.get("/predictions", headers={"X-Owner-Token": "someone-else-token-0123456789"}).get_json()["total"] == 0


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_operators_list_everyone_with_credentials_from_the_environment(settings, db_engine, mnist):
    app = create_app(settings.model_copy(update={"admin_basic_auth": "ops:a-long-operator-password"}))
    for i in range(2):
        _post(app.test_client(), (png_bytes(mnist.x_test[i]), f"visitor-{i}.png"))
    ops = app.test_client(use_cookies=False)

    everyone = ops.get("/predictions", headers=_basic("ops:a-long-operator-password")).get_json()
    assert {i["filename"] for i in everyone["items"]} == {"visitor-0.png", "visitor-1.png"}
    wrong = ops.get("/predictions", headers=_basic("ops:guess"))
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "unauthorized"


def test_without_admin_credentials_configured_no_password_lists_everything(client, mnist):
    assert Settings.model_fields["admin_basic_auth"].default is None
    _post(client.application.test_client(), (png_bytes(mnist.x_test[0]), "someone.png"))
    resp = client.get("/predictions", headers=_basic("admin:admin"))
    assert resp.status_code == 200 and resp.get_json()["total"] == 0  # an ordinary visitor, with no uploads


def test_a_weak_or_example_admin_password_disables_operator_listing(settings, db_engine, mnist, capsys):
    app = create_app(settings.model_copy(update={"admin_basic_auth": "ops:CHANGE_ME_admin_password"}))
    _post(app.test_client(), (png_bytes(mnist.x_test[0]), "someone.png"))

    resp = app.test_client().get("/predictions", headers=_basic("ops:CHANGE_ME_admin_password"))

    assert resp.status_code == 200 and resp.get_json()["total"] == 0
    assert "ADMIN_BASIC_AUTH's password is the example or too weak" in capsys.readouterr().err


def test_behind_a_tls_proxy_the_owner_cookie_is_secure(settings, db_engine):
    app = create_app(settings.model_copy(update={"trusted_proxies": 1}))
    cookie = app.test_client().get("/", headers={"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    assert "Secure" in cookie
