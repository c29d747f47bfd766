"""Wake long-polling requests when their result lands, instead of polling Redis in a loop.

The worker PUBLISHes every final status document on one channel (shared/statuses.py); one subscription
per web process hears them all and hands each document to the requests waiting on its id, so a woken
request answers without reading Redis or MySQL again. The listener outlives any error: it logs it,
waits a moment and subscribes again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis

from shared.errors import REDIS_ERRORS
from shared.statuses import FINISHED_CHANNEL, finished_document

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0


class Subscription:
    """What one waiting request has heard: the final documents published for its ids, and a wake-up."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self._event = threading.Event()

    def deliver(self, doc: dict[str, Any]) -> None:
        """Keep a published final document and wake the request."""
        self.docs[doc["task_id"]] = doc
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until something was delivered since the last wait, or timeout; whether something was."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def is_set(self) -> bool:
        """Whether anything was delivered and not yet waited for."""
        return self._event.is_set()


class ResultWaiter:
    """Per-process registry of requests waiting for a task's final result, fed by one pub/sub listener."""

    def __init__(self, client: Redis, max_waiting: int) -> None:
        self._client = client
        self._waiting: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._listener_pid: int | None = None
        # A bound on the requests one process holds open (a greenlet each under gevent, a thread each under
        # gthread): past this many, answer at once.
        self._slots = threading.BoundedSemaphore(max_waiting) if max_waiting > 0 else None

    @contextmanager
    def slot(self, wait: float) -> Iterator[bool]:
        """Whether this request may wait `wait` seconds now (False for no wait); released when the block ends."""
        if self._slots is None or wait <= 0:
            yield False
            return
        taken = self._slots.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                self._slots.release()

    @contextmanager
    def subscription(self, *task_ids: str) -> Iterator[Subscription]:
        """What is published for the tasks from now on (register before reading, or before enqueuing)."""
        self._ensure_listener()
        subscription = Subscription()
        with self._lock:
            for task_id in task_ids:
                self._waiting.setdefault(task_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                for task_id in task_ids:
                    waiting = self._waiting.get(task_id)
                    if waiting is not None:
                        waiting.discard(subscription)
                        if not waiting:
                            del self._waiting[task_id]

    def _ensure_listener(self) -> None:
        # Started in the process that serves requests: gunicorn forks its workers, threads don't follow.
        with self._lock:
            if self._listener_pid != os.getpid():
                self._listener_pid = os.getpid()
                threading.Thread(target=self._listen, name="result-listener", daemon=True).start()

    def _wake(self, doc: dict[str, Any]) -> None:
        with self._lock:
            for subscription in self._waiting.get(doc["task_id"], ()):
                subscription.deliver(doc)

    def _listen(self) -> None:
        while True:
            try:
                self._listen_once()
            except REDIS_ERRORS as exc:
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
                doc = finished_document(message["data"])
                if doc is not None:
                    self._wake(doc)
        finally:
            pubsub.close()
