"""The Alembic migrations build exactly the schema the models describe, on MariaDB and on SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import make_engine
from shared.migrate import upgrade
from shared.schema import Base


def _diff(url: str) -> list:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return diff


def test_mariadb_schema_matches_models(database_url: str):
    assert _diff(database_url) == []
    engine = make_engine(database_url)
    uniques = inspect(engine).get_unique_constraints("predictions")
    engine.dispose()
    assert any(u["column_names"] == ["task_id"] for u in uniques)


def test_sqlite_migrates_and_matches_models(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'digits.db'}"
    upgrade(url)
    upgrade(url)  # idempotent: a second run (every `make run`) changes nothing
    assert _diff(url) == []


def test_upload_ids_go_past_two_to_the_31(database_url: str, tmp_path: Path):
    # An INT id ran out at 2,147,483,647 uploads; both databases now take the next one.
    from sqlalchemy import insert, select

    from shared.predictions import TABLE
    from shared.schema import utcnow

    sqlite_url = f"sqlite:///{tmp_path / 'digits.db'}"
    upgrade(sqlite_url)
    for url in (database_url, sqlite_url):
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(insert(TABLE).values(id=2**31 + 7, task_id=f"big-id-{url[:5]}", state="PENDING", image=b"x",
                                              image_sha256="0" * 64, size_bytes=1, created_at=utcnow(), deliveries=0,
                                              queue="q"))
            assert conn.execute(select(TABLE.c.id).where(TABLE.c.id > 2**31)).scalar_one() == 2**31 + 7
            conn.execute(TABLE.delete().where(TABLE.c.id == 2**31 + 7))
        engine.dispose()
