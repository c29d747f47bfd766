"""Partitions between hosts (tests/fault/netns.py), under 16 closed-loop clients: every accepted upload ends final
exactly once, and a worker cut off from MySQL neither hangs nor overwrites what another worker answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from shared.db import make_engine, make_session_factory
from shared.schema import Prediction
from tests.fault.load import Load, books
from tests.fault.netns import Network, unavailable_reason
from tests.fault.netstack import NetStack
from tests.fault.test_lifecycle import fault_env, marked_png, upload
from tests.helpers import eventually, png_bytes

pytestmark = pytest.mark.fault
LEASE = 4  # SWEEP_AFTER_SECONDS: short, so a partition of twice the lease fits in a test
TIMERS = {"SWEEP_AFTER_SECONDS": str(LEASE), "SWEEP_INTERVAL_SECONDS": "1"}


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge for the test's hosts, removed with everything on it afterwards (also after a failure)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    net = Network()
    net.open()
    try:
        yield net
    finally:
        net.close()


def _stack(network: Network, tmp_path: Path, **env: str) -> NetStack:
    stack = NetStack(network, tmp_path, **TIMERS, **env)
    stack.start()
    return stack


def _row(sessions, task_id: str) -> Prediction:
    with sessions() as s:
        return s.scalars(select(Prediction).where(Prediction.task_id == task_id)).one()


def _claimed_by(sessions, stack: NetStack, pid: int, mnist, timeout: float = 30) -> str:
    """Upload slow digits until one is claimed by the worker with this pid (the other worker may take some)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task_id = upload(stack.base_url, marked_png(mnist.x_test[0], "SLOW"))
        for _ in range(100):
            row = _row(sessions, task_id)
            if row.state != "PENDING":
                break
            time.sleep(0.02)
        if row.state == "STARTED" and row.worker.endswith(f":{pid}"):
            return task_id
    raise AssertionError("no slow upload was claimed by that worker")


def _late_write(trace: Path, pid: int, task_id: str) -> str | None:
    """How the worker's finish of this upload ended, from the fault hooks' trace: committed (where the claim no longer
    holds, fenced), failed, or not yet."""
    for line in trace.read_text().splitlines() if trace.exists() else []:
        if line.startswith(f"{pid} finished ") and task_id in line:
            return "fenced"
        if line.startswith(f"{pid} finish-failed ") and task_id in line:
            return "refused: " + line.rsplit(" ", 1)[-1]
    return None


def _load(stack: NetStack, mnist) -> tuple[Load, list]:
    load = Load(stack.base_url, [png_bytes(d) for d in mnist.x_test[:300]])
    return load, load.run(clients=16)


def _finish_load(load: Load, threads: list) -> None:
    load.stop.set()
    for t in threads:
        t.join(20)


def test_a_worker_cut_off_from_mysql_for_two_leases_is_fenced_when_the_link_heals(network, tmp_path, mnist):
    stack = _stack(network, tmp_path)
    try:
        trace = tmp_path / "trace.log"
        cut_host, cut = stack.start_worker("wa", **fault_env(slow_marker="SLOW", slow_seconds=2, trace_file=trace))
        stack.start_worker("wb")
        sessions = make_session_factory(make_engine(stack.mysql.url))
        load, threads = _load(stack, mnist)
        slow = _claimed_by(sessions, stack, cut.pid, mnist)
        network.cut(cut_host, stack.mysql_host)  # right after its claim, while it reads the image
        cut_at = time.monotonic()
        # The other worker answers while the link is still cut: what the late write must not change afterwards.
        assert eventually(lambda: _row(sessions, slow).state == "SUCCESS", timeout=30)
        answer = _row(sessions, slow)
        time.sleep(max(0.0, cut_at + 2 * LEASE - time.monotonic()))  # the partition lasts twice the lease
        network.heal(cut_host)
        _finish_load(load, threads)

        found = books(sessions, load.accepted + [slow], timeout=60)
        print(f"\n    slow upload finished by {answer.worker}, deliveries {answer.deliveries}, "  # noqa: T201
              f"{answer.finished_at} (before the heal)")
        assert found["lost"] == 0 and found["duplicates"] == 0 and found["completed"] == found["accepted"]
        assert answer.state == "SUCCESS" and not answer.worker.endswith(f":{cut.pid}") and answer.deliveries == 2
        # The cut-off worker's write, held up by the partition, is tried after the heal: it commits and is fenced
        # (its claim is gone), or finds that the server ended its silent session; either way nothing changes.
        deadline = time.monotonic() + 60
        while (late := _late_write(trace, cut.pid, slow)) is None:
            assert time.monotonic() < deadline, "the cut-off worker never tried to finish its batch"
            time.sleep(0.2)
        print(f"    its late write ({late}) came {time.monotonic() - cut_at:.1f} s after the cut")  # noqa: T201
        after = _row(sessions, slow)
        assert (after.worker, after.finished_at, after.digit) == (answer.worker, answer.finished_at, answer.digit)
        published = requests.get(f"{stack.base_url}/tasks/{slow}", timeout=5).json()
        assert published["state"] == "SUCCESS" and published["digit"] == answer.digit
    finally:
        stack.stop()


def test_a_half_open_link_to_mysql_in_mid_batch_gives_up_within_a_lease(network, tmp_path, mnist):
    io_timeout = LEASE / 2
    stack = _stack(network, tmp_path, DB_IO_TIMEOUT_SECONDS=str(io_timeout))
    try:
        log_file = tmp_path / "wa.log"
        cut_host, cut = stack.start_worker("wa", log_file=log_file, **fault_env(slow_marker="SLOW", slow_seconds=1))
        stack.start_worker("wb")
        sessions = make_session_factory(make_engine(stack.mysql.url))
        load, threads = _load(stack, mnist)
        slow = _claimed_by(sessions, stack, cut.pid, mnist)
        network.cut(cut_host, stack.mysql_host)  # every packet dropped, no reset: its sockets are half-open
        cut_at = time.monotonic()
        deadline = cut_at + 30
        while "failed" not in log_file.read_text():  # its batch gives up (an I/O timeout), not hangs
            assert time.monotonic() < deadline, "the cut-off worker's batch never gave up"
            time.sleep(0.1)
        gave_up = time.monotonic() - cut_at
        found = books(sessions, [slow], timeout=30)  # the other worker finishes it, the link still cut
        finished = time.monotonic() - cut_at
        network.heal(cut_host)
        _finish_load(load, threads)
        total = books(sessions, load.accepted, timeout=60)
        print(f"\n    gave up {gave_up:.1f} s after the cut; slow upload final {finished:.1f} s after")  # noqa: T201
        assert gave_up < LEASE + 1  # the slow read (1 s) and one I/O timeout
        assert found["completed"] == 1 and not _row(sessions, slow).worker.endswith(f":{cut.pid}")
        assert total["lost"] == 0 and total["duplicates"] == 0 and total["completed"] == total["accepted"]
    finally:
        stack.stop()


def _workers(stack: NetStack) -> int:
    return int(requests.get(f"{stack.base_url}/system", timeout=10).json()["workers"])


@pytest.mark.long(90)
def test_a_worker_cut_off_from_redis_for_a_minute_gives_back_what_it_reserved(network, tmp_path, mnist):
    # What the cut worker holds it still finishes (MySQL is reachable); what the cut takes from everyone is the
    # messages Redis handed out in replies that never arrived: in no list, no unacked hash and no worker's hands.
    # Recovery re-sends those once two sweeps found them nowhere (without it, a dozen uploads a run stay PENDING).
    stack = _stack(network, tmp_path)
    try:
        cut_host, _ = stack.start_worker("wa")
        stack.start_worker("wb")
        sessions = make_session_factory(make_engine(stack.mysql.url))
        load, threads = _load(stack, mnist)
        load.wait_until_accepted(200)
        network.cut(cut_host, stack.redis_host)
        cut_at = time.monotonic()
        seen = []
        while time.monotonic() - cut_at < 60:  # the minute, /system sampled all along
            seen.append(_workers(stack))
            time.sleep(1)
        network.heal(cut_host)
        deadline = time.monotonic() + 60
        while _workers(stack) < 2:  # it announces itself again once Redis is back
            assert time.monotonic() < deadline, "the cut-off worker never came back on /system"
            time.sleep(0.5)
        back = time.monotonic() - cut_at - 60
        _finish_load(load, threads)
        found = books(sessions, load.accepted, timeout=90)
        print(f"\n    /system during the cut: {min(seen)}..{max(seen)} workers; back {back:.1f} s after the heal")  # noqa: T201
        assert min(seen) == 1 and seen[0] == 2  # dropped once its announcement ran out (15 s)
        assert found["lost"] == 0 and found["duplicates"] == 0 and found["completed"] == found["accepted"]
    finally:
        stack.stop()


@pytest.mark.long(60)
def test_the_web_cut_off_from_redis_answers_503_quickly_and_finishes_what_it_accepted(network, tmp_path, mnist):
    stack = _stack(network, tmp_path)
    try:
        stack.start_worker("wa")
        sessions = make_session_factory(make_engine(stack.mysql.url))
        load, threads = _load(stack, mnist)
        load.wait_until_accepted(200)
        network.cut(stack.web_host, stack.redis_host)
        answers: list[tuple[int, float]] = []
        for i in range(8):  # probes of the cut web: one request with ?wait=5 each
            start = time.monotonic()
            resp = requests.post(f"{stack.base_url}/predict?wait=5",
                                 files={"file": (f"{i}.png", png_bytes(mnist.x_test[i]))}, timeout=60)
            answers.append((resp.status_code, time.monotonic() - start))
            if resp.status_code == 503:
                assert resp.json()["error"]["code"], resp.text
        network.heal(stack.web_host)
        load.wait_until_accepted(len(load.accepted) + 100, timeout=60)  # serving again
        _finish_load(load, threads)
        found = books(sessions, load.accepted, timeout=90)
        slowest = max(seconds for _, seconds in answers)
        print(f"\n    during the cut: {sorted({c for c, _ in answers})}, slowest {slowest:.1f} s; "  # noqa: T201
              f"load refused {load.refused}")
        assert {code for code, _ in answers} <= {503, 200, 202} and 503 in {code for code, _ in answers}
        assert slowest <= 5 + 5 and 500 not in load.refused and load.bodies_not_json == 0
        assert found["lost"] == 0 and found["duplicates"] == 0 and found["completed"] == found["accepted"]
    finally:
        stack.stop()


@pytest.mark.long(200)
def test_two_minutes_of_slow_lossy_links_cost_time_but_no_upload(network, tmp_path, mnist):
    # 200 ms each way between the services and their clients (relays: no sch_netem here), 5% of every host's
    # packets dropped at random; leases long enough for round trips of 400 ms.
    stack = NetStack(network, tmp_path, link_delay=0.2, SWEEP_AFTER_SECONDS="30", SWEEP_INTERVAL_SECONDS="5")
    stack.start()
    try:
        workers = [stack.start_worker(role)[0] for role in ("wa", "wb")]
        sessions = make_session_factory(make_engine(stack.mysql.url))
        for host in [stack.web_host, *workers]:
            network.lose(host, 5)
        load = Load(stack.base_url, [png_bytes(d) for d in mnist.x_test[:300]], timeout=120)  # slow, not failed
        threads = load.run(clients=16)
        time.sleep(120)
        for host in [stack.web_host, *workers]:
            network.heal(host)
        _finish_load(load, threads)
        found = books(sessions, load.accepted, timeout=120)
        times = sorted(load.latencies)
        p99 = times[int(0.99 * (len(times) - 1))] if times else float("nan")
        print(f"\n    {len(times)} answers, p99 {p99:.2f} s; refused {load.refused}, "  # noqa: T201
              f"no answer {load.no_answer}")
        # The service answers 202 or a documented 503; a request whose own connection the lossy link broke (the
        # load generator's side, status 0) got no answer and was not accepted: a client retries it.
        assert load.accepted and set(load.refused) <= {0, 503} and load.bodies_not_json == 0
        assert found["lost"] == 0 and found["duplicates"] == 0 and found["completed"] == found["accepted"]
    finally:
        stack.stop()
