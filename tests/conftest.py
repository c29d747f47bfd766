"""Fixtures on real services: a fresh MariaDB database and a Redis database per test session."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.config import REPO_ROOT, Settings
from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade
from web import create_app

MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


class TestServices(BaseSettings):
    """Where the test services are: TEST_MYSQL_URL (a server URL with rights to create databases), TEST_REDIS_URL,
    TEST_CHROMIUM, TEST_SCREENSHOT_DIR."""

    __test__ = False  # not a test class, despite the name
    model_config = SettingsConfigDict(env_prefix="TEST_")

    mysql_url: str = "mysql+pymysql://root@127.0.0.1:3306/"
    redis_url: str = "redis://127.0.0.1:6379/15"
    # The browser tests drive this Chromium (Debian's package) and keep their screenshots here.
    chromium: Path = Path("/usr/bin/chromium")
    screenshot_dir: Path = REPO_ROOT / "var" / "screenshots"


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
def redis_url(services: TestServices) -> Iterator[str]:
    """The test Redis database, emptied before and after the session."""
    client = redis.Redis.from_url(services.redis_url)
    client.flushdb()
    yield services.redis_url
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
def mnist():
    """The real MNIST test split from the team's offline copy."""
    from worker.mnist_data import load_idx_dir

    return load_idx_dir(MNIST_DIR)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 greyscale array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()

