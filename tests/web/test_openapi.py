"""Schemathesis against the API's generated OpenAPI description, sent to a real gunicorn on the real services:
no 500s, status codes and bodies as described."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from shared.config import Settings
from tests.stack import LiveStack, web_only_stack
from web import create_app


def _generated() -> dict[str, Any]:
    """The description an app generates with this environment's settings (the live web reads the same ones)."""
    # Generated at import, as schemathesis needs it to collect: no service is reached to describe the API.
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", database_url="sqlite://"))
    doc: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    app.extensions["digits"].engine.dispose()
    return doc


FRAMING_HEADERS = frozenset({"transfer-encoding", "content-length", "connection", "te", "trailer", "upgrade",
                             "keep-alive", "expect", "host"})
DESCRIPTION = _generated()
schema = schemathesis.openapi.from_dict(DESCRIPTION)


@pytest.fixture(scope="module")
def live_web(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """gunicorn only: uploads are queued for nobody, which is all the API promises."""
    with web_only_stack(database_url, redis_url) as stack:
        yield stack


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_answers_500(case, live_web):
    # Random extra headers may include HTTP's own framing (`Transfer-Encoding: Z`), which gunicorn's parser answers
    # (501) before any of the app runs: that is the server's HTTP, not this API, so such headers are not sent.
    for name in [n for n in (case.headers or {}) if n.lower() in FRAMING_HEADERS]:
        del case.headers[name]
    case.call_and_validate(base_url=live_web.base_url,
                           checks=[not_a_server_error, status_code_conformance, response_schema_conformance])


def test_the_description_is_served_with_the_running_apps_limits(live_web):
    served = requests.get(f"{live_web.base_url}/openapi.json", timeout=5).json()
    system = requests.get(f"{live_web.base_url}/system", timeout=5).json()
    upload = served["components"]["schemas"]["Upload"]["properties"]["file"]

    assert served == DESCRIPTION  # what schemathesis tested is what the app serves
    assert (upload["maxItems"], upload["items"]["maxLength"]) == (system["max_files_per_request"],
                                                                   system["max_upload_bytes"])
