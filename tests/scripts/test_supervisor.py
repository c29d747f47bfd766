"""The supervisor of `make run` and `make bench` (scripts/supervisor.py): the restart policy on its own, then real
children killed, restarted and given up on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.supervisor import (
    HEALTHY_AFTER_S,
    MAX_QUICK_EXITS,
    RESTART_DELAY_MAX_S,
    RESTART_DELAY_S,
    RestartPolicy,
    RestartState,
    Stack,
    Watchdog,
    describe_exit,
)
from shared.config import child_environment

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]
# Tiny back-off so real restarts happen within the test's time.
FAST = RestartPolicy(first_delay=0.01, max_delay=0.05, healthy_after=60.0, max_quick_exits=4)


def exits(policy: RestartPolicy, lifetimes: list[float]) -> tuple[list[float | None], RestartState]:
    """Feed the policy one exit per lifetime, each child started right after the previous back-off."""
    state, now, delays = RestartState(), 1000.0, []
    for lived in lifetimes:
        started = now
        now = started + lived
        delay = policy.record_exit(state, started, now)
        delays.append(delay)
        now += delay or 0.0
    return delays, state


def poll_until(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """True as soon as condition() holds; False after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# The policy, without real time.


def test_default_policy_is_the_documented_one() -> None:
    policy = RestartPolicy()
    assert (policy.first_delay, policy.max_delay) == (RESTART_DELAY_S, RESTART_DELAY_MAX_S) == (1.0, 30.0)
    assert (policy.healthy_after, policy.max_quick_exits) == (HEALTHY_AFTER_S, MAX_QUICK_EXITS) == (60.0, 10)


def test_back_off_doubles_from_one_second_up_to_the_cap() -> None:
    delays, state = exits(RestartPolicy(), [0.5] * 9)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert state.quick_exits == 9


def test_delay_never_overflows_past_the_cap() -> None:
    assert RestartPolicy().delay(10_000) == 30.0
    assert RestartPolicy().delay(1) == 1.0


def test_gives_up_at_the_tenth_quick_exit_in_a_row() -> None:
    delays, _ = exits(RestartPolicy(), [5.0] * 10)
    assert None not in delays[:9]
    assert delays[9] is None


def test_a_child_that_lived_sixty_seconds_starts_the_back_off_over() -> None:
    delays, state = exits(RestartPolicy(), [1.0] * 5 + [60.0, 1.0])
    assert delays == [1, 2, 4, 8, 16, 1, 2]
    assert state.quick_exits == 1


def test_a_healthy_life_resets_the_give_up_count() -> None:
    delays, _ = exits(RestartPolicy(), [1.0] * 9 + [120.0] + [1.0] * 9)
    assert None not in delays
    delays, _ = exits(RestartPolicy(), [1.0] * 9 + [120.0] + [1.0] * 10)
    assert delays[-1] is None and None not in delays[:-1]


def test_long_lived_children_are_restarted_forever() -> None:
    delays, _ = exits(RestartPolicy(), [3600.0] * 50)
    assert delays == [1.0] * 50


@pytest.mark.parametrize(("code", "text"), [(0, "exited with code 0"), (3, "exited with code 3"),
                                            (-signal.SIGKILL, "killed by SIGKILL"),
                                            (-signal.SIGSEGV, "killed by SIGSEGV"), (-200, "killed by signal 200")])
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


# Real processes.

@pytest.fixture
def supervised() -> Iterator[tuple[Stack, threading.Thread, list[str | None]]]:
    """A Stack with a tiny back-off, its supervise() running in a thread; stopped afterwards."""
    stack = Stack(policy=FAST)
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(stack.supervise(poll_interval=0.02)), daemon=True)
    yield stack, thread, result
    stack.stop(grace=5)
    thread.join(timeout=5)


def test_a_killed_child_is_restarted_and_stop_ends_everything(
        supervised: tuple[Stack, threading.Thread, list[str | None]], caplog: pytest.LogCaptureFixture) -> None:
    stack, thread, result = supervised
    first = stack.start("sleeper", SLEEPER, child_environment())
    other = stack.start("bystander", SLEEPER, child_environment())
    caplog.set_level(logging.INFO, logger="run_local")
    thread.start()

    first.kill()
    assert poll_until(lambda: stack.procs["sleeper"].pid != first.pid and stack.procs["sleeper"].poll() is None)
    assert first.returncode == -signal.SIGKILL  # reaped, not left a zombie
    assert stack.procs["bystander"] is other and other.poll() is None  # the others keep running
    assert "sleeper" in caplog.text and "killed by SIGKILL" in caplog.text

    second = stack.procs["sleeper"]
    assert second.args == SLEEPER  # started again the same way
    stack.stop(grace=5)
    thread.join(timeout=5)
    assert not thread.is_alive() and result == [None]
    for proc in (first, second, other):
        assert proc.returncode is not None and not alive(proc.pid)


def test_a_child_that_always_dies_at_once_makes_the_supervisor_give_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="run_local")
    stack = Stack(policy=FAST)
    try:
        stack.start("crasher", CRASHER, child_environment())
        sleeper = stack.start("sleeper", SLEEPER, child_environment())
        started = time.monotonic()
        assert stack.supervise(poll_interval=0.01) == "crasher"
        assert time.monotonic() - started < 8
        assert "exited with code 3" in caplog.text and f"{FAST.max_quick_exits} exits in a row" in caplog.text
        starts = [r for r in caplog.records if r.getMessage().startswith("starting crasher")]
        assert len(starts) == FAST.max_quick_exits  # the first start, then a restart after each exit but the last
        assert sleeper.poll() is None  # giving up is main()'s to act on: supervise() stopped nothing
    finally:
        stack.stop(grace=5)
    assert all(proc.returncode is not None for proc in stack.procs.values())


def test_ctrl_c_during_a_long_back_off_stops_at_once() -> None:
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    stack = Stack(policy=RestartPolicy(first_delay=30.0))
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        stack.start("crasher", CRASHER, child_environment()).wait(timeout=5)
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # a Ctrl-C while the crasher waits out its 30 s back-off
        with pytest.raises(KeyboardInterrupt):
            stack.supervise(poll_interval=5.0)
        assert time.monotonic() - started < 2
        assert stack.children["crasher"].restart_at is not None  # it was waiting out the back-off
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stack.stop(grace=5)


def test_a_child_that_cannot_be_started_again_counts_as_failing(tmp_path: Path) -> None:
    program = tmp_path / "python"
    program.symlink_to(sys.executable)
    stack = Stack(policy=FAST)
    try:
        stack.start("vanishing", [str(program), "-c", "raise SystemExit(1)"], child_environment())
        program.unlink()  # every restart now fails with FileNotFoundError
        assert stack.supervise(poll_interval=0.01) == "vanishing"
    finally:
        stack.stop(grace=5)


def test_start_and_stop_work_without_supervising() -> None:
    """What bench/__main__.py does: start, use the Popen, stop."""
    stack = Stack()
    proc = stack.start("sleeper", SLEEPER, child_environment())
    assert isinstance(proc, subprocess.Popen) and proc.poll() is None
    stack.stop(grace=5)
    assert proc.returncode == -signal.SIGTERM


def test_a_child_whose_heartbeat_goes_stale_is_killed_and_restarted(
        supervised: tuple[Stack, threading.Thread, list[str | None]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A process that lives but makes no progress (a hung worker, a SIGSTOPped one): only the heartbeat tells.
    stack, thread, _ = supervised
    beat = tmp_path / "worker.heartbeat"
    hung = stack.start("worker", SLEEPER, child_environment(), heartbeat=Watchdog(beat, stall_seconds=0.5))
    fresh = stack.start("fresh", SLEEPER, child_environment(), heartbeat=Watchdog(tmp_path / "none", 3600))
    caplog.set_level(logging.INFO, logger="run_local")
    beat.touch()
    thread.start()

    assert poll_until(lambda: stack.procs["worker"].pid != hung.pid, timeout=10)
    assert hung.returncode == -signal.SIGKILL
    assert "worker" in caplog.text and "made no progress" in caplog.text
    assert stack.procs["fresh"] is fresh and fresh.poll() is None  # a heartbeat younger than its limit is left alone


def test_a_heartbeat_counts_from_the_childs_start_not_from_an_old_file(tmp_path: Path) -> None:
    beat = tmp_path / "worker.heartbeat"
    beat.touch()
    os.utime(beat, (time.time() - 3600, time.time() - 3600))  # a previous run's
    watchdog = Watchdog(beat, stall_seconds=60)
    assert watchdog.stalled_for(lived=5) is None  # just started: loading its model
    assert watchdog.stalled_for(lived=61) == pytest.approx(61)
    assert Watchdog(tmp_path / "missing", stall_seconds=60).stalled_for(lived=61) == pytest.approx(61)


def test_a_worker_slow_to_start_is_given_its_start_time_before_its_first_beat(tmp_path: Path) -> None:
    # On a loaded machine a worker can take longer than the stall limit to load its model: killing it then would
    # only start the same slow start again, forever.
    beat = tmp_path / "worker.heartbeat"
    watchdog = Watchdog(beat, stall_seconds=6, start_seconds=120)
    assert watchdog.stalled_for(lived=30) is None  # no beat yet, still within its start time
    assert watchdog.stalled_for(lived=121) == pytest.approx(121)  # never started: hung in its start
    beat.touch()
    assert watchdog.stalled_for(lived=30) is None  # it beat: from now on the stall limit counts
    os.utime(beat, (time.time() - 10, time.time() - 10))
    assert watchdog.stalled_for(lived=30) == pytest.approx(10, abs=1)
