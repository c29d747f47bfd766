"""Every lifecycle statement, compiled for MySQL 8.4 (what the Kubernetes manifests run), checked against its syntax.

The suite runs on MariaDB; SQLAlchemy renders some constructs differently for MySQL (an upsert's new values are a
row alias there, `VALUES()` is deprecated since 8.0.20). So the lifecycle is run on the test MariaDB while each
statement it executes is also compiled with a MySQL 8.4 dialect, and that SQL is checked for what MySQL 8.4's
reference manual does not accept.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.sql import ClauseElement

from shared import deliveries, idempotency, predictions
from shared.predictions import NewUpload
from shared.schema import State

RESULT = {"state": State.SUCCESS.value, "digit": 7, "confidence": 0.9, "probabilities": [0.1] * 10,
          "model_name": "seed-cnn", "model_version": "v1", "error": None}


def _mysql84() -> Any:
    dialect = mysql.dialect()
    dialect.server_version_info = (8, 4, 0)
    dialect.is_mariadb = False
    dialect._backslash_escapes = True
    dialect._requires_alias_for_on_duplicate_key = True  # what initialize() sets for MySQL >= 8.0.20
    return dialect


@pytest.fixture
def compiled(db_engine) -> list[str]:
    """The MySQL 8.4 SQL of every statement the test body executes on the (MariaDB) engine."""
    found: list[str] = []
    dialect = _mysql84()

    def _compile(conn: Any, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
        if isinstance(clause, ClauseElement):
            found.append(str(clause.compile(dialect=dialect)))

    event.listen(db_engine, "before_execute", _compile)
    yield found
    event.remove(db_engine, "before_execute", _compile)


def _lifecycle(engine: Any) -> None:
    """Record, look up, claim, renew, finish, give back, fail as poison, cancel and recover: every statement kind."""
    ups = [NewUpload(b"png", "d.png", "image/png", 28, 28, owner="o" * 64, webhook_url="https://r.example/h",
                     webhook_events="start,completed") for _ in range(4)]
    ids = [u.task_id for u in ups]
    with engine.begin() as conn:
        predictions.record(conn, ups, "q")
        found = predictions.look_up(conn, ids)
        first = predictions.claim(conn, ids[:2], 0, "w:1", 60)
        predictions.renew(conn, [first], 60)
        predictions.finish(conn, first, {ids[0]: dict(RESULT)})
        predictions.release(conn, first)
        predictions.fail_poison(conn, [found[ids[2]]])
        predictions.cancel(conn, ids[3], "o" * 64)
        predictions.unclaim(conn, predictions.expired_claims(conn, "q"))
        predictions.mark_requeued(conn, predictions.waiting_longer_than(conn, "q", 0, 10))
        due = deliveries.take_due(conn, 10)
        for d in due:
            deliveries.record(conn, d, 200, None, True, None)
        idempotency.claim_all(conn, [idempotency.Claimed("o" * 64, "key-1", "f" * 64, ids[:1])], 3600)
        idempotency.purge_expired(conn, 3600, 100)


def test_every_lifecycle_statement_is_mysql_84_syntax(db_engine, compiled):
    _lifecycle(db_engine)
    sql = "\n".join(compiled)
    assert len(compiled) >= 15, compiled
    assert "RETURNING" not in sql  # MariaDB has it, MySQL does not
    # The finish upsert: MySQL 8.4 names the new row with an alias (`VALUES(col)` is deprecated there).
    upserts = [s for s in compiled if "ON DUPLICATE KEY UPDATE" in s]
    assert upserts and all(re.search(r"\) AS new ON DUPLICATE KEY UPDATE", s) for s in upserts), upserts
    assert not any(re.search(r"\bVALUES\(`?\w+`?\)", s.split("ON DUPLICATE KEY UPDATE", 1)[1]) for s in upserts)
    assert "UTC_TIMESTAMP(6) + INTERVAL" in sql and "MICROSECOND" in sql  # the database's clock, MySQL's syntax
