"""Schemathesis against the API's OpenAPI description, sent to a real gunicorn on the real services:
no 500s, status codes and bodies as described."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.stack import LiveStack, web_only_stack
from web.openapi import SPEC

schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
def live_web(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """gunicorn only: uploads are queued for nobody, which is all the API promises."""
    with web_only_stack(database_url, redis_url) as stack:
        yield stack


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_answers_500(case, live_web):
    case.call_and_validate(base_url=live_web.base_url,
                           checks=[not_a_server_error, status_code_conformance, response_schema_conformance])


def test_the_description_is_served(live_web):
    assert requests.get(f"{live_web.base_url}/openapi.json", timeout=5).json() == SPEC
