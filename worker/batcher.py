"""Micro-batching inside one worker process: many task threads, one model call and one write per batch.

Why our own and not celery-batches: with celery-batches a batch is one job, acked as a whole when it
returns (even when it failed), its requests' results must be stored by hand, Flower sees no per-task
outcome, and a killed child leaves the whole batch unacked until the visibility timeout. Here every
upload stays an ordinary Celery task (acks late, retries, result, events), run by the threads pool;
the tasks only meet in this batcher, which waits at most `max_wait` for company before it runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RunBatch = Callable[[Sequence[str]], dict[str, dict[str, Any]]]


@dataclass
class _Item:
    task_id: str
    future: Future[dict[str, Any]] = field(default_factory=Future)


class MicroBatcher:
    """Collect task ids from many threads and hand them to `run_batch` in groups of at most `max_batch`."""

    def __init__(self, run_batch: RunBatch, max_batch: int = 128, max_wait: float = 0.002) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Queue one task id and block until its batch ran; its status document, or the batch's error."""
        self._ensure_running()
        item = _Item(task_id)
        self._queue.put(item)
        return item.future.result(timeout)

    def _ensure_running(self) -> None:
        # Started on first use, in the process that serves tasks (never before a fork).
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
                self._thread.start()

    def _collect(self) -> list[_Item]:
        """Block for the first item, then take what arrives within `max_wait`, up to `max_batch`."""
        items = [self._queue.get()]
        deadline = time.monotonic() + self._max_wait
        while len(items) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _loop(self) -> None:
        while True:
            items = self._collect()
            try:
                docs = self._run_batch([item.task_id for item in items])
            except Exception as exc:  # every task of the batch sees the error and retries on its own
                log.warning("batch of %d failed: %r", len(items), exc)
                for item in items:
                    item.future.set_exception(exc)
                continue
            for item in items:
                doc = docs.get(item.task_id)
                if doc is None:
                    item.future.set_exception(KeyError(f"no result for task {item.task_id}"))
                else:
                    item.future.set_result(doc)
