"""Liveness and readiness."""

from __future__ import annotations

from shared.config import Settings
from web import create_app


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


def test_readyz_when_redis_and_database_answer(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["checks"] == {"redis": "ok", "database": "ok"}


def test_readyz_is_503_and_names_what_is_down(database_url, db_engine):
    settings = Settings(redis_url="redis://127.0.0.1:1/0", database_url=database_url)
    resp = create_app(settings).test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"] == {"redis": "unavailable", "database": "ok"}


def test_readyz_database_down(redis_url):
    settings = Settings(redis_url=redis_url, database_url="mysql+pymysql://nobody@127.0.0.1:1/none")
    resp = create_app(settings).test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"] == {"redis": "ok", "database": "unavailable"}
