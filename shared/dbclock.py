"""The database's clock, in SQL: leases and ages are computed where every host agrees on the time.

Web, workers and recovery run on hosts of their own, each with its own clock. A lease written as "now + 60 s"
by a worker whose clock runs ahead would look fresh for longer to everyone else, and a recovering process
whose clock runs ahead would take live claims early. So expiries are written, and compared, with the
database's own UTC clock inside the statement: ``db_now()`` (optionally offset by seconds).

MySQL/MariaDB: ``UTC_TIMESTAMP(6)``. SQLite (one host by construction): the same instant as text in the
format SQLAlchemy stores DATETIMEs in, so stored values and the clock compare as strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Integer, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement[datetime]):  # noqa: N801 - reads as the SQL function it renders
    """The database's current UTC time plus ``seconds`` (may be negative), as a SQL expression."""

    type = DateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: float = 0.0) -> None:
        # Whole microseconds, as a bound parameter: one cached statement serves every offset.
        super().__init__(literal(round(seconds * 1_000_000), Integer()))


@compiles(db_now)
def _generic(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(CURRENT_TIMESTAMP + {compiler.process(element.clauses, **kw)} * INTERVAL '1 microsecond')"


@compiles(db_now, "mysql")
@compiles(db_now, "mariadb")
def _mysql(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(UTC_TIMESTAMP(6) + INTERVAL {compiler.process(element.clauses, **kw)} MICROSECOND)"


@compiles(db_now, "sqlite")
def _sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # strftime's %f is seconds with milliseconds; three zeros make SQLAlchemy's six-digit fraction.
    offset = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', ({offset} / 1000000.0) || ' seconds')"


def read_db_now(conn: Connection) -> datetime:
    """The database's current UTC time, read once (a round trip: for values used in several statements)."""
    value = conn.execute(select(db_now())).scalar_one()
    if isinstance(value, str):  # SQLite returns the text; SQLAlchemy parses stored columns, not expressions
        return datetime.fromisoformat(value)
    return value
