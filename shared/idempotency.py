"""Idempotency keys on POST /predict (Stripe's `Idempotency-Key`, the IETF httpapi draft's header).

A key is scoped to its owner and stored in the same transaction as the upload rows it made, under a unique
index: a web process killed between the two leaves neither or both. A repeat of the request within the key's
lifetime finds it and makes nothing; a concurrent repeat's upsert waits on the index until the first
transaction ends, then finds the first one's record and answers with what it made.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, func, select, tuple_
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.schema import IdempotencyKey, utcnow

TABLE = cast(Table, IdempotencyKey.__table__)
COLUMNS = TABLE.c
MAX_KEY_LENGTH = 255
# Printable ASCII, as the draft's sf-string allows: no control characters, nothing a log line could be forged with.
KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_LENGTH}}}")


def stored(key: str) -> str:
    """What the table keeps of a key: its SHA-256, hex. The key's exact bytes decide (MySQL's default collation
    would take "abc", "ABC" and "abc " for one key), and a client's text is never stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def valid_key(key: str) -> bool:
    """Whether an Idempotency-Key header's value can be used (1 to 255 printable ASCII characters)."""
    return KEY.fullmatch(key) is not None  # fullmatch: "$" would let a trailing newline through


def fingerprint(files: Sequence[tuple[str | None, bytes]], fields: Sequence[tuple[str, str | None]]) -> str:
    """SHA-256 of what a request asks for: each file's name and bytes, in order, and the named form fields."""
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(b"file\0" + (name or "").encode() + b"\0" + hashlib.sha256(data).digest())
    for field_name, value in fields:
        digest.update(b"field\0" + field_name.encode() + b"\0" + (value or "").encode() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Remembered:
    """What a key recorded: the request's fingerprint and the uploads it made."""

    request_sha256: str
    task_ids: list[str]
    created_at: datetime


@dataclass(frozen=True)
class Claimed:
    """A key a request asks to store: whose, which, what the request asks for, the uploads it would make."""

    owner: str
    key: str
    request_sha256: str
    task_ids: list[str]


def claim_all(conn: Connection, claims: Sequence[Claimed], ttl_seconds: float) -> dict[tuple[str, str], Remembered]:
    """Store several requests' keys in one statement (a group of coalesced uploads), then what each key names now.

    A key already live keeps its record: the request whose task ids the record names is the one that made it, any
    other (an earlier request's repeat, or a repeat in the same group) replays it. An expired record is taken over
    in place. Rows go in sorted by (owner, key), so concurrent groups lock their keys in one order; a key held by
    another transaction makes the statement wait for it to end.
    """
    if not claims:
        return {}
    now = utcnow()
    rows = sorted(({"owner": c.owner, "idem_key": stored(c.key), "request_sha256": c.request_sha256,
                    "task_ids": list(c.task_ids), "created_at": now} for c in claims),
                  key=lambda row: (row["owner"], row["idem_key"]))
    conn.execute(_upsert(conn.dialect.name, rows, now - timedelta(seconds=ttl_seconds)))
    asked = {(c.owner, stored(c.key)): (c.owner, c.key) for c in claims}
    pairs = sorted(asked)
    # A locking read: it sees the latest committed records (and ours), whatever snapshot the transaction has.
    found = conn.execute(select(COLUMNS.owner, COLUMNS.idem_key, COLUMNS.request_sha256, COLUMNS.task_ids,
                                COLUMNS.created_at).where(tuple_(COLUMNS.owner, COLUMNS.idem_key).in_(pairs))
                         .with_for_update())
    return {asked[(r.owner, r.idem_key)]: Remembered(r.request_sha256, list(r.task_ids), r.created_at)
            for r in found}


def _upsert(dialect: str, rows: list[dict[str, object]], expired_before: datetime) -> Any:
    """INSERT the rows; where a key exists, replace its record only if it expired."""
    expired = COLUMNS.created_at < expired_before
    if dialect in ("mysql", "mariadb"):
        statement = mysql_insert(TABLE).values(rows)
        # created_at last: MySQL assigns left to right, and the test reads the old created_at.
        return statement.on_duplicate_key_update([
            (name, func.IF(expired, statement.inserted[name], COLUMNS[name]))
            for name in ("request_sha256", "task_ids", "created_at")])
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"no upsert of idempotency keys written for {dialect}")
    other = (sqlite_insert if dialect == "sqlite" else pg_insert)(TABLE).values(rows)
    return other.on_conflict_do_update(index_elements=["owner", "idem_key"], where=expired, set_={
        name: other.excluded[name] for name in ("request_sha256", "task_ids", "created_at")})


def forget_owner(conn: Connection, owner: str) -> int:
    """Remove every key of an owner (erasure of all their uploads); how many."""
    return int(conn.execute(delete(TABLE).where(COLUMNS.owner == owner)).rowcount)


def purge_expired(conn: Connection, ttl_seconds: float, limit: int) -> int:
    """Remove up to `limit` keys older than their lifetime, oldest first, on the created_at index; how many."""
    before = utcnow() - timedelta(seconds=ttl_seconds)
    ids = [r.id for r in conn.execute(select(COLUMNS.id).where(COLUMNS.created_at < before)
                                      .order_by(COLUMNS.created_at).limit(limit))]
    if not ids:
        return 0
    return int(conn.execute(delete(TABLE).where(COLUMNS.id.in_(ids))).rowcount)
