"""The web app's dependency container, built once by create_app, and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from flask import current_app, g
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from web.ingest import Ingest
from web.results import ResultWaiter

if TYPE_CHECKING:  # web/owner.py reads its keys from here
    from web.owner import OwnerKeys

EXTENSION = "digits"


@dataclass(frozen=True)
class Deps:
    """What the blueprints use: built by create_app (or a test), never at import."""

    settings: Settings
    engine: Engine  # one pool per process
    sessions: sessionmaker[Session]
    celery: Celery  # the producer that enqueues predictions
    redis: Redis  # a connection pool for reading results
    results: ResultWaiter  # the process's listener for published results (long polls wait on it)
    ingest: Ingest  # records and enqueues concurrent uploads together
    operators: str | None  # ADMIN_BASIC_AUTH, when set and strong enough to list everyone's uploads
    owners: OwnerKeys  # owner tokens to the keys rows are stored under


def container() -> Deps:
    """The dependencies create_app stored on the app."""
    found: Deps = current_app.extensions[EXTENSION]
    return found


def settings() -> Settings:
    """The app's settings."""
    return container().settings


def celery() -> Celery:
    """The Celery producer used to enqueue predictions."""
    return container().celery


def redis_client() -> Redis:
    """The app's Redis client (a connection pool) for reading results."""
    return container().redis


def result_waiter() -> ResultWaiter:
    """The process's listener for published results (long polls wait on it)."""
    return container().results


def ingest() -> Ingest:
    """The process's coalescing recorder and enqueuer of uploads."""
    return container().ingest


def operator_credentials() -> str | None:
    """ADMIN_BASIC_AUTH, when it is set and strong enough to list everyone's uploads."""
    return container().operators


def owner_keys() -> OwnerKeys:
    """The process's owner keys (HMACs of owner tokens under OWNER_TOKEN_SECRET)."""
    return container().owners


def engine() -> Engine:
    """The app's engine (one pool per process)."""
    return container().engine


def session() -> Session:
    """This request's session, opened on first use and closed when the request ends."""
    if "db" not in g:
        g.db = container().sessions()
    return g.db


def close_session(_exc: BaseException | None = None) -> None:
    """Teardown hook: return the request's connection to the pool."""
    db = g.pop("db", None)
    if db is not None:
        db.close()
