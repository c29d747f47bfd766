"""Database engine and session helpers; engines are made per process, never at import."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, lock_wait_seconds: int | None = None, **kwargs: Any) -> Engine:
    """An engine with a pool that survives MySQL dropping idle connections.

    `lock_wait_seconds` bounds how long a statement waits for another transaction's row lock (MySQL's
    innodb_lock_wait_timeout, 50 s by default) on the engine's connections.
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
    if lock_wait_seconds is not None:
        kwargs.setdefault("connect_args", {})["init_command"] = (
            f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_seconds)}")
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


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
