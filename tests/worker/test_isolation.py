"""Isolation: fresh groups share the process, a retry runs with nothing else in flight and is not starved."""

from __future__ import annotations

import threading

from tests.helpers import eventually
from worker.isolation import Isolation


def _hold(cm_factory, entered: list[str], name: str, release: threading.Event) -> threading.Thread:
    def body() -> None:
        with cm_factory():
            entered.append(name)
            release.wait(10)
            entered.append(f"{name} done")

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_fresh_groups_run_together():
    isolation, entered, release = Isolation(), [], threading.Event()
    threads = [_hold(isolation.shared, entered, f"fresh{i}", release) for i in range(3)]
    assert eventually(lambda: len(entered) == 3)
    release.set()
    for t in threads:
        t.join(10)


def test_a_retry_waits_for_the_fresh_groups_in_flight_and_holds_new_ones_back():
    isolation, entered = Isolation(), []
    release_fresh, release_retry = threading.Event(), threading.Event()
    fresh = _hold(isolation.shared, entered, "fresh", release_fresh)
    assert eventually(lambda: entered == ["fresh"])

    retry = _hold(isolation.alone, entered, "retry", release_retry)
    assert eventually(lambda: isolation.waiting_alone == 1)
    later = _hold(isolation.shared, entered, "later", release_fresh)  # arrives while the retry waits
    assert entered == ["fresh"]

    release_fresh.set()
    assert eventually(lambda: "retry" in entered)
    assert entered == ["fresh", "fresh done", "retry"]  # the later group did not slip in beside the retry
    release_retry.set()
    for t in (fresh, retry, later):
        t.join(10)
    assert entered == ["fresh", "fresh done", "retry", "retry done", "later", "later done"]


def test_retries_run_one_at_a_time():
    isolation, entered = Isolation(), []
    release_first, release_second = threading.Event(), threading.Event()
    first = _hold(isolation.alone, entered, "first", release_first)
    assert eventually(lambda: entered == ["first"])
    second = _hold(isolation.alone, entered, "second", release_second)
    assert eventually(lambda: isolation.waiting_alone == 1)
    assert entered == ["first"]
    release_first.set()
    release_second.set()
    for t in (first, second):
        t.join(10)
    assert entered == ["first", "first done", "second", "second done"]
