"""A worker host whose clock runs ten minutes ahead (libfaketime on that worker), under load.

Leases and recovery's ages are computed on the database's clock (shared/dbclock.py). Were they computed on each
host's own, the skewed worker, which sweeps for the queue here, would see every live claim of the other worker
as expired and take it early: those uploads would be started twice (deliveries 2) and finished twice.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis
from sqlalchemy import select

from shared.schema import Prediction
from shared.workers import live_workers
from tests.fault.load import Load, books
from tests.helpers import png_bytes
from tests.stack import LiveStack
from worker.recovery import lock_key

AHEAD_SECONDS = 600
# libfaketime's library for threaded programs, preloaded into the worker alone (the `faketime` wrapper would fork
# it as a child that the stack's SIGTERM never reaches).
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)
pytestmark = [pytest.mark.fault,
              pytest.mark.skipif(LIBFAKETIME is None, reason="needs libfaketime (Debian: apt-get install faketime)")]


def clock_ahead(seconds: int) -> dict[str, str]:
    """Environment that runs a process with its wall clock `seconds` ahead (its monotonic clock as it is, as on a
    host whose clock is wrong)."""
    assert LIBFAKETIME is not None
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"+{seconds}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture
def stack(database_url: str, redis_url: str, db_engine) -> Iterator[LiveStack]:
    """The web, a worker ten minutes ahead that holds the queue's recovery lock, and a worker on time."""
    live = LiveStack(database_url, redis_url)
    try:
        live.start_web()
        live.start_worker(**clock_ahead(AHEAD_SECONDS))  # first: it takes the recovery lock
        live.wait_for_workers(1)
        live.start_worker()
        live.wait_for_workers(2)
        yield live
    finally:
        live.stop()


def test_a_worker_ten_minutes_ahead_takes_no_claim_early_and_nothing_is_done_twice(stack, mnist, db_sessions):
    ahead, on_time = stack.workers
    client = redis.Redis.from_url(stack.settings.redis_url)
    # Each worker announces itself with its start time by its own clock.
    since = {w["name"].rsplit(":", 1)[-1]: datetime.fromisoformat(w["since"])
             for w in live_workers(client, stack.settings.queue_name)}
    skew = (since[str(ahead.pid)] - since[str(on_time.pid)]).total_seconds()
    assert skew > AHEAD_SECONDS - 60, f"the skewed worker's clock is only {skew:.0f} s ahead"
    sweeper = client.get(lock_key(stack.settings.queue_name))
    assert sweeper is not None and sweeper.decode().endswith(f":{ahead.pid}")  # the skewed one recovers the queue

    load = Load(stack.base_url, [png_bytes(d) for d in mnist.x_test[:300]])
    threads = load.run(clients=16)
    load.wait_until_accepted(600, timeout=120)  # many sweeps (every second, leases of 2 s) over live claims
    load.stop.set()
    for t in threads:
        t.join(20)
    found = books(db_sessions, load.accepted, timeout=60)
    assert found["lost"] == 0 and found["duplicates"] == 0 and found["completed"] == found["accepted"]
    with db_sessions() as s:
        started = s.execute(select(Prediction.deliveries, Prediction.worker)
                            .where(Prediction.task_id.in_(load.accepted))).all()
    # No worker died: an upload started more than once had its live claim taken.
    assert [d for d, _ in started if d != 1] == []
    assert {w.rsplit(":", 1)[-1] for _, w in started} == {str(ahead.pid), str(on_time.pid)}  # both did work
