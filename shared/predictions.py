"""The life of a prediction: the ONLY code that moves an upload between states.

    record ──▶ PENDING ──claim──▶ STARTED (leased) ──finish──▶ SUCCESS | FAILURE   (final: never written again)
                  ▲  │                 │ lease expired, or released after an error
                  └──┼─────────────────┘ ... after MAX_ATTEMPTS deliveries: FAILURE (poison)
                     └─cancel (PENDING or STARTED)─▶ CANCELED                     (final: the claim is fenced)

Every write is guarded by what the writer saw (the state, the delivery count, the claim's token), so a
redelivered message, a second recovery or a worker that wakes up after its lease ran out can never
overwrite a newer state. The web records and enqueues; workers claim, finish and release; recovery
expires claims and marks lost uploads re-enqueued (shared/queue.py sends). Redis only caches final documents
(shared/statuses.py reads through it).
A state that asks for a webhook schedules its delivery in the same transaction (shared/deliveries.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, literal_column, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert

from shared.dbclock import db_now, read_db_now
from shared.deliveries import Event, Hold, reports, schedule
from shared.schema import FINAL_STATES, STATUS_COLUMNS, Prediction, State, status_document, utcnow

log = logging.getLogger(__name__)

TABLE = cast(Table, Prediction.__table__)
COLUMNS = TABLE.c
STATUS_SELECT = [COLUMNS[name] for name in STATUS_COLUMNS]


def _claimable() -> Any:
    """PENDING, or STARTED under a lease that ran out (by the database's clock): nobody is working on it."""
    return or_(COLUMNS.state == State.PENDING.value,
               and_(COLUMNS.state == State.STARTED.value, COLUMNS.lease_expires_at < db_now()))


@dataclass(frozen=True)
class NewUpload:
    """A validated upload, ready to be recorded; its task id is known before it is (long polls subscribe first)."""

    data: bytes
    filename: str | None
    content_type: str | None
    width: int | None
    height: int | None
    owner: str | None = None
    webhook_url: str | None = None
    webhook_events: str | None = None  # comma-separated, e.g. "start,completed"; None with no webhook
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))


# --- the web: record (or withdraw), cancel ----------------------------------------------------------------


def record(conn: Connection, uploads: Sequence[NewUpload], queue: str) -> list[dict[str, Any]]:
    """Insert the uploads as PENDING rows (the outbox: durable before anyone is told); their row values."""
    if not uploads:  # a group whose every request replayed its key
        return []
    now = utcnow()
    rows = [
        {"task_id": u.task_id, "state": State.PENDING.value, "image": u.data,
         "image_sha256": hashlib.sha256(u.data).hexdigest(), "filename": u.filename,
         "content_type": u.content_type, "size_bytes": len(u.data), "width": u.width, "height": u.height,
         "created_at": now, "deliveries": 0, "queue": queue, "owner": u.owner,
         "webhook_url": u.webhook_url, "webhook_events": u.webhook_events}
        for u in uploads
    ]
    # Recovery ages the message from enqueued_at on the database's clock: a web host's skew cannot make it look lost.
    conn.execute(insert(TABLE).values(enqueued_at=db_now()), rows)
    return rows


def withdraw(conn: Connection, task_ids: Sequence[str]) -> None:
    """Forget uploads that could not be enqueued: they were never accepted (the client got a 503)."""
    conn.execute(delete(TABLE).where(COLUMNS.task_id.in_(list(task_ids)), COLUMNS.state == State.PENDING.value))


# --- workers: look up, claim, finish, release, renew ------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """What a worker sees of an upload before it claims it."""

    task_id: str
    state: str
    deliveries: int
    leased: bool  # STARTED under a lease that has not run out: another worker has it

    @property
    def claimable(self) -> bool:
        """Not final and nobody holds a live claim on it."""
        return self.state not in FINAL_STATES and not self.leased


def look_up(conn: Connection, task_ids: Sequence[str]) -> dict[str, Found]:
    """The uploads' states and delivery counts (no image bytes); unknown ids are left out."""
    leased = and_(COLUMNS.state == State.STARTED.value, COLUMNS.lease_expires_at > db_now())
    rows = conn.execute(select(COLUMNS.task_id, COLUMNS.state, COLUMNS.deliveries, leased.label("leased"))
                        .where(COLUMNS.task_id.in_(list(task_ids))))
    return {r.task_id: Found(r.task_id, r.state, r.deliveries, bool(r.leased)) for r in rows}


def stored_documents(conn: Connection, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The status documents the database holds for these ids, with their webhooks' deliveries."""
    rows = conn.execute(select(*STATUS_SELECT).where(COLUMNS.task_id.in_(list(task_ids)))).all()
    hooked = [row.task_id for row in rows if row.webhook_url]
    found = reports(conn, hooked) if hooked else {}
    return {row.task_id: status_document(row._mapping, found.get(row.task_id)) for row in rows}


@dataclass(frozen=True)
class Hook:
    """Where an upload's webhook goes, and for which events."""

    url: str
    events: str  # comma-separated

    def wants(self, event: str) -> bool:
        """Whether the client asked for this event."""
        return event in self.events.split(",")


@dataclass(frozen=True)
class Claim:
    """Uploads one worker started: the token that fences its final write, their images and creation times."""

    token: str
    images: dict[str, bytes]
    created_at: dict[str, datetime]
    hooks: dict[str, Hook] = field(default_factory=dict)  # the claimed uploads that asked for a webhook


def claim(conn: Connection, task_ids: Sequence[str], deliveries: int, worker: str, lease_seconds: float) -> Claim:
    """Claim the uploads still PENDING (or whose lease ran out) with exactly `deliveries` deliveries so far.

    Each claimed upload becomes STARTED under a lease, and its delivery count goes up by one: poison
    detection counts the workers that started an upload, never the time it waited.
    """
    token = secrets.token_hex(16)
    # The lease on the database's clock: a worker whose own clock runs ahead cannot stretch it.
    conn.execute(update(TABLE)
                 .where(COLUMNS.task_id.in_(list(task_ids)), COLUMNS.deliveries == deliveries, _claimable())
                 .values(state=State.STARTED.value, claim_token=token, deliveries=COLUMNS.deliveries + 1,
                         lease_expires_at=db_now(lease_seconds), started_at=db_now(), worker=worker))
    rows = conn.execute(select(COLUMNS.task_id, COLUMNS.image, COLUMNS.created_at, COLUMNS.webhook_url,
                               COLUMNS.webhook_events)
                        .where(COLUMNS.task_id.in_(list(task_ids)), COLUMNS.claim_token == token)).all()
    hooks = {r.task_id: Hook(r.webhook_url, r.webhook_events or "completed") for r in rows if r.webhook_url}
    claimed = Claim(token, {r.task_id: r.image for r in rows}, {r.task_id: r.created_at for r in rows}, hooks)
    started = [Event(t, "start", hook.url, _started_document(claimed, t)) for t, hook in hooks.items()
               if hook.wants("start")]
    schedule(conn, started)
    return claimed


def _started_document(claimed: Claim, task_id: str) -> dict[str, Any]:
    return status_document({"task_id": task_id, "state": State.STARTED.value,
                            "created_at": claimed.created_at.get(task_id)})


def _schedule_completed(conn: Connection, docs: Mapping[str, dict[str, Any]], hold: Hold | None = None) -> None:
    """Schedule the `completed` webhook of uploads that just became final and asked for one (under a hold, if
    given: an upload becomes final once, so its `completed` is always new)."""
    schedule(conn, [Event(t, "completed", doc["webhook"]["url"], doc) for t, doc in docs.items()
                    if doc.get("webhook") and "completed" in doc["webhook"]["events"]], hold)


def finish(conn: Connection, claim: Claim, results: Mapping[str, dict[str, Any]],
           hold: Hold | None = None) -> dict[str, dict[str, Any]]:
    """Write final results, only where this claim still holds; the documents as stored afterwards.

    A worker whose lease ran out (stalled, say) finds its claim taken over: its late write changes nothing.
    The `completed` webhooks it schedules are held by `hold` (a sender of this process), as far as it has room.
    """
    finished = utcnow()
    values = {task_id: {**result, "finished_at": finished} for task_id, result in results.items()}
    if not values:
        return {}
    if _write_results(conn, claim.token, values):
        docs = {task_id: status_document({"task_id": task_id, "created_at": claim.created_at.get(task_id), **row,
                                          **_hook_values(claim.hooks.get(task_id))})
                for task_id, row in values.items()}
        ours = docs
    else:
        # Some claims were taken over (cancelled, deleted, or expired and claimed again): the database is the truth.
        _drop_ghosts(conn, list(values))
        docs = stored_documents(conn, values)
        mine = _still_claimed(conn, claim.token, list(docs))
        ours = {t: doc for t, doc in docs.items() if t in mine and doc["state"] in FINAL_STATES}
    if claim.hooks:
        _schedule_completed(conn, {t: doc for t, doc in ours.items() if t in claim.hooks}, hold)
    return docs


def _hook_values(hook: Hook | None) -> dict[str, Any]:
    return {} if hook is None else {"webhook_url": hook.url, "webhook_events": hook.events}


def _still_claimed(conn: Connection, token: str, task_ids: list[str]) -> set[str]:
    """The ids whose row this claim still holds (its write went in)."""
    if not task_ids:
        return set()
    query = select(COLUMNS.task_id).where(COLUMNS.task_id.in_(task_ids), COLUMNS.claim_token == token)
    return {r.task_id for r in conn.execute(query)}


def _drop_ghosts(conn: Connection, task_ids: list[str]) -> None:
    """Remove rows that the MySQL upsert inserted for uploads deleted while claimed (never committed)."""
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.execute(delete(TABLE).where(COLUMNS.task_id.in_(task_ids), COLUMNS.size_bytes == 0,
                                         COLUMNS.image_sha256 == ""))


def _write_results(conn: Connection, token: str, values: Mapping[str, Mapping[str, Any]]) -> bool:
    """Write final values where the claim still holds; False if some row was taken over (or already final)."""
    if conn.dialect.name in ("mysql", "mariadb"):
        first = next(iter(values.values()))
        # Placeholders for the NOT NULL columns of the insert path, taken only for an upload deleted while
        # claimed: _drop_ghosts removes such a row again in the same transaction.
        filler = {"image": b"", "image_sha256": "", "size_bytes": 0, "created_at": first["finished_at"]}
        rows = [{"task_id": t, "claim_token": token, **filler, **v} for t, v in values.items()]
        # Affected rows: 2 for each row updated, 1 for a row left as it was (CLIENT_FOUND_ROWS).
        return conn.execute(_finish_upsert(tuple(first)), rows).rowcount == 2 * len(rows)
    held = and_(COLUMNS.task_id == bindparam("_task_id"), COLUMNS.claim_token == token,
                COLUMNS.state == State.STARTED.value)
    statement = update(TABLE).where(held).values({name: bindparam(name) for name in next(iter(values.values()))})
    rows = [{"_task_id": t, **v} for t, v in values.items()]
    return conn.execute(statement, rows).rowcount == len(rows)


@functools.lru_cache(maxsize=4)
def _finish_upsert(columns: tuple[str, ...]) -> Any:
    """MySQL: a whole batch's results in ONE statement (an executemany UPDATE costs a round trip per row).

    INSERT ... ON DUPLICATE KEY UPDATE on the unique task_id: every row exists, so only the UPDATE part runs.
    Each assignment keeps the row as it is unless it is still STARTED under this claim's token, and `state`
    is assigned last because MySQL evaluates the assignments left to right. Literal states: PyMySQL batches
    an executemany INSERT into one statement only when the ON DUPLICATE KEY part has no parameters.
    """
    statement = mysql_insert(TABLE)
    held = and_(COLUMNS.state == literal_column(f"'{State.STARTED.value}'"),
                COLUMNS.claim_token == statement.inserted.claim_token)
    ordered = [name for name in columns if name != "state"] + ["state"]
    return statement.on_duplicate_key_update(
        [(name, func.IF(held, statement.inserted[name], COLUMNS[name])) for name in ordered])


def release(conn: Connection, claim: Claim) -> None:
    """Give back a claim after an error that was not the upload's fault (the database or Redis away)."""
    conn.execute(update(TABLE)
                 .where(COLUMNS.task_id.in_(list(claim.images)), COLUMNS.claim_token == claim.token,
                        COLUMNS.state == State.STARTED.value)
                 .values(state=State.PENDING.value, claim_token=None, lease_expires_at=None,
                         deliveries=COLUMNS.deliveries - 1))


def renew(conn: Connection, claims: Iterable[Claim], lease_seconds: float) -> None:
    """Push back the leases of claims still being worked on (a live worker keeps what it started)."""
    expires = db_now(lease_seconds)
    for held in claims:
        conn.execute(update(TABLE)
                     .where(COLUMNS.task_id.in_(list(held.images)), COLUMNS.claim_token == held.token,
                            COLUMNS.state == State.STARTED.value)
                     .values(lease_expires_at=expires))


def poison_reason(deliveries: int) -> str:
    """Why an upload was given up on, in words a user can act on."""
    return (f"Not read: {deliveries} worker{'s' if deliveries != 1 else ''} started this image and died or timed "
            "out before answering, so it is not tried again (it may crash the reader). Try another image.")


def fail_poison(conn: Connection, found: Iterable[Found]) -> dict[str, dict[str, Any]]:
    """End uploads that used up their deliveries as FAILURE; stored documents.

    Guarded by the delivery count seen and by nobody holding a live claim: a lease renewed, or a claim given
    back and taken again, since the caller looked leaves the upload alone.
    """
    failed: list[str] = []
    for item in found:
        done = conn.execute(update(TABLE)
                            .where(COLUMNS.task_id == item.task_id, COLUMNS.deliveries == item.deliveries,
                                   _claimable())
                            .values(state=State.FAILURE.value, error=poison_reason(item.deliveries),
                                    finished_at=utcnow(), lease_expires_at=None)).rowcount
        if done:
            failed.append(item.task_id)
    docs = stored_documents(conn, failed) if failed else {}
    _schedule_completed(conn, docs)
    return docs


CANCELED_REASON = "Canceled on request before it was read."


@dataclass(frozen=True)
class Canceled:
    """What a cancel found: the upload's document now, and whether this cancel ended it."""

    document: dict[str, Any]
    changed: bool


def cancel(conn: Connection, task_id: str, owner: str | None) -> Canceled | None:
    """Cancel an unfinished upload of this owner (None: an operator, any owner's); None if unknown or not theirs.

    PENDING or STARTED becomes CANCELED and the claim is cleared: a worker still predicting it finds its claim
    gone, so its final write changes nothing, and a message still queued for it is skipped.
    """
    mine = [COLUMNS.task_id == task_id, *([COLUMNS.owner == owner] if owner is not None else [])]
    # Locking: if a worker's finish commits first, the UPDATE below then sees (and reports) its final row.
    if conn.execute(select(COLUMNS.id).where(*mine).with_for_update()).first() is None:
        return None
    done = conn.execute(update(TABLE).where(*mine, COLUMNS.state.in_([State.PENDING.value, State.STARTED.value]))
                        .values(state=State.CANCELED.value, finished_at=utcnow(), claim_token=None,
                                lease_expires_at=None, error=CANCELED_REASON)).rowcount
    docs = stored_documents(conn, [task_id])
    if done:
        _schedule_completed(conn, docs)
    return Canceled(docs[task_id], bool(done))


# --- recovery: expired claims, lost messages --------------------------------------------------------------


def expired_claims(conn: Connection, queue: str, limit: int = 1000) -> list[Found]:
    """STARTED uploads of this queue whose lease ran out: their worker died, stalled or was cut off."""
    rows = conn.execute(select(COLUMNS.task_id, COLUMNS.state, COLUMNS.deliveries)
                        .where(COLUMNS.queue == queue, COLUMNS.state == State.STARTED.value,
                               COLUMNS.lease_expires_at < db_now())
                        .order_by(COLUMNS.lease_expires_at).limit(limit))
    return [Found(r.task_id, r.state, r.deliveries, leased=False) for r in rows]


def unclaim(conn: Connection, found: Iterable[Found]) -> list[str]:
    """Send expired claims back to PENDING (guarded by the delivery count seen); the ids that went back."""
    back: list[str] = []
    for item in found:
        done = conn.execute(update(TABLE)
                            .where(COLUMNS.task_id == item.task_id, COLUMNS.deliveries == item.deliveries,
                                   COLUMNS.state == State.STARTED.value, COLUMNS.lease_expires_at < db_now())
                            .values(state=State.PENDING.value, claim_token=None, lease_expires_at=None)).rowcount
        if done:
            back.append(item.task_id)
    return back


def waiting_longer_than(conn: Connection, queue: str, seconds: float, limit: int) -> list[str]:
    """PENDING uploads of this queue last enqueued more than `seconds` ago (database clock), oldest first."""
    rows = conn.execute(select(COLUMNS.task_id)
                        .where(COLUMNS.queue == queue, COLUMNS.state == State.PENDING.value,
                               COLUMNS.enqueued_at < db_now(-seconds))
                        .order_by(COLUMNS.enqueued_at).limit(limit))
    return [r.task_id for r in rows]


def states(conn: Connection, task_ids: Iterable[str]) -> dict[str, str]:
    """The state of each known id."""
    ids = list(task_ids)
    if not ids:
        return {}
    return {r.task_id: r.state for r in conn.execute(select(COLUMNS.task_id, COLUMNS.state)
                                                         .where(COLUMNS.task_id.in_(ids)))}


def mark_requeued(conn: Connection, task_ids: Sequence[str]) -> list[str]:
    """Note that lost uploads are being enqueued again; the ids still PENDING (the ones to send)."""
    now = read_db_now(conn)
    conn.execute(update(TABLE).where(COLUMNS.task_id.in_(list(task_ids)), COLUMNS.state == State.PENDING.value)
                 .values(enqueued_at=now))
    rows = conn.execute(select(COLUMNS.task_id).where(COLUMNS.task_id.in_(list(task_ids)),
                                                      COLUMNS.state == State.PENDING.value,
                                                      COLUMNS.enqueued_at == bindparam("now", now)))
    return [r.task_id for r in rows]
