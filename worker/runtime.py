"""Per-process worker resources (database pool, model), created after fork and kept for the process's life."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared import imaging
from shared.config import Settings, get_settings
from shared.db import make_engine, make_session_factory
from worker.model import Predictor, load_predictor
from worker.pipeline import run_batch

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    """What one worker process holds: a session factory on its own pool and its own model."""

    settings: Settings
    session_factory: sessionmaker[Session]
    predictor: Predictor
    name: str

    def predict(self, task_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Predict and store a batch of uploads by task id."""
        return run_batch(task_ids, self.session_factory, self.predictor, self.name, imaging.preprocess)


_lock = threading.Lock()
_runtime: WorkerRuntime | None = None


def get_runtime() -> WorkerRuntime:
    """This process's runtime, built on first use; call it only in the process that does the work."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = get_settings()
            predictor = load_predictor(settings.model_path, threads=settings.worker_tf_threads)
            engine = make_engine(settings.database_url)
            _runtime = WorkerRuntime(
                settings=settings,
                session_factory=make_session_factory(engine),
                predictor=predictor,
                name=f"{socket.gethostname()}:{os.getpid()}",
            )
        return _runtime
