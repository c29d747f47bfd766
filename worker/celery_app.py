"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

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

from shared.config import get_settings
from shared.logs import formatter
from shared.queue import enqueue, make_celery

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings.redis_url, settings.queue_name)
app.conf.update(
    include=["worker.tasks"],
    # Threads, not prefork: the tasks of one process meet in its micro-batcher (worker/batcher.py) and
    # share one model; a model call releases the GIL, and the rest is I/O. Scale with processes/replicas.
    worker_pool=settings.worker_pool,
    worker_concurrency=settings.worker_concurrency,
    # Enough messages in hand to fill a batch; acks late, so a dying worker gives them back.
    worker_prefetch_multiplier=settings.worker_prefetch_multiplier,
)


# Celery's own line per task ("received", "succeeded in ...: <result>"): at INFO they cost the worker a
# formatted line per upload; the pipeline logs one line per batch with its task ids instead.
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, loglevel: int | str | None = None, **_: Any) -> None:
    """LOG_FORMAT=json: Celery's handlers write JSON lines too (with task ids from our records); per-task lines
    only at DEBUG."""
    if settings.log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(formatter("json"))
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if level is None or level > logging.DEBUG:  # the worker's --loglevel
        for name in PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


_presence: list[Any] = []  # this process's Presence, once warmed up
_deliverers: list[Any] = []  # this process's webhook Deliverer, once warmed up (none without WEBHOOK_SECRET)
_watchers: list[Any] = []  # this process's ModelWatcher, once warmed up


def _warm_up(serve_metrics: bool) -> None:
    # Imported here: a prefork parent must never load TensorFlow (its forked children would hang).
    from shared.kombu_redis import Layout
    from worker.metrics import MODEL
    from worker.presence import Presence
    from worker.recovery import Recovery, RecoveryLoop
    from worker.retention import Purge
    from worker.runtime import get_runtime

    runtime = get_runtime()
    runtime.start_batching()  # its runners beat the heartbeat from now on, work or none
    log.info("worker process %s ready: model %s on %s", runtime.name, runtime.predictor.version,
             runtime.predictor.device)
    MODEL.labels(version=runtime.predictor.version, device=runtime.predictor.device).set(1)
    if serve_metrics and settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port)
            log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
        except OSError as exc:  # a second worker on the same host: predictions matter more than metrics
            log.warning("worker metrics not served on port %d: %s", settings.worker_metrics_port, exc)
    recovery = Recovery(runtime.engine, runtime.redis, settings.queue_name, _enqueue,
                        settings.sweep_after_seconds, settings.max_attempts, runtime.pipeline.publish,
                        purge=Purge.from_settings(runtime.engine, runtime.redis, settings),
                        layout=Layout.of(app.conf.broker_transport_options))
    RecoveryLoop(recovery, runtime.redis, settings.queue_name, runtime.name, settings.sweep_interval_seconds).start()
    presence = Presence(runtime.redis, settings.queue_name, runtime.name, runtime.predictor.version,
                        runtime.predictor.device)
    presence.start()
    _presence.append(presence)
    _watch_model(runtime, presence)
    # Webhooks on threads of their own, started here (after any fork): a slow receiver never holds a batch.
    if runtime.deliverer is not None:
        runtime.deliverer.start()
        _deliverers.append(runtime.deliverer)


def _watch_model(runtime: Any, presence: Any) -> None:
    """Swap in a new model at MODEL_PATH between batches (worker/rollout.py), and say so where operators look."""
    from worker.rollout import ModelWatcher
    from worker.runtime import load_model

    def swap(predictor: Any) -> None:
        runtime.swap_model(predictor)
        presence.serving(predictor.version, predictor.device)

    watcher = ModelWatcher(settings.model_path, settings.model_reload_seconds, lambda: load_model(settings), swap,
                           runtime.model_stamp)
    watcher.start()
    _watchers.append(watcher)


def _enqueue(task_ids: Sequence[str]) -> None:
    """Put lost uploads back on the queue (recovery's way of re-enqueuing)."""
    enqueue(app, settings.queue_name, task_ids)


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork: load the model in each child right after fork, so the first task is not slow."""
    _warm_up(serve_metrics=False)  # children would fight over one port; metrics need the threads pool


@worker_ready.connect
def _load_in_worker(sender: Any, **_: Any) -> None:
    """Threads/solo pools: load the model in the worker process itself before it takes tasks."""
    pool_cls = sender.controller.pool_cls
    if not issubclass(pool_cls, PreforkPool):
        _warm_up(serve_metrics=True)


@worker_shutdown.connect
@worker_process_shutdown.connect
def _withdraw(**_: Any) -> None:
    """A clean stop: the page stops counting this process at once instead of after the TTL; webhook attempts in
    flight are recorded (briefly waited for) rather than sent again after their hold runs out."""
    while _watchers:
        _watchers.pop().stop()
    while _presence:
        _presence.pop().stop()
    while _deliverers:
        _deliverers.pop().stop()
