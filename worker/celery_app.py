"""The worker's Celery app: `celery -A worker.celery_app worker`.

Celery finds the app as a module attribute, so it is made here from the environment's settings; what a worker
process does around its tasks (warm-up, metrics, recovery, presence, clean stop) is worker/bootstrap.py's.
"""

from __future__ import annotations

from celery import Celery

from shared.config import Settings, get_settings
from shared.queue import make_celery
from worker.bootstrap import Bootstrap


def make_worker_app(settings: Settings) -> Celery:
    """The Celery app a worker consumes with, configured from these settings."""
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
    return app


settings = get_settings()
app = make_worker_app(settings)
bootstrap = Bootstrap(settings, app)
bootstrap.connect()
