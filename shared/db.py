"""Database engine and session helpers; engines are made per process, never at import."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings


def make_service_engine(settings: Settings, **kwargs: Any) -> Engine:
    """The engine of a web or worker process: its MySQL reads and writes bounded, its silent sessions ended."""
    return make_engine(settings.database_url, io_timeout_seconds=settings.db_io_timeout_seconds,
                       idle_session_seconds=settings.db_idle_session_seconds, **kwargs)


def make_engine(url: str, lock_wait_seconds: int | None = None, io_timeout_seconds: float | None = None,
                idle_session_seconds: int | None = None, **kwargs: Any) -> Engine:
    """An engine with a pool that survives MySQL dropping idle connections.

    `lock_wait_seconds` bounds how long a statement waits for another transaction's row lock (MySQL's
    innodb_lock_wait_timeout, 50 s by default) on the engine's connections. `io_timeout_seconds` bounds each
    read and write on a MySQL socket: without it, a connection whose peer vanished without a reset (a cut
    link, a host gone) blocks until TCP gives up, about 15 minutes. `idle_session_seconds` is the server's
    wait_timeout for the engine's sessions: one silent that long is closed and its transaction rolled back.
    """
    if url.startswith("sqlite"):
        # Pool sizes are for server databases: an in-memory SQLite's pool takes none (a file's keeps its default).
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pool_size", "max_overflow")}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Web and worker write the same file from several processes: WAL lets readers and a writer coexist.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args = kwargs.setdefault("connect_args", {})
    # Every stored time is UTC, and leases compare with UTC_TIMESTAMP() (shared/dbclock.py): TIMESTAMP columns
    # must not be shifted by a server's or session's local zone.
    session = ["time_zone = '+00:00'"]
    if lock_wait_seconds is not None:
        session.append(f"innodb_lock_wait_timeout = {int(lock_wait_seconds)}")
    if idle_session_seconds is not None:
        # Longer than IDLE_PING_SECONDS by far: a pooled connection the server closed is pinged, then replaced.
        session.append(f"wait_timeout = {max(int(idle_session_seconds), 3 * int(IDLE_PING_SECONDS))}")
    connect_args["init_command"] = "SET SESSION " + ", ".join(session)
    if io_timeout_seconds is not None:
        connect_args.setdefault("connect_timeout", max(1, round(io_timeout_seconds)))
        connect_args.setdefault("read_timeout", io_timeout_seconds)
        connect_args.setdefault("write_timeout", io_timeout_seconds)
    # recycle: stay under MySQL's wait_timeout on long-lived workers.
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, pool_recycle=1800, **kwargs)
    _ping_when_idle(engine, IDLE_PING_SECONDS)
    return engine


# A connection back in use within this many seconds is not pinged: under load a ping per checkout was a
# round trip per statement group (7% of a worker's time); one idle longer may have been closed by MySQL.
IDLE_PING_SECONDS = 2.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """pool_pre_ping, only for connections idle longer than `idle_seconds`: a dead one is replaced, not used."""
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("returned_at", 0.0) < idle_seconds:
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except Exception as exc:  # the pool then connects anew (and retries the checkout)
            raise DisconnectionError(f"connection lost while idle: {exc}") from exc


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to the engine; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
