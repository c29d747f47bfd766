"""Celery tasks: thin wrappers around the pipeline."""

from __future__ import annotations

from typing import Any

from shared.tasks import PREDICT_BATCH_TASK, PREDICT_TASK
from worker.celery_app import app
from worker.pipeline import INFRASTRUCTURE_ERRORS

# The database or Redis may be away for a while: retry with backoff rather than drop a result.
RETRY = {
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


@app.task(name=PREDICT_TASK, **RETRY)
def predict(task_id: str) -> dict[str, Any]:
    """Predict one stored upload, sharing a model call with the other tasks in flight; its status document."""
    from worker.runtime import get_runtime

    return get_runtime().predict_one(task_id)


@app.task(name=PREDICT_BATCH_TASK, **RETRY)
def predict_batch(task_ids: list[str]) -> int:
    """Predict the uploads of one multi-file request together; how many."""
    from worker.runtime import get_runtime

    return len(get_runtime().predict(task_ids))
