"""Fixtures on real services: a fresh MariaDB database and a Redis database per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.config import REPO_ROOT, Settings
from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade
from tests.helpers import OWNER_TOKEN_SECRET, TestServices, worker_redis_url
from tests.scheduling import starts_processes
from web import create_app

MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
# Fixtures that reach MariaDB, Redis, the team's MNIST copy or the trained model: a test that uses one (directly
# or through another fixture) is marked `services` and left out of `make check`'s fast tier.
SERVICE_FIXTURES = frozenset({"services", "database_url", "redis_url", "mnist", "trained_model"})


def pytest_configure(config: pytest.Config) -> None:
    """Give the session's web apps and the processes it starts their required owner secret (a test one)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("OWNER_TOKEN_SECRET", OWNER_TOKEN_SECRET)
    config.add_cleanup(patch.undo)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that need services (and every e2e, fault or browser test, which starts processes); the
    scheduling plugin then names, groups and orders them for pytest-xdist."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & SERVICE_FIXTURES or starts_processes(item):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def services() -> TestServices:
    """The test services' addresses."""
    return TestServices()


@pytest.fixture(scope="session")
def database_url(services: TestServices) -> Iterator[str]:
    """A database of its own for this test session on the real MariaDB, migrated to head, dropped afterwards."""
    name = f"digits_test_{os.getpid()}"
    server = create_engine(services.mysql_url)
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = make_url(services.mysql_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    server.dispose()


@pytest.fixture(scope="session")
def redis_url(services: TestServices, worker_id: str) -> Iterator[str]:
    """The test Redis database (one per pytest-xdist worker), emptied before and after the session."""
    url = worker_redis_url(services.redis_url, worker_id)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: real services, a queue of its own so no stray worker takes its tasks."""
    return Settings(redis_url=redis_url, database_url=database_url, queue_name=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def db_engine(database_url: str) -> Iterator:
    """An engine on the test database, with the predictions table emptied first."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM predictions"))
    yield engine
    engine.dispose()


@pytest.fixture
def db_sessions(db_engine):
    """A session factory on the test database."""
    return make_session_factory(db_engine)


@pytest.fixture
def app(settings: Settings, db_engine) -> Iterator[Flask]:
    """The web app on the real services."""
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["digits"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the web app."""
    return app.test_client()


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """models/mnist_model.h5, which `make model` trains (make test does it first)."""
    path = REPO_ROOT / "models" / "mnist_model.h5"
    assert path.exists(), f"no trained model at {path}: run `make model` first"
    return path


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST test split from the team's offline copy."""
    from training.mnist_data import load_idx_dir

    return load_idx_dir(MNIST_DIR)
