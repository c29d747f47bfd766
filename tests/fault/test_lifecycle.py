"""The lifecycle's guarantees under the load and the faults that break naive designs, with real processes.

- an image that kills every worker that starts it ends as poison after MAX_ATTEMPTS deliveries, under `make run`,
  whose page keeps answering;
- a worker killed between its MySQL commit and its Redis write: the answer is read from MySQL at once;
- a stalled (SIGSTOPped) worker's claim expires and is recovered, and its late write changes nothing.

A backlog far longer than every timer is test_backlog.py's. Faults are injected by tests/fault/inject/sitecustomize.py,
put on the worker's PYTHONPATH.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import select

from shared.config import REPO_ROOT
from shared.schema import FINAL_STATES, Prediction
from tests.helpers import png_bytes
from tests.stack import LiveStack, MakeRun

pytestmark = pytest.mark.fault
log = logging.getLogger(__name__)

INJECT = Path(__file__).parent / "inject"
# The setup: a slow worker (one upload at a time) and timers far shorter than a backlog (test_backlog.py).
SLOW_WORKER = {"SWEEP_AFTER_SECONDS": "5", "SWEEP_INTERVAL_SECONDS": "2", "MAX_ATTEMPTS": "2", "BATCH_MAX_SIZE": "1",
               "WORKER_CONCURRENCY": "1", "WORKER_PREFETCH_MULTIPLIER": "1"}


def fault_env(**faults: object) -> dict[str, str]:
    """Environment that makes a process load the fault hooks with these faults."""
    return {"PYTHONPATH": f"{INJECT}{os.pathsep}{REPO_ROOT}",
            **{f"DIGITS_FAULT_{name.upper()}": str(value) for name, value in faults.items()}}


def marked_png(digit: np.ndarray, marker: str) -> bytes:
    """A valid PNG of the digit that carries a marker in a text chunk (what the fault hooks look for)."""
    info = PngInfo()
    info.add_text("note", marker)
    buf = io.BytesIO()
    Image.fromarray(digit.astype(np.uint8), mode="L").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def upload(base_url: str, data: bytes, name: str = "d.png") -> str:
    """One upload; its task id."""
    resp = requests.post(f"{base_url}/predict", files={"file": (name, data)}, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def rows(db_sessions, task_ids: list[str]) -> dict[str, Prediction]:
    """The rows of these uploads by task id."""
    with db_sessions() as s:
        return {r.task_id: r for r in s.scalars(select(Prediction).where(Prediction.task_id.in_(task_ids)))}


def wait_final(db_sessions, task_ids: list[str], timeout: float) -> dict[str, Prediction]:
    """Poll the database (bounded) until every upload is final; their rows."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(db_sessions, task_ids)
        if all(r.state in FINAL_STATES for r in found.values()) and len(found) == len(set(task_ids)):
            return found
        assert time.monotonic() < deadline, f"{sum(r.state not in FINAL_STATES for r in found.values())} not final"
        time.sleep(0.2)


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """Where the fault hooks write what the worker did."""
    return tmp_path / "trace.log"


def _traced(trace_file: Path, pid: int, event: str, timeout: float) -> list[str]:
    """Wait (bounded) until the worker `pid` traced an event starting with `event`; all such lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = trace_file.read_text().splitlines() if trace_file.exists() else []
        hits = [line for line in lines if line.startswith(f"{pid} {event}")]
        if hits:
            return hits
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} traced no '{event}' in {timeout} s")


@pytest.fixture
def live(database_url: str, redis_url: str, db_engine) -> Iterator[LiveStack]:
    """A web process; each test starts its own workers."""
    stack = LiveStack(database_url, redis_url)
    try:
        stack.start_web()
        yield stack
    finally:
        for worker in stack.workers:
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
        stack.stop()


def test_a_worker_killed_between_its_commit_and_its_cache_write_is_answered_from_mysql(
        live, db_sessions, mnist, trace_file):
    worker = live.start_worker(**fault_env(kill_before_cache=1, trace_file=trace_file))
    live.wait_for_workers(1)
    task_id = upload(live.base_url, png_bytes(mnist.x_test[0]))
    answer: dict = {}

    def long_poll() -> None:
        answer["doc"] = requests.get(f"{live.base_url}/tasks/{task_id}?wait=30", timeout=40).json()
        answer["at"] = datetime.now(UTC).replace(tzinfo=None)

    poller = threading.Thread(target=long_poll)
    poller.start()
    assert worker.wait(60) == -signal.SIGKILL  # it died right after its commit
    read = requests.get(f"{live.base_url}/tasks/{task_id}", timeout=5).json()
    poller.join(35)

    row = rows(db_sessions, [task_id])[task_id]
    assert row.state == "SUCCESS" and read["state"] == "SUCCESS" and read["digit"] == row.digit
    assert answer["doc"] == read
    # Nothing was ever published: the long poll found the answer by re-reading, within a second or so.
    assert (answer["at"] - row.finished_at).total_seconds() < 2.0
    assert _traced(trace_file, worker.pid, "finished", 1)


def test_a_stalled_worker_loses_its_claim_and_its_late_write_changes_nothing(
        live, db_sessions, mnist, trace_file):
    stalled = live.start_worker(**fault_env(slow_marker="SLOW", slow_seconds=8, trace_file=trace_file))
    live.wait_for_workers(1)
    slow = upload(live.base_url, marked_png(mnist.x_test[0], "SLOW"))
    deadline = time.monotonic() + 30
    while rows(db_sessions, [slow])[slow].state != "STARTED":  # bounded: the worker claims it within moments
        assert time.monotonic() < deadline, "the slow upload was never claimed"
        time.sleep(0.05)
    others = [upload(live.base_url, png_bytes(mnist.x_test[i])) for i in range(1, 9)]  # reserved by the stalled one
    os.kill(stalled.pid, signal.SIGSTOP)

    rescuer = live.start_worker(**fault_env(trace_file=trace_file))
    found = wait_final(db_sessions, [slow, *others], timeout=120)
    assert all(r.state == "SUCCESS" for r in found.values())
    answer = found[slow]
    assert answer.worker.endswith(f":{rescuer.pid}") and answer.deliveries == 2

    os.kill(stalled.pid, signal.SIGCONT)
    # Its late finish ran (its other batch runner may have finished other uploads before the stop).
    late = _traced(trace_file, stalled.pid, f"finished {slow}", 30)
    after = rows(db_sessions, [slow])[slow]
    # ...and found its claim gone: the rescuer's answer stands.
    assert (after.worker, after.finished_at, after.digit) == (answer.worker, answer.finished_at, answer.digit)
    assert late == [f"{stalled.pid} finished {slow}=SUCCESS"]


def test_an_image_that_kills_every_worker_ends_as_poison_while_make_run_keeps_serving(
        database_url, redis_url, db_engine, db_sessions, mnist, tmp_path):
    stack = MakeRun(database_url, redis_url, tmp_path, SWEEP_AFTER_SECONDS="2", SWEEP_INTERVAL_SECONDS="1",
                    MAX_ATTEMPTS="2", **fault_env(kill_marker="POISON"))
    page_failures: list[str] = []
    stop = threading.Event()

    def browse() -> None:  # a visitor reloading the page and its service line all along
        while not stop.wait(0.2):
            for path in ("/", "/system"):
                try:
                    status = requests.get(f"{stack.base_url}{path}", timeout=5).status_code
                except requests.RequestException as exc:
                    status = type(exc).__name__
                if status != 200:
                    page_failures.append(f"{path}: {status}")

    try:
        stack.start()
        visitor = threading.Thread(target=browse, daemon=True)
        visitor.start()
        poison = upload(stack.base_url, marked_png(mnist.x_test[0], "POISON"), "poison.png")
        neighbours = [upload(stack.base_url, png_bytes(mnist.x_test[i])) for i in range(1, 6)]
        found = wait_final(db_sessions, [poison, *neighbours], timeout=240)
        stop.set()
        visitor.join(10)
    finally:
        stop.set()
        stack.stop()

    assert found[poison].state == "FAILURE" and found[poison].deliveries == 2
    assert "2 workers started this image and died" in found[poison].error
    assert [found[t].state for t in neighbours] == ["SUCCESS"] * 5
    assert [found[t].digit for t in neighbours] == [int(y) for y in mnist.y_test[1:6]]
    assert page_failures == []
