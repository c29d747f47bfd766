"""The micro-batching utility shared by the web's ingestion and the worker (shared/batching.py)."""

from __future__ import annotations

import threading

import pytest

from shared.batching import Batcher


class Stop(BaseException):
    """What no batch should raise (a greenlet being killed, say)."""


def test_outcomes_go_to_their_own_callers_an_exception_only_to_its_item():
    batcher: Batcher[int, int] = Batcher(lambda xs: [ValueError(x) if x < 0 else 2 * x for x in xs], 8, 0.01)
    assert batcher.submit_many([1, 2, 3], timeout=10) == [2, 4, 6]
    with pytest.raises(ValueError, match="-1"):
        batcher.submit(-1, timeout=10)


def test_a_wrong_number_of_outcomes_fails_the_group_instead_of_misrouting_answers():
    batcher: Batcher[int, int] = Batcher(lambda xs: [1], 8, 0.2)
    with pytest.raises(RuntimeError, match="1 outcomes for 2 items"):
        batcher.submit_many([1, 2], timeout=10)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the runner ends by design
def test_a_runner_killed_mid_group_fails_its_callers_and_is_replaced():
    calls: list[list[int]] = []

    def run(xs: list[int]) -> list[int]:
        calls.append(xs)
        if len(calls) == 1:
            raise Stop
        return xs

    batcher: Batcher[int, int] = Batcher(run, 8, 0.0, runners=1)
    with pytest.raises(Stop):
        batcher.submit(1, timeout=10)
    for thread in threading.enumerate():
        if thread.name.startswith("batcher-"):
            thread.join(10)  # the ended runner finishes within this test (its exception is expected here)
    assert batcher.submit(2, timeout=10) == 2  # a new runner took over: nothing hangs
