"""Micro-batching: items from many threads (or greenlets) meet in one call per group.

The web coalesces concurrent uploads into one INSERT and one queue message (web/ingest.py); the worker
coalesces concurrent tasks into one model call and one database write (worker/batcher.py). Both wait at
most `max_wait` for company, so a lone item is never held up by more than that.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

@dataclass
class _Item(Generic[T, R]):
    value: T
    future: Future[R] = field(default_factory=Future)


class Batcher(Generic[T, R]):
    """Hand items submitted concurrently to `run_batch` in groups of at most `max_batch`, `runners` groups at once.

    `run_batch` returns one outcome per item, in the items' order: its result, or an exception that only
    that item's caller sees; an exception it raises is every caller's.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R | BaseException]], max_batch: int,
                 max_wait: float, name: str = "batcher", runners: int = 1,
                 on_idle: Callable[[], None] | None = None, idle_seconds: float = 5.0) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._name = name
        # More than one runner: while one group waits on the database, the next one is collected and computed.
        self._runners = max(1, runners)
        self._queue: queue.SimpleQueue[_Item[T, R]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Called by a runner that waited `idle_seconds` with nothing to do (a worker's heartbeat).
        self._on_idle = on_idle
        self._idle_seconds = idle_seconds

    def submit(self, value: T, timeout: float | None = None) -> R:
        """Queue one item and block until its group ran; its result, or the error of its group or its own."""
        self._ensure_running()
        item: _Item[T, R] = _Item(value)
        self._queue.put(item)
        return item.future.result(timeout)

    def submit_many(self, values: Sequence[T], timeout: float | None = None) -> list[R]:
        """Queue several items at once (they may share groups with other callers'); their results, in order, or
        the first error among them."""
        self._ensure_running()
        items: list[_Item[T, R]] = [_Item(value) for value in values]
        for item in items:
            self._queue.put(item)
        return [item.future.result(timeout) for item in items]

    def start(self) -> None:
        """Start the runners now (they start on the first submit otherwise); in the process that serves."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        # Started on first use, in the process that serves (never before a fork: threads don't follow one).
        with self._lock:
            while len(self._threads) < self._runners:
                thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _collect(self) -> list[_Item[T, R]]:
        """Block for the first item, then take what arrives within `max_wait`, up to `max_batch`."""
        items = [self._first()]
        deadline = time.monotonic() + self._max_wait
        while len(items) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _first(self) -> _Item[T, R]:
        """Wait for an item; every `idle_seconds` of waiting, say so to `on_idle`."""
        if self._on_idle is None:
            return self._queue.get()
        while True:
            try:
                return self._queue.get(timeout=self._idle_seconds)
            except queue.Empty:
                self._on_idle()

    def _loop(self) -> None:
        while True:
            items = self._collect()
            try:
                outcomes = self._run_batch([item.value for item in items])
                if len(outcomes) != len(items):
                    raise RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(items)} items")
            except Exception as exc:  # every caller of the group sees the error and decides for itself
                log.warning("%s: a group of %d failed: %r", self._name, len(items), exc)
                outcomes = [exc] * len(items)
            except BaseException as exc:  # the runner ends; its callers must not wait forever
                with self._lock:  # gone before its callers wake: the next submit starts a replacement
                    self._threads = [t for t in self._threads if t is not threading.current_thread()]
                for item in items:
                    item.future.set_exception(exc)
                raise
            for item, outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
