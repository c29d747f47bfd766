"""Micro-batching inside one worker process: many task threads, one model call and one write per batch.

Why our own and not celery-batches: with celery-batches a batch is one job, acked as a whole when it
returns (even when it failed), its requests' results must be stored by hand, Flower sees no per-task
outcome, and a killed child leaves the whole batch unacked until the visibility timeout. Here every
upload stays an ordinary Celery task (acks late, retries, result, events), run by the threads pool;
the tasks only meet in this batcher (shared/batching.py), which waits at most `max_wait` for company.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shared.batching import Batcher
from worker.heartbeat import Heartbeat

RunBatch = Callable[[Sequence[str]], dict[str, dict[str, Any]]]


class MicroBatcher:
    """Collect task ids from many threads and hand them to `run_batch` in groups of at most `max_batch`."""

    def __init__(self, run_batch: RunBatch, max_batch: int = 128, max_wait: float = 0.002, runners: int = 1,
                 heartbeat: Heartbeat | None = None) -> None:
        self._run_batch = run_batch
        self._heartbeat = heartbeat or Heartbeat(None, float("inf"))
        # The runners beat when a batch ends and when they wait with nothing to do (worker/heartbeat.py).
        self._batcher: Batcher[str, dict[str, Any]] = Batcher(
            self._documents, max_batch, max_wait, name="micro-batcher", runners=runners,
            on_idle=self._heartbeat.beat, idle_seconds=min(5.0, self._heartbeat.stall_seconds / 4))

    def start(self) -> None:
        """Start the runners (and so the idle heartbeat) before the first task arrives."""
        self._heartbeat.beat()
        self._batcher.start()

    def submit(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Queue one task id and block until its batch ran; its status document, or the batch's error."""
        return self._batcher.submit(task_id, timeout)

    def submit_many(self, task_ids: Sequence[str], timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Queue the task ids of one message together; each id's status document, or the first error."""
        return dict(zip(task_ids, self._batcher.submit_many(task_ids, timeout), strict=True))

    def _documents(self, task_ids: list[str]) -> list[dict[str, Any] | BaseException]:
        with self._heartbeat.batch():
            docs = self._run_batch(task_ids)
        return [docs.get(t) or KeyError(f"no result for task {t}") for t in task_ids]
