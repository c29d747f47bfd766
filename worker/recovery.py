"""Recovery: give back uploads whose worker died or stalled, and re-send those whose message is really gone.

Waiting is never a fault: an upload whose message is still on the queue is left alone however long the
backlog, so the queue never holds two messages for one upload. Each sweep (one worker process per queue
at a time, under a Redis lock) does, for its own queue only:

1. Claims whose lease ran out (the worker died, or stopped renewing): back to PENDING, or FAILURE as
   poison once MAX_ATTEMPTS workers started the upload.
2. PENDING uploads enqueued more than SWEEP_AFTER_SECONDS ago are looked for in Redis, in one atomic read
   of the queue and of kombu's `unacked` hash (messages reserved by workers, acked late):
   - on the queue: waiting, left alone;
   - reserved by a worker for less than SWEEP_AFTER_SECONDS: in hand, left alone;
   - reserved for longer while its upload is still PENDING: the worker died or stalled holding it, so the
     message is put back on the queue (as kombu itself would after its one-hour visibility timeout);
   - nowhere, in two sweeps in a row (a message being handed to a worker is in neither place for a few
     microseconds): lost (Redis flushed or restarted empty), so the upload is enqueued again.
3. Then, if given one, retention's purge (worker/retention.py: every queue's rows, which is safe to run from
   several queues' sweeps at once), still under the lock; a purge that fails is logged and ends nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from sqlalchemy import Engine

from shared import predictions
from shared.errors import REDIS_ERRORS
from shared.kombu_redis import Layout, due, message_task_ids, redelivered
from shared.schema import FINAL_STATES, State

log = logging.getLogger(__name__)

DEFAULT_LAYOUT = Layout()  # kombu's defaults: no key prefix
SUSPECTS_PER_SWEEP = 5000  # the oldest first; the rest wait for the next sweep
# Messages read per sweep, from the consuming end (the oldest). A longer queue is still draining, so nothing
# on it can be called lost this sweep: its tail is not read (that would move megabytes every sweep).
SCAN_LIMIT = 10_000

Enqueue = Callable[[Sequence[str]], None]

# Take the lock, or keep it if this process holds it: one atomic step, so two processes never both sweep.
_LOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('expire', KEYS[1], ARGV[2])
  return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""
# Move a reserved message back onto its queue if it is still the entry we read (compare-and-move, atomic).
_PUT_BACK = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('rpush', KEYS[3], ARGV[3])
return 1
"""


def lock_key(queue: str) -> str:
    """The Redis key that lets one process at a time recover this queue."""
    return f"digits:recovery:{queue}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Held:
    """A message a worker reserved and has not acked yet."""

    tag: str
    task_ids: list[str]
    age: float


@dataclass(frozen=True)
class Snapshot:
    """Where this queue's messages are, read atomically: on the queue, or reserved by workers."""

    queued: frozenset[str]
    held: list[Held]
    complete: bool = True  # the whole queue was read: an upload found nowhere really has no message

    @classmethod
    def read(cls, redis: Redis, queue: str, layout: Layout = DEFAULT_LAYOUT) -> Snapshot:
        """One MULTI/EXEC: the queue's messages, the reserved ones, their delivery times and Redis' clock."""
        pipe = redis.pipeline(transaction=True)
        keys = layout.queue_keys(queue)  # one list per priority step
        for key in keys:
            pipe.llen(key)
            pipe.lrange(key, -SCAN_LIMIT, -1)
        pipe.hgetall(layout.unacked)
        pipe.zrange(layout.unacked_index, 0, -1, withscores=True)
        pipe.time()
        *lists, unacked, index, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        queued: set[str] = set()
        complete = all(length <= SCAN_LIMIT for length in lists[0::2])
        for raw in (raw for listed in lists[1::2] for raw in listed):
            try:
                queued.update(message_task_ids(json.loads(raw)))
            except (ValueError, TypeError, KeyError, IndexError):  # not ours to read: no upload is lost for sure
                complete = False
        delivered = {_text(tag): score for tag, score in index}
        return cls(frozenset(queued), _held(unacked, delivered, queue, now), complete)


def _held(unacked: dict[Any, Any], delivered: dict[str, float], queue: str, now: float) -> list[Held]:
    """This queue's reserved messages; a retry waiting for its ETA counts its age from the ETA."""
    held = []
    for tag, raw in unacked.items():
        try:
            payload, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                since = max(delivered.get(_text(tag), now), due(payload))
                held.append(Held(_text(tag), message_task_ids(payload), now - since))
        except (ValueError, TypeError, KeyError, IndexError):
            log.warning("recovery: unreadable reserved message %s left alone", _text(tag))
    return held


def put_back(redis: Redis, queue: str, tag: str, layout: Layout = DEFAULT_LAYOUT) -> bool:
    """Move a reserved message back onto its queue, as kombu's restore does; False if it was acked meanwhile.

    It goes back under a new delivery tag, so a late ack from the worker that held it cannot remove the
    next holder's reservation.
    """
    raw = redis.hget(layout.unacked, tag)
    if raw is None:
        return False
    payload = redelivered(json.loads(raw)[0], str(uuid.uuid4()))
    moved = redis.register_script(_PUT_BACK)(keys=[layout.unacked, layout.unacked_index,
                                                   layout.restore_key(payload, queue)],
                                             args=[tag, raw, json.dumps(payload)])
    return bool(moved)  # rpush: the consuming end, so it is taken next


@dataclass
class SweepResult:
    """What one sweep did, by task id."""

    unclaimed: list[str] = field(default_factory=list)
    poisoned: list[str] = field(default_factory=list)
    put_back: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)


class Recovery:
    """Sweeps of one queue; remembers which uploads it found without a message last time."""

    def __init__(self, engine: Engine, redis: Redis, queue: str, enqueue: Enqueue, after_seconds: float,
                 max_attempts: int, publish: Callable[[Any], None], purge: Callable[[], Any] | None = None,
                 layout: Layout = DEFAULT_LAYOUT) -> None:
        self._engine = engine
        self._layout = layout  # where the broker's messages are (shared/kombu_redis.py)
        self._redis = redis
        self._queue = queue
        self._enqueue = enqueue
        self._after = after_seconds
        self._max_attempts = max_attempts
        self._publish = publish
        self._purge = purge
        self._absent_before: set[str] = set()

    def sweep(self) -> SweepResult:
        """One pass: expired claims first, then uploads whose message is gone, then retention's purge."""
        result = SweepResult()
        self._expire_claims(result)
        with self._engine.begin() as conn:
            suspects = set(predictions.waiting_longer_than(conn, self._queue, self._after, SUSPECTS_PER_SWEEP))
        suspects |= set(result.unclaimed)
        if suspects:
            self._locate(suspects, result)
        else:
            self._absent_before = set()
        if result.unclaimed or result.poisoned or result.put_back or result.requeued:
            log.warning("recovery of %s: %d claim(s) expired, %d poison, %d message(s) put back, %d re-sent",
                        self._queue, len(result.unclaimed), len(result.poisoned), len(result.put_back),
                        len(result.requeued))
        self._run_purge()
        return result

    def _run_purge(self) -> None:
        """Retention's purge, if any: housekeeping, so nothing it raises may end a sweep."""
        if self._purge is None:
            return
        try:
            self._purge()
        except Exception:  # the purge logs what it expects (a database away); this is the last guard
            log.exception("retention purge failed")

    def _expire_claims(self, result: SweepResult) -> None:
        with self._engine.begin() as conn:
            expired = predictions.expired_claims(conn, self._queue)
            poison = [f for f in expired if f.deliveries >= self._max_attempts]
            docs = predictions.fail_poison(conn, poison) if poison else {}
            result.unclaimed = predictions.unclaim(conn, [f for f in expired if f.deliveries < self._max_attempts])
        result.poisoned = list(docs)
        if docs:
            self._publish(docs.values())

    def _locate(self, suspects: set[str], result: SweepResult) -> None:
        """Find each suspect's message; put back those held too long, re-send those found nowhere twice."""
        snapshot = Snapshot.read(self._redis, self._queue, self._layout)
        found = set(snapshot.queued)
        stale = [h for h in snapshot.held if h.age >= self._after and suspects.intersection(h.task_ids)]
        found.update(t for h in snapshot.held if h not in stale for t in h.task_ids)
        with self._engine.begin() as conn:
            current = predictions.states(conn, [t for h in stale for t in h.task_ids])
        for held in stale:
            # Only when none of its uploads is STARTED: a live claim means a live (if slow) worker has it.
            in_hand = any(current.get(t) == State.STARTED.value for t in held.task_ids)
            if not in_hand and put_back(self._redis, self._queue, held.tag, self._layout):
                result.put_back.extend(t for t in held.task_ids if current.get(t) not in FINAL_STATES)
            found.update(held.task_ids)
        absent = suspects - found if snapshot.complete else set()
        lost = sorted(absent & self._absent_before)
        self._absent_before = absent - set(lost)
        if lost:
            with self._engine.begin() as conn:
                result.requeued = predictions.mark_requeued(conn, lost)
            if result.requeued:
                self._enqueue(result.requeued)


class RecoveryLoop:
    """Runs sweeps every interval in a daemon thread, while this process holds the queue's recovery lock."""

    def __init__(self, recovery: Recovery, redis: Redis, queue: str, owner: str, interval: float) -> None:
        self._recovery = recovery
        self._redis = redis
        self._key = lock_key(queue)
        self._owner = owner
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recovery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stop.set()

    def holds_lock(self) -> bool:
        """Take or keep the queue's lock: the same process keeps sweeping while it lives (it remembers more)."""
        ttl = max(2, round(3 * self._interval))  # lapses by itself: a dead sweeper never blocks the others
        return bool(self._redis.register_script(_LOCK)(keys=[self._key], args=[self._owner, ttl]))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self.holds_lock():
                    self._recovery.sweep()
            except REDIS_ERRORS as exc:  # Redis or the link to it away: expected, one line per round
                log.warning("recovery sweep skipped: %s", exc)
            except Exception:  # the next round tries again; recovery must never kill the worker
                log.exception("recovery sweep failed")
