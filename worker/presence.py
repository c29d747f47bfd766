"""A worker process's announcement in Redis: who serves the queue, with which model, renewed while alive."""

from __future__ import annotations

import logging
import threading
from typing import Any

from redis import Redis

from shared.schema import iso, utcnow
from shared.workers import announce_worker, withdraw_worker

log = logging.getLogger(__name__)

# Short, so the page's worker count is current within seconds of a worker dying (one HSET per interval).
INTERVAL_SECONDS = 5.0
# Three missed renewals and the worker is taken for gone (killed, frozen or cut off from Redis).
TTL_SECONDS = 3 * INTERVAL_SECONDS


class Presence:
    """Announces this process every INTERVAL_SECONDS in a daemon thread; `stop` withdraws it."""

    def __init__(self, redis: Redis, queue: str, name: str, model_version: str, device: str) -> None:
        self._redis = redis
        self._queue = queue
        self._name = name
        self._info: dict[str, Any] = {"name": name, "model_version": model_version, "device": device,
                                      "since": iso(utcnow())}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Announce now (the page sees the worker at once), then keep renewing in the background."""
        self._announce()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="presence", daemon=True)
            self._thread.start()

    def serving(self, model_version: str, device: str) -> None:
        """Announce a new model at once (a rollout): the page and /system list what each process serves."""
        self._info = {**self._info, "model_version": model_version, "device": device}
        self._announce()

    def stop(self) -> None:
        """Stop renewing and withdraw the announcement."""
        self._stop.set()
        try:
            withdraw_worker(self._redis, self._queue, self._name)
        except Exception as exc:  # shutting down anyway: the TTL removes it soon
            log.warning("could not withdraw worker %s: %s", self._name, exc)

    def _announce(self) -> None:
        try:
            announce_worker(self._redis, self._queue, self._name, self._info, TTL_SECONDS)
        except Exception as exc:  # Redis away: predictions go on, the page shows no worker for a while
            log.warning("could not announce worker %s: %s", self._name, exc)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self._announce()
