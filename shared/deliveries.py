"""Webhook deliveries in MySQL: the ONLY code that moves a delivery between its states.

    scheduled (in the transaction that made the upload final, or STARTED) ──▶ PENDING ──2xx──▶ DELIVERED
                                                 ▲        │ non-2xx, timeout, refused target
                                                 └────────┘ retried with back-off ... after MAX attempts: FAILED

A sender takes due deliveries under a short lease (a killed sender's deliveries are taken over when it runs
out) and records each attempt guarded by its lease token, so two senders never both record one attempt. At
least once: a sender killed after the receiver answered but before it recorded the attempt sends it again,
under the same webhook-id, which is how receivers recognise a repeat.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.dbclock import read_db_now
from shared.schema import WebhookDelivery, utcnow

TABLE = cast(Table, WebhookDelivery.__table__)
COLUMNS = TABLE.c
PENDING, DELIVERED, FAILED = "PENDING", "DELIVERED", "FAILED"
# Longest a sender may hold a delivery: one attempt (5 s) and its bookkeeping, with room to spare.
LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Event:
    """An event of an upload that asked for a webhook: what to POST, and where."""

    task_id: str
    event: str  # start or completed
    url: str
    document: Mapping[str, Any]  # the status document as it was when the event happened


def message_id(task_id: str, event: str) -> str:
    """The webhook-id of an event: the same for every retry, so a receiver can drop repeats."""
    return f"msg_{task_id}_{event}"


def payload(document: Mapping[str, Any], event: str) -> str:
    """The JSON body of an event: the upload's status document (without the delivery's own report)."""
    body = {key: value for key, value in document.items() if key != "webhook"}
    return json.dumps({"type": f"prediction.{event}", "data": body}, separators=(",", ":"))


@dataclass(frozen=True)
class Due:
    """A delivery a sender holds: what to send, and the token that fences what it records."""

    task_id: str  # with event, the delivery's key
    event: str
    url: str
    payload: str
    attempts: int
    token: str


@dataclass
class Hold:
    """A sender's hold on up to `room` events as they are scheduled; `held` lists them once schedule() ran."""

    token: str
    seconds: float
    room: int
    held: list[Due] = field(default_factory=list)


# Built once (each batch with a webhook runs one): a repeat of an event is a no-op.
_SCHEDULE_MYSQL = mysql_insert(TABLE).on_duplicate_key_update(id=COLUMNS.id)
_SCHEDULE_SQLITE = sqlite_insert(TABLE).on_conflict_do_nothing()


def schedule(conn: Connection, events: Iterable[Event], hold: Hold | None = None) -> None:
    """Record events to deliver, due now; in the caller's transaction, so a committed state has its deliveries.

    An event already recorded is left as it is: an upload claimed again (its worker died) starts only once.
    With a hold, up to `hold.room` events are recorded as held by it and added to `hold.held`, for its sender to
    send once the transaction commits: no take, no second read (the rest wait for a take). Hold only events
    recorded for the first time (an upload's `completed`): a repeat keeps its row, and the hold would send it again.
    """
    now = utcnow()
    dues = [Due(e.task_id, e.event, e.url, payload(e.document, e.event), 0, "") for e in events]
    if not dues:
        return
    room = max(0, hold.room - len(hold.held)) if hold is not None else 0
    token = hold.token if hold is not None else None
    expires = now + timedelta(seconds=hold.seconds) if hold is not None else None
    rows = [{"task_id": d.task_id, "event": d.event, "url": d.url, "payload": d.payload, "state": PENDING,
             "attempts": 0, "next_attempt_at": now, "created_at": now, "lease_token": token if i < room else None,
             "lease_expires_at": expires if i < room else None} for i, d in enumerate(dues)]
    conn.execute(_SCHEDULE_MYSQL if conn.dialect.name in ("mysql", "mariadb") else _SCHEDULE_SQLITE, rows)
    if hold is not None:
        hold.held += [replace(d, token=hold.token) for d in dues[:room]]  # sent once the caller commits


def take_due(conn: Connection, limit: int, lease_seconds: float = LEASE_SECONDS) -> list[Due]:
    """Hold up to `limit` due deliveries (not held by a live sender) for this sender; oldest due first."""
    now = read_db_now(conn)  # the database's clock: a sender whose host runs ahead takes no live hold
    free = or_(COLUMNS.lease_expires_at.is_(None), COLUMNS.lease_expires_at < now)
    ids = [r.id for r in conn.execute(select(COLUMNS.id).where(COLUMNS.state == PENDING, COLUMNS.next_attempt_at <= now,
                                                               free).order_by(COLUMNS.next_attempt_at).limit(limit))]
    if not ids:
        return []
    token = secrets.token_hex(8)
    # Guarded again: another sender may have taken some between the read and this write.
    conn.execute(update(TABLE).where(COLUMNS.id.in_(ids), COLUMNS.state == PENDING, COLUMNS.next_attempt_at <= now,
                                     free)
                 .values(lease_expires_at=now + timedelta(seconds=lease_seconds), lease_token=token))
    rows = conn.execute(select(COLUMNS.task_id, COLUMNS.event, COLUMNS.url, COLUMNS.payload, COLUMNS.attempts)
                        .where(COLUMNS.id.in_(ids), COLUMNS.lease_token == token).order_by(COLUMNS.next_attempt_at))
    return [Due(r.task_id, r.event, r.url, r.payload, r.attempts, token) for r in rows]


def record(conn: Connection, due: Due, status: int | None, error: str | None, delivered: bool,
           retry_in: float | None) -> bool:
    """Record one attempt: DELIVERED, PENDING again after `retry_in` seconds, or FAILED (retry_in None).

    Guarded by the hold's token: a sender whose hold ran out (and was taken over) records nothing; False then.
    """
    now = utcnow()
    if delivered:
        values: dict[str, Any] = {"state": DELIVERED, "delivered_at": now}
    elif retry_in is None:
        values = {"state": FAILED}
    else:
        values = {"state": PENDING, "next_attempt_at": now + timedelta(seconds=retry_in)}
    done = conn.execute(update(TABLE).where(COLUMNS.task_id == due.task_id, COLUMNS.event == due.event,
                                            COLUMNS.lease_token == due.token)
                        .values(attempts=COLUMNS.attempts + 1, last_status=status, last_error=(error or None) and
                                error[:255], lease_expires_at=None, lease_token=None, **values)).rowcount
    return bool(done)


@dataclass(frozen=True)
class Outcome:
    """One attempt's result, to record: what record() takes, for a held delivery."""

    due: Due
    status: int | None
    error: str | None
    delivered: bool
    retry_in: float | None


# Built once: under load a worker records a few dozen groups a second, and building the statement cost as much
# as running it.
_DELIVERED = (update(TABLE).where(COLUMNS.task_id.in_(bindparam("b_task_ids", expanding=True)),
                                  COLUMNS.event == bindparam("b_event"), COLUMNS.lease_token == bindparam("b_token"))
              .values(attempts=COLUMNS.attempts + 1, last_status=bindparam("b_status"), last_error=None,
                      lease_expires_at=None, lease_token=None, state=DELIVERED, delivered_at=bindparam("b_now")))


def record_many(conn: Connection, outcomes: Sequence[Outcome]) -> list[bool]:
    """Record several attempts at once; whether each was recorded (a hold taken over records nothing).

    Deliveries that succeeded under one hold with one status, the usual case under load, are recorded by one
    UPDATE (should some of its holds have been taken over, all of its outcomes report False: only the log
    line differs, never what is stored); the rest one by one.
    """
    recorded = [False] * len(outcomes)
    groups: dict[tuple[str, str, int | None], list[int]] = {}
    for i, outcome in enumerate(outcomes):
        if outcome.delivered and outcome.error is None:
            groups.setdefault((outcome.due.token, outcome.due.event, outcome.status), []).append(i)
        else:
            recorded[i] = record(conn, outcome.due, outcome.status, outcome.error, outcome.delivered,
                                 outcome.retry_in)
    now = utcnow()
    for (token, event, status), members in groups.items():
        task_ids = [outcomes[i].due.task_id for i in members]
        done = conn.execute(_DELIVERED, {"b_task_ids": task_ids, "b_event": event, "b_token": token,
                                         "b_status": status, "b_now": now}).rowcount
        for i in members:
            recorded[i] = done == len(task_ids)
    return recorded


def reports(conn: Connection, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What status documents say of each upload's `completed` delivery: state, attempts, last HTTP status."""
    if not task_ids:
        return {}
    rows = conn.execute(select(COLUMNS.task_id, COLUMNS.state, COLUMNS.attempts, COLUMNS.last_status)
                        .where(COLUMNS.task_id.in_(list(task_ids)), COLUMNS.event == "completed"))
    return {r.task_id: {"state": r.state, "attempts": r.attempts, "last_status": r.last_status,
                        "delivered": r.state == DELIVERED} for r in rows}


def forget(conn: Connection, task_ids: Sequence[str]) -> None:
    """Remove the deliveries of uploads being deleted (in the caller's transaction)."""
    if task_ids:
        conn.execute(delete(TABLE).where(COLUMNS.task_id.in_(list(task_ids))))
