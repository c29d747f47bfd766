"""Faults under load, with real processes: every upload answered 202 ends final, in exactly one row.

Each test runs a steady upload load against a live stack, breaks something for real (SIGKILL a worker,
restart Redis and lose everything in it), and then checks the books: accepted, completed, lost, duplicates.
Run them alone with `make test PYTEST_ARGS="-m fault"`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade
from tests.fault.load import under_load
from tests.helpers import png_bytes
from tests.stack import LiveStack, PrivateMariaDB, PrivateRedis, running_stack

pytestmark = pytest.mark.fault
log = logging.getLogger(__name__)


@pytest.fixture
def images(mnist) -> list[bytes]:
    """A few hundred real digits to upload."""
    return [png_bytes(d) for d in mnist.x_test[:300]]


@pytest.fixture
def live(database_url: str, redis_url: str, db_engine) -> Iterator[LiveStack]:
    """A web process and one worker on the shared test services."""
    with running_stack(database_url, redis_url) as stack:
        yield stack


def test_worker_killed_mid_batch_loses_nothing(live, images, db_sessions):
    def kill_worker() -> None:
        os.kill(live.workers[0].pid, signal.SIGKILL)  # no warm shutdown: reserved and running tasks die with it
        live.workers[0].wait()
        live.start_worker()

    books, load = under_load(live.base_url, images, kill_worker, db_sessions)
    assert books["lost"] == 0 and books["duplicates"] == 0 and books["unacknowledged"] == 0
    assert books["completed"] == books["accepted"]
    assert load.refused == {}


def test_queue_flushed_under_load_loses_nothing(live, images, db_sessions):
    def flush_queue() -> None:
        redis.Redis.from_url(live.settings.redis_url).delete(live.settings.queue_name)  # every waiting message

    books, load = under_load(live.base_url, images, flush_queue, db_sessions)
    assert books["lost"] == 0 and books["duplicates"] == 0 and books["unacknowledged"] == 0
    assert books["completed"] == books["accepted"]
    assert load.refused == {}


def test_web_process_killed_under_load_loses_nothing(live, images, db_sessions):
    # SIGKILL to every web process: requests in flight die with them.
    books, load = under_load(live.base_url, images, live.restart_web, db_sessions)
    assert books["lost"] == 0 and books["duplicates"] == 0
    assert books["completed"] == books["accepted"]
    # Clients whose request died with the process got no answer (counted as status 0), never a wrong one;
    # an upload recorded just before the kill, but not answered, is processed all the same.
    assert set(load.refused) <= {0}
    assert books["unacknowledged"] <= load.refused.get(0, 0)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of the test's own, which it may restart."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restarted_empty_under_load_loses_nothing(database_url, private_redis, db_engine, images,
                                                        db_sessions):
    def restart_redis_empty() -> None:
        private_redis.stop()  # queue, reserved messages and statuses: all gone
        time.sleep(2)  # the outage itself
        private_redis.start()

    with running_stack(database_url, private_redis.url) as live:
        books, load = under_load(live.base_url, images, restart_redis_empty, db_sessions, recovery_timeout=45)

    assert books["lost"] == 0 and books["duplicates"] == 0
    assert books["completed"] == books["accepted"]
    # While Redis was away uploads were refused, never accepted and dropped: 503s with a JSON message.
    assert set(load.refused) <= {503} and load.bodies_not_json == 0


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A MariaDB of the test's own with the schema migrated, which it may stop and start."""
    server = PrivateMariaDB(tmp_path)
    server.install()
    server.start()
    engine = create_engine(server.url.rsplit("/", 1)[0] + "/")
    with engine.connect() as conn:
        conn.execute(text("CREATE DATABASE digits"))
    engine.dispose()
    upgrade(server.url)
    yield server
    server.stop()


def test_database_away_for_10_seconds_loses_nothing_and_refuses_with_503(private_mariadb, redis_url, images):
    def database_away_10_s() -> None:
        private_mariadb.stop()
        time.sleep(10)  # the outage itself
        private_mariadb.start()

    sessions = make_session_factory(make_engine(private_mariadb.url))
    with running_stack(private_mariadb.url, redis_url) as live:
        books, load = under_load(live.base_url, images, database_away_10_s, sessions, recovery_timeout=45)

    assert books["lost"] == 0 and books["duplicates"] == 0
    assert books["completed"] == books["accepted"]
    assert set(load.refused) == {503} and load.bodies_not_json == 0  # refused while away, with a message
    assert books["unacknowledged"] <= load.refused[503]
