"""The Celery configuration shared by the web (producer) and the workers (consumers)."""

from __future__ import annotations

from celery import Celery

from shared.config import Settings

# Where Celery's Redis result backend keeps a task's result; the web reads it directly (see result_key).
RESULT_KEY_PREFIX = "celery-task-meta-"


def result_key(task_id: str) -> str:
    """The Redis key of a task's result document, as Celery's Redis backend names it."""
    return f"{RESULT_KEY_PREFIX}{task_id}"


def make_celery(settings: Settings, main: str = "digits", *, results: bool = True) -> Celery:
    """A Celery app on Redis, configured so that an accepted task is not lost by a dying worker.

    A producer that never waits on results (the web) passes results=False: with a result backend,
    Celery subscribes the sender to every task's result channel, which the web has no use for.
    """
    app = Celery(main, broker=settings.redis_url, backend=settings.redis_url if results else None)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue_name,
        # Ack after the result is written, and give the task back if the worker process dies mid-way:
        # a redelivery is harmless because the database write is idempotent by task id.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Redis re-delivers an unacked message after this long; it must exceed the longest task.
        broker_transport_options={"visibility_timeout": 3600, "socket_connect_timeout": 2, "socket_timeout": 5},
        result_backend_transport_options={"socket_connect_timeout": 2, "socket_timeout": 5},
        result_expires=settings.result_ttl_seconds,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        # Flower (and any monitor) sees every task even when it started after the workers.
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
    )
    return app
