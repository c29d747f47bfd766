"""Celery tasks: thin wrappers around the pipeline."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from shared.tasks import PREDICT_TASK
from worker.celery_app import app


@app.task(
    name=PREDICT_TASK,
    # The database may be away for a while: retry with backoff rather than drop a result.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def predict(task_id: str) -> dict[str, Any]:
    """Predict the digit of one stored upload; the returned status document lands in Redis."""
    from worker.runtime import get_runtime

    return get_runtime().predict_one(task_id)
