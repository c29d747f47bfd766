"""The engine's pool (shared/db.py) on the real MariaDB: a connection that died while idle is replaced."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared import db


def _connection_id(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT CONNECTION_ID()")).scalar_one())


def _kill(database_url: str, connection_id: int) -> None:
    """What a MySQL restart or its wait_timeout does to a pooled connection."""
    killer = db.make_engine(database_url)
    with killer.connect() as conn:
        conn.execute(text(f"KILL {connection_id}"))
    killer.dispose()


def test_a_connection_killed_while_idle_is_replaced_before_use(database_url, monkeypatch):
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every checkout counts as idle
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    first = _connection_id(engine)
    _kill(database_url, first)

    assert _connection_id(engine) != first  # pinged, found dead, replaced: the caller never saw it
    engine.dispose()


def test_a_connection_back_in_use_at_once_is_not_pinged(database_url, monkeypatch):
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    _kill(database_url, _connection_id(engine))

    # No ping (that round trip is what busy workers save): the dead connection fails its statement once,
    # the pool drops it, and the caller's retry (a task's, a client's) gets a new one.
    with pytest.raises(OperationalError):
        _connection_id(engine)
    assert _connection_id(engine) > 0
    engine.dispose()


def test_a_session_silent_in_mid_transaction_gives_up_its_row_locks(database_url):
    # A worker stopped (SIGSTOP) or hung between two statements of a transaction: without the server's
    # wait_timeout its row locks stay until MySQL's default eight hours, and every other writer queues behind.
    ddl = db.make_engine(database_url)
    with ddl.begin() as conn:
        conn.execute(text("CREATE TABLE silent_locks (id INT PRIMARY KEY, n INT)"))
        conn.execute(text("INSERT INTO silent_locks VALUES (1, 0)"))
    stalled = db.make_engine(database_url, idle_session_seconds=6, pool_size=1, max_overflow=0)
    other = db.make_engine(database_url, lock_wait_seconds=30, pool_size=1, max_overflow=0)
    held = stalled.connect()
    try:
        held.begin()
        held.execute(text("UPDATE silent_locks SET n = 1 WHERE id = 1"))  # locked, then silence
        with other.begin() as conn:  # waits for the lock, which the server frees when it drops the silent session
            assert conn.execute(text("UPDATE silent_locks SET n = 2 WHERE id = 1")).rowcount == 1
        with other.connect() as conn:
            assert conn.execute(text("SELECT n FROM silent_locks")).scalar_one() == 2  # the stalled update rolled back
        with pytest.raises(OperationalError):  # and the stalled one finds its session gone when it wakes
            held.execute(text("SELECT 1"))
    finally:
        held.invalidate()  # closes its socket: the server rolls back whatever it still held
        stalled.dispose()
        other.dispose()
        with ddl.begin() as conn:
            conn.execute(text("DROP TABLE silent_locks"))
        ddl.dispose()


def test_service_engines_bound_every_mysql_read_and_write(settings):
    engine = db.make_service_engine(settings)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert (raw._read_timeout, raw._write_timeout) == (settings.db_io_timeout_seconds,) * 2
        timeouts = conn.execute(text("SELECT @@session.wait_timeout, @@session.time_zone")).one()
    assert tuple(timeouts) == (settings.db_idle_session_seconds, "+00:00")
    engine.dispose()
