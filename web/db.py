"""Per-request database session and access to the app's dependencies."""

from __future__ import annotations

from typing import Any

from celery import Celery
from flask import current_app, g
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.config import Settings
from web.results import ResultWaiter


def deps() -> dict[str, Any]:
    """The dependencies create_app stored on the app."""
    return current_app.extensions["digits"]


def settings() -> Settings:
    """The app's settings."""
    return deps()["settings"]


def celery() -> Celery:
    """The Celery producer used to enqueue predictions."""
    return deps()["celery"]


def redis_client() -> Redis:
    """The app's Redis client (a connection pool) for reading results."""
    return deps()["redis"]


def result_waiter() -> ResultWaiter:
    """The process's listener for published results (long polls wait on it)."""
    return deps()["results"]


def operator_credentials() -> str | None:
    """ADMIN_BASIC_AUTH, when it is set and strong enough to list everyone's uploads."""
    return deps()["operators"]


def engine() -> Engine:
    """The app's engine (one pool per process)."""
    return deps()["engine"]


def session() -> Session:
    """This request's session, opened on first use and closed when the request ends."""
    if "db" not in g:
        g.db = deps()["sessions"]()
    return g.db


def close_session(_exc: BaseException | None = None) -> None:
    """Teardown hook: return the request's connection to the pool."""
    db = g.pop("db", None)
    if db is not None:
        db.close()
