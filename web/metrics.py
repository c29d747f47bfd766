"""Prometheus metrics of the web tier, served at /metrics.

Under gunicorn every worker process counts on its own; with PROMETHEUS_MULTIPROC_DIR set (make run,
compose and Kubernetes set it) prometheus_client keeps the counts in files there and /metrics adds up
all processes. gunicorn_conf.py clears a dead worker's files.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from web import deps

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("digits_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"])
LATENCY = Histogram("digits_http_request_seconds", "Time to answer an HTTP request", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPLOADS = Counter("digits_uploads_total", "Uploaded files by outcome (accepted, replayed for an Idempotency-Key's "
                  "repeat, or the refusal's code)", ["outcome"])

CANCELED = Counter("digits_canceled_total", "Uploads canceled on request, by whom (owner or operator)", ["by"])
DELETED = Counter("digits_deleted_total", "Uploads deleted on request, by whom (owner, operator or erasure of all "
                  "of an owner's)", ["by"])


def count_uploads(outcome: str, n: int = 1) -> None:
    """Count accepted uploads (outcome "accepted") or a refusal by its error code."""
    UPLOADS.labels(outcome=outcome).inc(n)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of this web tier (all gunicorn workers in multiprocess mode)."""
    multiproc = deps.settings().prometheus_multiproc_dir
    if multiproc is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(multiproc))
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def register(app: Flask) -> None:
    """Time and count every request; serve /metrics."""
    @app.before_request
    def _start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        # The route's pattern, not the path: one series for /tasks/<task_id>, not one per task.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.pop("metrics_started", None)
        if started is not None:
            LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        REQUESTS.labels(method=request.method, endpoint=endpoint, status=str(response.status_code)).inc()
        if request.endpoint == "api.predict":
            if "replayed_uploads" in g:  # an Idempotency-Key's repeat: nothing new was accepted
                count_uploads("replayed", g.replayed_uploads)
            elif response.status_code in (200, 202):  # 200: accepted and answered in one request (?wait=)
                count_uploads("accepted", g.get("accepted_uploads", 1))
            else:
                count_uploads(g.get("error_code", f"http_{response.status_code}"))
        return response

    app.register_blueprint(bp)
