"""Per-process worker resources (database pool, model), created after fork and kept for the process's life."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from shared import imaging
from shared.config import Settings, get_settings
from shared.db import make_engine, make_session_factory
from shared.queue import store_statuses
from worker.batcher import MicroBatcher
from worker.metrics import observe_batch
from worker.model import Predictor, load_predictor
from worker.pipeline import run_batch

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """What one worker process holds: a session factory on its own pool and its own model."""

    settings: Settings
    session_factory: sessionmaker[Session]
    predictor: Predictor
    redis: Redis
    name: str
    batcher: MicroBatcher | None = None

    def predict(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Predict and store a batch of uploads by task id: rows first (the truth), then Redis (the cache)."""
        started = time.perf_counter()
        docs = run_batch(task_ids, self.session_factory, self.predictor, self.name, imaging.preprocess)
        store_statuses(self.redis, docs.values(), self.settings.result_ttl_seconds)
        observe_batch(len(task_ids), time.perf_counter() - started, docs.values())
        log.info("predicted %d upload(s)", len(docs), extra={"task_ids": list(docs), "batch_size": len(task_ids)})
        return docs

    def predict_one(self, task_id: str) -> dict[str, Any]:
        """Predict one upload together with whatever other tasks of this process are waiting."""
        assert self.batcher is not None
        return self.batcher.submit(task_id)


_lock = threading.Lock()
_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    """This process's runtime, built on first use; call it only in the process that does the work."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = get_settings()
            predictor = load_predictor(settings.model_path, threads=settings.worker_tf_threads)
            # A connection for each task thread that may run a batch at once, kept open: no connect churn.
            engine = make_engine(settings.database_url, pool_size=settings.worker_concurrency, max_overflow=0)
            runtime = WorkerRuntime(
                settings=settings,
                session_factory=make_session_factory(engine),
                predictor=predictor,
                redis=Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5),
                name=f"{socket.gethostname()}:{os.getpid()}",
            )
            runtime.batcher = MicroBatcher(runtime.predict, max_batch=settings.batch_max_size,
                                           max_wait=settings.batch_max_wait_ms / 1000)
            _runtime = runtime
        return _runtime
