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
