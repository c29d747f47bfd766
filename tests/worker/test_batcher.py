"""The micro-batcher: concurrent tasks share batches, each gets its own answer or its batch's error."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.batcher import MicroBatcher


class Recorder:
    """A run_batch that records the batches it was given and answers each id."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail
        self.gate = gate

    def __call__(self, task_ids: Sequence[str]) -> dict[str, dict]:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(task_ids))
        if self.fail:
            raise ConnectionError("database went away")
        return {task_id: {"task_id": task_id, "digit": len(task_id)} for task_id in task_ids}


def test_a_lone_task_runs_alone():
    run = Recorder()
    assert MicroBatcher(run).submit("abc", timeout=10) == {"task_id": "abc", "digit": 3}
    assert run.batches == [["abc"]]


def test_concurrent_tasks_share_batches_and_each_gets_its_own_answer():
    gate = threading.Event()
    run = Recorder(gate=gate)
    batcher = MicroBatcher(run, max_batch=16, max_wait=0.05)
    ids = [f"t{i}" * (i % 5 + 1) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(batcher.submit, task_id, 10) for task_id in ids]
        gate.set()  # the first batch was held back, so the rest queued up behind it
        answers = [f.result() for f in futures]

    assert [a["task_id"] for a in answers] == ids
    assert sorted(sum(run.batches, [])) == sorted(ids)
    assert max(len(b) for b in run.batches) > 1
    assert all(len(b) <= 16 for b in run.batches)


def test_a_failing_batch_fails_each_of_its_tasks():
    batcher = MicroBatcher(Recorder(fail=True))
    with pytest.raises(ConnectionError, match="database went away"):
        batcher.submit("x", timeout=10)


def test_a_missing_answer_is_an_error_not_a_hang():
    batcher = MicroBatcher(lambda ids: {})
    with pytest.raises(KeyError):
        batcher.submit("x", timeout=10)
