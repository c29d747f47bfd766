"""Wake long-polling requests when their result lands, instead of polling Redis in a loop.

The worker PUBLISHes every final status document on one channel (shared/statuses.py); one subscription
per web process hears them all and sets the events of the requests waiting on those ids. The listener
outlives any error: it logs it, waits a moment and subscribes again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import RedisError

from shared.statuses import FINISHED_CHANNEL, finished_task_id

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0


class ResultWaiter:
    """Per-process registry of requests waiting for a task's final result, fed by one pub/sub listener."""

    def __init__(self, client: Redis, max_waiting: int) -> None:
        self._client = client
        self._events: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._listener_pid: int | None = None
        # A waiting request holds one of the process's few threads: past this many, answer at once.
        self._slots = threading.BoundedSemaphore(max_waiting) if max_waiting > 0 else None

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Whether this request may hold a long poll now (released when the block ends)."""
        if self._slots is None:
            yield False
            return
        taken = self._slots.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                self._slots.release()

    @contextmanager
    def subscription(self, *task_ids: str) -> Iterator[threading.Event]:
        """An event set when a final result of one of the tasks is published; register before reading."""
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            for task_id in task_ids:
                self._events.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                for task_id in task_ids:
                    waiting = self._events.get(task_id)
                    if waiting is not None:
                        waiting.discard(event)
                        if not waiting:
                            del self._events[task_id]

    def _ensure_listener(self) -> None:
        # Started in the process that serves requests: gunicorn forks its workers, threads don't follow.
        with self._lock:
            if self._listener_pid != os.getpid():
                self._listener_pid = os.getpid()
                threading.Thread(target=self._listen, name="result-listener", daemon=True).start()

    def _wake(self, task_id: str) -> None:
        with self._lock:
            for event in self._events.get(task_id, ()):
                event.set()

    def _listen(self) -> None:
        while True:
            try:
                self._listen_once()
            except (RedisError, OSError) as exc:
                # Waiters fall back to re-reading the state every second until this reconnects.
                log.warning("result listener lost Redis (%s); reconnecting", exc)
            except Exception:  # anything else must not silence long polls for the process's life either
                log.exception("result listener failed; restarting it")
            time.sleep(RESTART_DELAY_SECONDS)

    def _listen_once(self) -> None:
        """Subscribe and wake waiters until the connection breaks."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(FINISHED_CHANNEL)
            for message in pubsub.listen():
                task_id = finished_task_id(message["data"])
                if task_id is not None:
                    self._wake(task_id)
        finally:
            pubsub.close()
