"""Prometheus metrics of a worker process, served on WORKER_METRICS_PORT (threads pool: one process, one port)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared.schema import State

INFERENCE = Histogram("digits_inference_seconds", "One model call for a batch",
                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
BATCH_SIZE = Histogram("digits_batch_size", "Uploads per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_SECONDS = Histogram("digits_batch_seconds", "A whole batch: read, preprocess, predict, write",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
QUEUE_WAIT = Histogram("digits_queue_wait_seconds", "From the upload's record to its answer",
                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
PREDICTIONS = Counter("digits_predictions_total", "Successful predictions by digit", ["digit"])
FAILURES = Counter("digits_failures_total", "Uploads that ended as FAILURE")
MODEL = Gauge("digits_model_info", "The model this worker serves (value 1)", ["version", "device"])
PURGED = Counter("digits_purged_total", "What retention removed: image bytes, whole rows, idempotency keys",
                 ["what"])
WEBHOOK_ATTEMPTS = Counter("digits_webhook_attempts_total", "Webhook POSTs by outcome: delivered, retry, gave_up",
                           ["outcome"])


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def observe_batch(size: int, seconds: float, docs: Iterable[dict[str, Any]]) -> None:
    """Record one batch and the outcome of each of its uploads."""
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)
    for doc in docs:
        if doc["state"] == State.SUCCESS:
            PREDICTIONS.labels(digit=str(doc["digit"])).inc()
        elif doc["state"] == State.FAILURE:
            FAILURES.inc()
        wait = _seconds(doc.get("created_at"), doc.get("finished_at"))
        if wait is not None:
            QUEUE_WAIT.observe(wait)
