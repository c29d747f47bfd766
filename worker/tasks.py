"""Celery tasks: thin wrappers around the pipeline."""

from __future__ import annotations

from shared.errors import INFRA_ERRORS
from shared.tasks import PREDICT_BATCH_TASK, PREDICT_TASK
from worker.celery_app import app

# The database or Redis may be away for a while: retry with backoff rather than drop a result. The waits are
# capped at 10 s: a message retried through a longer outage otherwise sat up to a minute after the database came
# back (seen: two uploads of a 10 s outage finished 47 s after it). Retries are cheap failed connects, and only
# the messages a worker has reserved (its prefetch) retry at all.
RETRY = {
    "autoretry_for": INFRA_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 10,
    "retry_jitter": True,
    "max_retries": None,
}


# Results go to MySQL and the status cache, never into Celery's log line: a task returns its final state only.


@app.task(name=PREDICT_TASK, **RETRY)
def predict(task_id: str) -> str:
    """Predict one stored upload, sharing a model call with the other tasks in flight; its final state."""
    from worker import runtime

    return str(runtime.current().predict_one(task_id)["state"])


@app.task(name=PREDICT_BATCH_TASK, **RETRY)
def predict_batch(task_ids: list[str]) -> int:
    """Predict the uploads of one message (a multi-file request, or uploads the web coalesced); how many."""
    from worker import runtime

    return len(runtime.current().predict_many(task_ids))
