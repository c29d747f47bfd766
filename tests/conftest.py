"""Fixtures on real services: a fresh MariaDB database and a Redis database per test session."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _pytest.nodeid import coerce_node_id
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from shared.config import REPO_ROOT, Settings
from shared.db import make_engine, make_session_factory
from shared.migrate import upgrade
from tests.helpers import OWNER_TOKEN_SECRET, TestServices, worker_redis_url
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
    """Mark the tests that need services (and every e2e, fault or browser test, which starts processes); name,
    group and order them for pytest-xdist (`make test` runs the suite on several processes)."""
    unique_node_ids(items)
    grouped = config.getoption("dist", "no") == "loadgroup"
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & SERVICE_FIXTURES or starts_processes(item):
            item.add_marker(pytest.mark.services)
        if grouped and shares_a_module_fixture(item):
            # One xdist worker takes the whole module (--dist loadgroup), so its stack or model starts once.
            rename(item, f"{item.nodeid}@{item.nodeid.split('::', 1)[0]}")
    # The long ones (stacks of processes, minutes of faults) start first, so no worker is left with one at the end;
    # with --no-loadscope-reorder, xdist hands out work in this order. Otherwise the order stays as collected.
    items.sort(key=lambda item: not starts_processes(item))


def rename(item: pytest.Item, node_id: str) -> None:
    """Give the test another node id: the one xdist schedules by and reports name."""
    # pytest 9 keeps the id structured in `_id`; xdist's own xdist_group renaming still writes the old `_nodeid`,
    # which pytest 9 no longer reads, so its groups would silently not form. Checked, so a pytest upgrade that
    # changes this again fails here instead of dropping or splitting tests.
    item._id = coerce_node_id(node_id)
    assert item.nodeid == node_id, f"cannot rename tests with this pytest: {item.nodeid} is not {node_id}"


def unique_node_ids(items: list[pytest.Item]) -> None:
    """Give tests that share a node id one of their own: schemathesis names every operation's test alike, and
    pytest-xdist schedules by node id, so it would run one of them and silently drop the rest."""
    seen = Counter(item.nodeid for item in items)
    for item in items:
        if seen[item.nodeid] > 1:
            rename(item, f"{item.nodeid.rpartition('::')[0]}::{item.name}")
    repeated = [node for node, count in Counter(item.nodeid for item in items).items() if count > 1]
    assert not repeated, f"tests sharing a node id: {repeated}"


def starts_processes(item: pytest.Item) -> bool:
    """Whether the test starts real processes (e2e, fault and browser tests)."""
    return any(item.get_closest_marker(mark) for mark in ("e2e", "fault"))


def shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a module- or class-scoped fixture (directly or through another one)."""
    definitions = getattr(item, "_fixtureinfo", None)  # pytest's own record of the fixture closure
    if definitions is None:
        return False
    return any(d.scope in ("module", "class") for defs in definitions.name2fixturedefs.values() for d in defs)


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
