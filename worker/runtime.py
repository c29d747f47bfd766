"""Per-process worker resources (database pool, model), created after fork and kept for the process's life."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis import Redis
from sqlalchemy import Engine

from shared import preprocessing
from shared.config import Settings, get_settings
from shared.db import make_service_engine
from shared.statuses import cache_final
from worker.batcher import MicroBatcher
from worker.heartbeat import Heartbeat
from worker.leases import Leases
from worker.metrics import MODEL, observe_batch
from worker.model import Predictor, load_predictor
from worker.pipeline import Pipeline
from worker.rollout import Stamp
from worker.webhooks import Deliverer, make_deliverer

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """What one worker process holds: an engine on its own pool, its own model and its pipeline."""

    settings: Settings
    engine: Engine
    predictor: Predictor
    redis: Redis
    name: str
    pipeline: Pipeline
    batcher: MicroBatcher  # the process's task threads meet here; it calls `predict` with each batch
    # This process's webhook sender, started by the worker's warm-up (None without WEBHOOK_SECRET).
    deliverer: Deliverer | None = None
    model_stamp: Stamp | None = None  # the model file the serving model was loaded from (worker/rollout.py)

    def predict(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Predict and store a batch of uploads by task id; each id's status document."""
        started = time.perf_counter()
        docs = self.pipeline.run(task_ids)
        observe_batch(len(task_ids), time.perf_counter() - started, docs.values())
        # One line per batch (no result documents: those are in MySQL); per-task lines only at DEBUG.
        log.info("predicted %d upload(s): %s", len(docs), " ".join(docs),
                 extra={"task_ids": list(docs), "batch_size": len(task_ids)})
        return docs

    def swap_model(self, predictor: Predictor) -> Predictor:
        """Serve `predictor` from the next batch on (batches in flight keep theirs); the model it replaces."""
        old, self.predictor = self.predictor, predictor
        self.pipeline.model = predictor  # one reference assignment: a batch reads it once
        MODEL.remove(old.version, old.device)
        MODEL.labels(version=predictor.version, device=predictor.device).set(1)
        log.info("model %s %s now serves (was %s)", predictor.name, predictor.version, old.version)
        return old

    def start_batching(self) -> None:
        """Start the batch pipeline's runners, and with them its heartbeat, before the first task arrives."""
        self.batcher.start()

    def predict_one(self, task_id: str) -> dict[str, Any]:
        """Predict one upload together with whatever other tasks of this process are waiting."""
        return self.batcher.submit(task_id)

    def predict_many(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Predict the uploads of one message, sharing model calls with the other tasks of this process."""
        return self.batcher.submit_many(task_ids)


# One runtime per worker process, built after any fork by the process's warm-up (worker/bootstrap.py) with the
# settings the Celery app was made from; the tasks find it here.
_lock = threading.Lock()
_runtime: WorkerRuntime | None = None


def install(settings: Settings) -> WorkerRuntime:
    """Build this process's runtime from these settings, once; call it only in the process that does the work."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _build(settings)
        return _runtime


def current() -> WorkerRuntime:
    """This process's runtime (a task that arrives before the warm-up builds it from the environment)."""
    return _runtime if _runtime is not None else install(get_settings())


def load_model(settings: Settings) -> Predictor:
    """Load the model at MODEL_PATH as the settings say (at start, and at each rollout)."""
    return load_predictor(settings.model_path, settings.worker_inference, threads=settings.worker_tf_threads,
                          cache_dir=settings.model_cache_dir)


def preprocessor(settings: Settings) -> Callable[[bytes], np.ndarray]:
    """Preprocessing under the configured image limits: the worker decodes what the web checked, by the same rules."""
    return functools.partial(preprocessing.preprocess, limits=settings.image_limits)


def _one_opencv_thread() -> None:
    """Let OpenCV preprocess on the calling thread only."""
    # A host runs a worker process per core, so OpenCV's own pool only competes with them: its labelling of a
    # 384-px photo costs 0.78 ms of CPU on two threads, 0.38 on one.
    import cv2

    cv2.setNumThreads(1)


def _build(settings: Settings) -> WorkerRuntime:
    """Load the model and open the pools; called once per process, after any fork."""
    stamp = Stamp.of(settings.model_path)  # before loading: a file replaced meanwhile is loaded again later
    _one_opencv_thread()
    predictor = load_model(settings)
    # A connection for each task thread that may run a batch at once, plus the micro-batcher's, the lease
    # thread's and recovery's, kept open: no connect churn.
    engine = make_service_engine(settings, pool_size=settings.worker_concurrency + 3, max_overflow=0)
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    name = f"{socket.gethostname()}:{os.getpid()}"

    def publish(docs: Iterable[dict[str, Any]]) -> None:
        # After the rows (the truth) are committed: a death in between leaves only a cold cache.
        cache_final(redis, docs, settings.result_ttl_seconds)

    deliverer = make_deliverer(settings)
    pipeline = Pipeline(engine=engine, model=predictor, worker_name=name, preprocess=preprocessor(settings),
                        leases=Leases(engine, settings.sweep_after_seconds), max_attempts=settings.max_attempts,
                        publish=publish, webhooks=deliverer)

    def run_batch(task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return runtime.predict(task_ids)  # the runtime below: the batcher runs nothing before it exists

    batcher = MicroBatcher(run_batch, max_batch=settings.batch_max_size, max_wait=settings.batch_max_wait_ms / 1000,
                           runners=settings.batch_runners,
                           heartbeat=Heartbeat(settings.worker_heartbeat_file, settings.worker_stall_seconds))
    runtime = WorkerRuntime(settings=settings, engine=engine, predictor=predictor, redis=redis, name=name,
                            pipeline=pipeline, batcher=batcher, deliverer=deliverer, model_stamp=stamp)
    return runtime
