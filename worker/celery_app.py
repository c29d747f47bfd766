"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from shared.config import get_settings
from shared.queue import make_celery

log = logging.getLogger(__name__)

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Load the model and open the pool in each child right after fork, so the first task is not slow."""
    # Imported here: the parent (which forks) must never load TensorFlow.
    from worker.runtime import get_runtime

    runtime = get_runtime()
    log.info("worker process %s ready: model %s on %s", runtime.name, runtime.predictor.version,
             runtime.predictor.device)
