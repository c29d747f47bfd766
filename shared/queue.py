"""The Celery configuration shared by the web (producer) and the workers (consumers), enqueueing, the queue's length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis import Redis

from shared.kombu_redis import Layout
from shared.tasks import PREDICT_BATCH_TASK, PREDICT_TASK

CHUNK = 64  # task ids per message when several are enqueued at once


def queue_length(client: Redis, queue: str, layout: Layout | None = None) -> int:
    """Messages waiting on the queue (not yet reserved by a worker); a batch upload is one message."""
    pipe = client.pipeline(transaction=False)
    for key in (layout or Layout()).queue_keys(queue):  # one list per priority step
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def make_celery(redis_url: str, queue_name: str, main: str = "digits", socket_timeout: float = 5.0) -> Celery:
    """A Celery app on Redis, configured so that an accepted task is not lost by a dying worker.

    No Celery result backend: tasks ignore their results and the worker caches final status documents
    itself (shared/statuses.py); with a backend, Celery would also subscribe every sender to every
    task's result channel.
    """
    app = Celery(main, broker=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_name,
        # Ack after the result is written, and give the task back if the worker process dies mid-way:
        # a redelivery is harmless because the database write is idempotent by task id.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Redis re-delivers an unacked message after this long; it must exceed the longest task.
        broker_transport_options={"visibility_timeout": 3600, "socket_connect_timeout": min(2.0, socket_timeout),
                                  "socket_timeout": socket_timeout},
        task_ignore_result=True,
        # STARTED would cost a Redis write per task for a state that lasts a few milliseconds in a
        # micro-batch; the row's started_at records it.
        task_track_started=False,
        broker_connection_retry_on_startup=True,
        # Task events cost the worker a Redis publish each (about 15% of its CPU under load), so they are
        # off until a monitor asks: Flower enables them when it starts and every few seconds after.
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


class ChannelLost(KombuOperationalError):
    """kombu closed the channel a publish was using while that publish retried: the broker link broke mid-way."""


def enqueue(producer: Celery, queue: str, task_ids: Sequence[str], retry_policy: Mapping[str, Any] | None = None
            ) -> None:
    """Put uploads on the queue: one upload as its own task (its id is the task's), several as batch messages.

    A broken link raises kombu's OperationalError (ChannelLost included), never anything a caller cannot expect.
    """
    options: dict[str, Any] = {"queue": queue}
    if retry_policy is not None:
        options |= {"retry": True, "retry_policy": dict(retry_policy)}
    try:
        if len(task_ids) == 1:
            producer.send_task(PREDICT_TASK, args=[task_ids[0]], task_id=task_ids[0], **options)
            return
        for start in range(0, len(task_ids), CHUNK):
            producer.send_task(PREDICT_BATCH_TASK, args=[list(task_ids[start:start + CHUNK])], **options)
    except AttributeError as exc:
        # kombu 5.7: a retrying publish first declares the queue with its own retry; when that declare hits a
        # broken link, it reconnects and closes every channel of the connection, including the one the outer
        # publish then writes on (kombu#2275): `'NoneType' object has no attribute 'client'`. The producer goes
        # back to the pool without a channel and gets a fresh one; this upload is refused like any broker error.
        if not _raised_in_kombu(exc):
            raise
        raise ChannelLost(f"the broker link broke during a publish ({exc})") from exc


def _raised_in_kombu(exc: BaseException) -> bool:
    """Whether the innermost frame of the exception's traceback is kombu's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "kombu" in Path(tb.tb_frame.f_code.co_filename).parts
