"""One source for the API's shapes and limits: /openapi.json is generated from the models and settings the views
use, the views refuse with the same rules, and the page's script reads the same names. No services needed."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from shared.config import REPO_ROOT, Settings
from shared.schema import State, status_document
from shared.webhooks import WEBHOOK_EVENTS
from web import api, create_app
from web.errors import ApiError
from web.owner import TOKEN
from web.schemas import (
    MAX_IDS,
    MAX_PAGE,
    MAX_PER_PAGE,
    MAX_WAIT_SECONDS,
    TASK_ID_PATTERN,
    PageQuery,
    PredictQuery,
    Status,
    TaskQuery,
    TasksQuery,
    WebhookReport,
)

OFFLINE = {"redis_url": "redis://127.0.0.1:1/0", "database_url": "sqlite://"}  # nothing is reached


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """Apps with the given settings, on no services (describing and rendering need none)."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        apps.append(create_app(Settings(**OFFLINE, **overrides)))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["digits"].engine.dispose()


def _description(app: Flask) -> dict[str, Any]:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.get_json()
    return doc


def _parameter(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    [found] = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
    return found


@pytest.mark.parametrize("max_files,max_bytes", [(3, 1234), (40, 5 << 20)])
def test_the_description_follows_the_apps_settings(make_app, max_files, max_bytes):
    doc = _description(make_app(max_files_per_request=max_files, max_upload_bytes=max_bytes))
    upload = doc["components"]["schemas"]["Upload"]["properties"]["file"]

    assert (upload["minItems"], upload["maxItems"]) == (1, max_files)
    assert upload["items"] == {"type": "string", "format": "binary", "maxLength": max_bytes}
    responses = doc["paths"]["/predict"]["post"]["responses"]
    assert f"more than {max_files} files" in responses["400"]["description"]
    assert str(max_bytes) in responses["413"]["description"]


def test_the_description_states_the_codes_rules(make_app):
    doc = _description(make_app())
    schemas = doc["components"]["schemas"]

    for path, method in (("/predict", "post"), ("/tasks/{task_id}", "get"), ("/tasks", "get")):
        wait = _parameter(doc, path, method, "wait")["schema"]
        assert (wait["minimum"], wait["maximum"]) == (0, MAX_WAIT_SECONDS)
    ids = _parameter(doc, "/tasks", "get", "ids")
    assert (ids["required"], ids["style"], ids["explode"]) == (True, "form", False)
    assert (ids["schema"]["minItems"], ids["schema"]["maxItems"]) == (1, MAX_IDS)
    assert ids["schema"]["items"]["pattern"] == schemas["Status"]["properties"]["task_id"]["pattern"] == TASK_ID_PATTERN
    assert _parameter(doc, "/predictions", "get", "page")["schema"]["maximum"] == MAX_PAGE
    assert _parameter(doc, "/predictions", "get", "per_page")["schema"]["maximum"] == MAX_PER_PAGE
    assert _parameter(doc, "/predictions", "get", "X-Owner-Token")["schema"]["pattern"] == TOKEN.pattern
    assert schemas["State"]["enum"] == [state.value for state in State]
    assert doc["openapi"].startswith("3.1")


def test_every_api_route_is_described_and_served_unwrapped(make_app):
    app = make_app()
    paths = _description(app)["paths"]
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.split(".")[0] in ("api", "tasks", "health")]

    described = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) for r in rules}
    assert described == set(paths)
    # Describing costs a request nothing: the views served are the functions as written, not spectree's wrappers.
    assert app.view_functions["api.task_status"] is api.task_status
    assert app.view_functions["api.tasks_status"] is api.tasks_status


def _refusal(model: Any, args: dict[str, str]) -> tuple[int, str]:
    with pytest.raises(ApiError) as refused:
        model.parse(args)
    return refused.value.status, refused.value.code


ID = str(uuid.uuid4())


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "abc", "-5", "1e309", "31", "-0.001"])
def test_a_bad_wait_is_refused_alike_everywhere(wait):
    for model, args in ((PredictQuery, {}), (TaskQuery, {}), (TasksQuery, {"ids": ID})):
        assert _refusal(model, {**args, "wait": wait}) == (400, "bad_wait")


def test_queries_keep_the_apis_readings_and_refusals():
    assert PredictQuery.parse({"wait": ""}).wait == 0 and TaskQuery.parse({"wait": "30"}).wait == 30
    assert TasksQuery.parse({"ids": f",{ID},,{ID}", "until": "any"}).ids == [ID, ID]
    assert _refusal(TasksQuery, {}) == _refusal(TasksQuery, {"ids": ","}) == (400, "bad_ids")
    assert _refusal(TasksQuery, {"ids": ",".join(["x"] * (MAX_IDS + 1))}) == (400, "bad_ids")
    assert _refusal(TasksQuery, {"ids": f"{ID},nope", "wait": "abc"}) == (404, "not_found")
    assert _refusal(TasksQuery, {"ids": ID, "until": "some"}) == (400, "bad_until")
    # The history's paging reads leniently, as it always did: junk or 0 is the default, out of range is refused.
    assert PageQuery.parse({"page": "abc", "per_page": "0"}) == PageQuery(page=1, per_page=20)
    assert _refusal(PageQuery, {"per_page": str(MAX_PER_PAGE + 1)}) == (400, "bad_page")
    assert _refusal(PageQuery, {"page": "986091181711387642325690203599011840"}) == (400, "bad_page")


def test_the_page_reads_the_state_names_and_limits_from_the_server(make_app):
    page = make_app(max_files_per_request=5, max_upload_bytes=3 << 20).test_client().get("/").get_data(as_text=True)
    blob = re.search(r'<script id="page-config" type="application/json">(.*?)</script>', page, re.S)
    assert blob is not None
    config = json.loads(blob.group(1))

    assert config["states"] == {state.name: state.value for state in State}
    assert (config["maxFiles"], config["maxUploadBytes"]) == (5, 3 << 20)
    assert (config["maxIdsPerPoll"], config["maxWaitSeconds"]) == (MAX_IDS, MAX_WAIT_SECONDS)


def test_the_pages_script_repeats_no_state_name():
    source = (REPO_ROOT / "web" / "static" / "app.js").read_text(encoding="utf-8")
    assert not [state for state in State if f'"{state.value}"' in source or f"'{state.value}'" in source]


def test_the_description_lists_cancel_delete_idempotency_and_webhooks(make_app):
    doc = _description(make_app())
    paths, schemas = doc["paths"], doc["components"]["schemas"]

    assert set(paths["/tasks/{task_id}/cancel"]["post"]["responses"]) == {"200", "401", "404", "409", "503"}
    assert schemas["AlreadyFinal"]["properties"]["task"] == {"$ref": "#/components/schemas/Status"}
    assert set(paths["/tasks/{task_id}"]["delete"]["responses"]) == {"204", "401", "404", "503"}
    assert set(paths["/predictions"]["delete"]["responses"]) == {"204", "503"}
    predict = paths["/predict"]["post"]
    assert {"409", "422"} <= set(predict["responses"])
    key = _parameter(doc, "/predict", "post", "Idempotency-Key")
    assert (key["in"], key["schema"]["pattern"]) == ("header", r"^[\x20-\x7e]{1,255}$")
    for code in ("200", "202"):
        assert "Idempotent-Replayed" in predict["responses"][code]["headers"]
    assert {"file", "webhook", "webhook_events"} == set(schemas["Upload"]["properties"])
    assert {"data_removed", "webhook"} <= set(schemas["Status"]["required"])
    assert "CANCELED" in schemas["State"]["enum"]


def test_the_status_model_is_the_status_document():
    hooked = status_document({"task_id": ID, "state": "SUCCESS", "webhook_url": "https://r.example/h",
                              "webhook_events": "start,completed"})
    assert set(Status.model_fields) == set(hooked)
    assert set(WebhookReport.model_fields) == set(hooked["webhook"])
    assert Status.model_validate(hooked).webhook is not None
    assert Status.model_validate(status_document({"task_id": ID, "state": "PENDING"})).webhook is None
    events = WebhookReport.model_json_schema()["properties"]["events"]["items"]["enum"]
    assert tuple(events) == WEBHOOK_EVENTS
