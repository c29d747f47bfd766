"""A worker process's life around its tasks: log format, warm-up after any fork, and a clean stop.

`celery -A worker.celery_app worker` makes the app and connects these handlers to Celery's signals; the settings
and the app are passed in, as the web's are to `create_app`. Nothing here runs at import.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery import Celery
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import start_http_server

from shared.config import Settings
from shared.logs import formatter
from shared.queue import enqueue

log = logging.getLogger(__name__)

# Celery's own line per task ("received", "succeeded in ...: <result>"): at INFO they cost the worker a
# formatted line per upload; the pipeline logs one line per batch with its task ids instead.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


class Stoppable(Protocol):
    """A thread-backed service the warm-up starts and a stop ends (presence, webhook sender, model watcher)."""

    def stop(self) -> None: ...


class Bootstrap:
    """What one worker process starts besides its tasks, and stops when it ends."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._started: list[Stoppable] = []

    def connect(self) -> None:
        """Connect the handlers to Celery's signals (weakly referenced by Celery: the caller keeps this object)."""
        after_setup_logger.connect(self.log_format, weak=False)
        after_setup_task_logger.connect(self.log_format, weak=False)
        worker_process_init.connect(self._in_child, weak=False)
        worker_ready.connect(self._in_worker, weak=False)
        worker_shutdown.connect(self.stop, weak=False)
        worker_process_shutdown.connect(self.stop, weak=False)

    def log_format(self, logger: logging.Logger, loglevel: int | str | None = None, **_: Any) -> None:
        """LOG_FORMAT=json: Celery's handlers write JSON lines too; per-task lines only at DEBUG."""
        if self.settings.log_format == "json":
            for handler in logger.handlers:
                handler.setFormatter(formatter("json"))
        level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
        if level is None or level > logging.DEBUG:  # the worker's --loglevel
            for name in PER_TASK_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)

    def _in_child(self, **_: Any) -> None:
        """Prefork: load the model in each child right after fork, so the first task is not slow."""
        self.warm_up(serve_metrics=False)  # children would fight over one port; metrics need the threads pool

    def _in_worker(self, sender: Any, **_: Any) -> None:
        """Threads/solo pools: load the model in the worker process itself before it takes tasks."""
        if not issubclass(sender.controller.pool_cls, PreforkPool):
            self.warm_up(serve_metrics=True)

    def warm_up(self, serve_metrics: bool) -> None:
        """Build this process's runtime and start what runs beside the tasks."""
        # Imported here: a prefork parent must never load TensorFlow (its forked children would hang).
        from worker import runtime as runtimes
        from worker.metrics import MODEL

        runtime = runtimes.install(self.settings)
        runtime.start_batching()  # its runners beat the heartbeat from now on, work or none
        log.info("worker process %s ready: model %s on %s", runtime.name, runtime.predictor.version,
                 runtime.predictor.device)
        MODEL.labels(version=runtime.predictor.version, device=runtime.predictor.device).set(1)
        if serve_metrics:
            self._serve_metrics()
        self._start_recovery(runtime)
        self._start_presence_and_rollouts(runtime)
        # Webhooks on threads of their own, started here (after any fork): a slow receiver never holds a batch.
        if runtime.deliverer is not None:
            runtime.deliverer.start()
            self._started.append(runtime.deliverer)

    def stop(self, **_: Any) -> None:
        """A clean stop: the page stops counting this process at once instead of after the TTL; webhook attempts in
        flight are recorded (briefly waited for) rather than sent again after their hold runs out."""
        while self._started:
            self._started.pop(0).stop()

    def _serve_metrics(self) -> None:
        port = self.settings.worker_metrics_port
        if not port:
            return
        try:
            start_http_server(port)
            log.info("worker metrics on :%d/metrics", port)
        except OSError as exc:  # a second worker on the same host: predictions matter more than metrics
            log.warning("worker metrics not served on port %d: %s", port, exc)

    def _start_recovery(self, runtime: Any) -> None:
        from shared.kombu_redis import Layout
        from worker.recovery import Recovery, RecoveryLoop
        from worker.retention import Purge

        cfg = self.settings
        recovery = Recovery(runtime.engine, runtime.redis, cfg.queue_name, self._enqueue, cfg.sweep_after_seconds,
                            cfg.max_attempts, runtime.pipeline.publish,
                            purge=Purge.from_settings(runtime.engine, runtime.redis, cfg),
                            layout=Layout.of(self.app.conf.broker_transport_options))
        RecoveryLoop(recovery, runtime.redis, cfg.queue_name, runtime.name, cfg.sweep_interval_seconds).start()

    def _start_presence_and_rollouts(self, runtime: Any) -> None:
        """Announce this process, and swap in a new model at MODEL_PATH between batches (worker/rollout.py)."""
        from worker.presence import Presence
        from worker.rollout import ModelWatcher
        from worker.runtime import load_model

        presence = Presence(runtime.redis, self.settings.queue_name, runtime.name, runtime.predictor.version,
                            runtime.predictor.device)
        presence.start()

        def swap(predictor: Any) -> None:
            runtime.swap_model(predictor)
            presence.serving(predictor.version, predictor.device)

        watcher = ModelWatcher(self.settings.model_path, self.settings.model_reload_seconds,
                               lambda: load_model(self.settings), swap, runtime.model_stamp)
        watcher.start()
        self._started += [watcher, presence]

    def _enqueue(self, task_ids: Any) -> None:
        """Put lost uploads back on the queue (recovery's way of re-enqueuing)."""
        enqueue(self.app, self.settings.queue_name, task_ids)
