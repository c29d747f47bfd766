"""Flower's /metrics, as the scrape configurations expect it: Prometheus text without credentials, the UI and API
still behind basic auth.

deploy/prometheus.yml and k8s/overlays/prometheus-operator scrape Flower without its password (no basic_auth,
no basicAuth), and the README says so. That holds only while Flower keeps /metrics open (its choice, like
/healthcheck); a Flower upgrade that closes it fails this test, and those files then need credentials.

Flower runs in a child process (its Prometheus metrics go to the process-wide registry) on a free loopback port,
with an in-memory broker: no Redis, no Celery worker.
"""

from __future__ import annotations

import json
import subprocess
import sys

from shared.config import REPO_ROOT, child_environment

CREDENTIALS = "ops:4f0c9e2b7a1d55e3"
# The metrics the README names.
FLOWER_METRICS = ("flower_events_total", "flower_task_runtime_seconds", "flower_worker_online",
                  "flower_worker_number_of_currently_executing_tasks")

CHILD = """
import asyncio, base64, json, sys
from unittest import mock

import celery
from flower.app import Flower
from flower.options import default_options
from flower.urls import settings
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

credentials = sys.argv[1]


async def main():
    results = {}
    with mock.patch.object(default_options.mockable(), "basic_auth", [credentials]):
        app = Flower(options=default_options, capp=celery.Celery(broker="memory://"), **settings)
        sockets = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets(sockets)
        base = "http://127.0.0.1:%d" % sockets[0].getsockname()[1]
        client = AsyncHTTPClient()
        token = base64.b64encode(credentials.encode()).decode()
        for path in ("/metrics", "/healthcheck", "/workers", "/api/workers"):
            for auth in (False, True):
                headers = {"Authorization": "Basic " + token} if auth else {}
                response = await client.fetch(base + path, headers=headers, raise_error=False, request_timeout=20)
                results["%s %s" % (path, "auth" if auth else "anonymous")] = [
                    response.code, response.headers.get("Content-Type", ""), response.body.decode(errors="replace")]
        server.stop()
    print(json.dumps(results))


asyncio.run(main())
"""


def _fetch_all() -> dict[str, list]:
    out = subprocess.run([sys.executable, "-c", CHILD, CREDENTIALS], cwd=REPO_ROOT, env=child_environment(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flower_metrics_need_no_credentials_and_the_rest_does() -> None:
    results = _fetch_all()
    code, content_type, body = results["/metrics anonymous"]
    assert code == 200 and content_type.startswith("text/plain")
    for name in FLOWER_METRICS:
        assert f"# TYPE {name} " in body, f"Flower's /metrics lacks {name}"
    assert results["/healthcheck anonymous"][0] == 200
    # Basic auth still guards the dashboard and the API (which can shut workers down).
    for path in ("/workers", "/api/workers"):
        assert results[f"{path} anonymous"][0] == 401, path
        assert results[f"{path} auth"][0] == 200, path
