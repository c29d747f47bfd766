"""The worker's heartbeat (worker/heartbeat.py): touched by finished batches and idle runners, never by a hung batch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.config import REPO_ROOT, child_environment
from worker import heartbeat as hb
from worker.batcher import MicroBatcher


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _age(path: Path) -> float:
    age = hb.heartbeat_age(path)
    assert age is not None
    return age


def test_a_batch_that_ends_beats_and_one_running_past_the_limit_stops_the_beats(tmp_path: Path) -> None:
    path, clock = tmp_path / "beat", Clock()
    beat = hb.Heartbeat(path, stall_seconds=60, clock=clock)
    with beat.batch():
        clock.now += 5
    assert path.exists()  # a batch ended

    os.utime(path, (0, 0))
    with beat.batch():
        clock.now += 61  # this batch is hung: idle runners must not vouch for the process
        beat.beat()
        assert _age(path) > 3600
    assert _age(path) < 60  # it ended after all: beating again


def test_beats_are_rate_limited(tmp_path: Path) -> None:
    path, clock = tmp_path / "beat", Clock()
    beat = hb.Heartbeat(path, stall_seconds=60, clock=clock)
    beat.beat()
    os.utime(path, (0, 0))
    clock.now += hb.BEAT_EVERY_SECONDS / 2
    beat.beat()
    assert _age(path) > 3600  # not touched again so soon
    clock.now += hb.BEAT_EVERY_SECONDS
    beat.beat()
    assert _age(path) < 60


def test_idle_runners_beat_before_any_task_arrives(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    batcher = MicroBatcher(lambda ids: {}, heartbeat=hb.Heartbeat(path, stall_seconds=0.4))
    batcher.start()
    os.utime(path, (0, 0))
    deadline = time.monotonic() + 5
    while _age(path) > 60:  # bounded: an idle runner beats every stall/4
        assert time.monotonic() < deadline, "no idle beat"
        time.sleep(0.02)


@pytest.mark.parametrize(("age", "code"), [(5, 0), (120, 1), (None, 1)])
def test_the_liveness_probe_fails_on_a_stale_or_missing_heartbeat(tmp_path: Path, age: float | None,
                                                                  code: int) -> None:
    path = tmp_path / "beat"
    if age is not None:
        path.touch()
        os.utime(path, (time.time() - age, time.time() - age))
    probe = subprocess.run([sys.executable, "-m", "worker.heartbeat"], cwd=REPO_ROOT, capture_output=True, text=True,
                           env=child_environment(WORKER_HEARTBEAT_FILE=str(path), WORKER_STALL_SECONDS="60",
                                                 REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="sqlite://"),
                           timeout=30)
    assert probe.returncode == code, probe.stderr
    if code:
        assert "worker stalled" in probe.stderr
