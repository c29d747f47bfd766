"""Webhook delivery: a worker process's sender loop, apart from prediction batches.

Delivery state lives in MySQL only (shared/deliveries.py). Each worker process with a WEBHOOK_SECRET runs one
Deliverer: a poller thread that takes due deliveries under a short lease (one short transaction per take) and
hands them to a few sending threads of its own, never to the Celery task threads or the batch runners, so a slow
or dead receiver holds nothing but a sender. It looks every POLL_SECONDS, and at once when this process's
pipeline scheduled events that nobody holds. The `completed` events of this process's own batches are not even
taken: the pipeline reserves room, the transaction that schedules them records them as held by this process
(shared/deliveries.py's Hold), and once it commits they go straight to a sender. A killed worker's deliveries
are taken over by any sender once their lease runs out, and sent again under the same webhook-id: at least once.

Each attempt checks the target again (DNS may have changed since the upload: a host that now resolves to a
private address is a failed attempt), signs the stored body per Standard Webhooks and POSTs it once (5 s, no
redirects, at most 64 KB of the answer read); a non-2xx answer, a timeout or a refusal is retried with back-off
until WEBHOOK_MAX_ATTEMPTS attempts were made, then the delivery is given up (FAILED).
"""

from __future__ import annotations

import heapq
import logging
import queue
import secrets
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine

from shared import deliveries
from shared.config import Settings
from shared.db import make_service_engine
from shared.deliveries import Due
from shared.webhooks import Target, WebhookRefused, backoff_seconds, check_target, sign, valid_secret
from worker.metrics import WEBHOOK_ATTEMPTS
from worker.webhook_post import KEEP_ALIVE_SECONDS, Attempt, Poster

log = logging.getLogger(__name__)

# How often a sender loop looks for due deliveries when nobody woke it (retries, other processes' events).
POLL_SECONDS = 1.0
SEND_TIMEOUT_SECONDS = 5.0
GATHER_SECONDS = 0.02  # after a wake-up, how long the poller lets more events gather before it takes them
RECORD_GATHER_SECONDS = 0.02  # how long a recording sender lets other outcomes gather before it records them
MAX_ANSWER_BYTES = 65536
CHECK_SECONDS = 1.0  # how long a checked target (its resolved address) is used before it is checked again
MAX_CHECKED = 10_000


class Deliverer:
    """Sends this process's share of due webhooks on `settings.webhook_senders` threads of its own."""

    def __init__(self, engine: Engine, settings: Settings, *, lease_seconds: float = deliveries.LEASE_SECONDS,
                 poll_seconds: float = POLL_SECONDS, timeout: float = SEND_TIMEOUT_SECONDS) -> None:
        if not settings.webhook_secret or not valid_secret(settings.webhook_secret):
            raise ValueError("a Deliverer needs WEBHOOK_SECRET: whsec_ and base64 of 24+ bytes")
        # The hold must outlast an attempt and its record, or a second sender would send it too while it runs.
        if lease_seconds <= timeout:
            raise ValueError("the lease must be longer than one attempt's timeout")
        self._engine = engine
        self._secret = settings.webhook_secret
        self._allowed = settings.allowed_webhook_hosts
        self._max_attempts = max(1, settings.webhook_max_attempts)
        self._retry_base = settings.webhook_retry_base_seconds
        self._senders = max(1, settings.webhook_senders)
        # Deliveries held per sender: as many as it surely sends, one timeout after another, well within the
        # hold (a held delivery must not wait behind slow ones until its hold runs out). 8 with the defaults.
        self._capacity = self._senders * max(1, int(lease_seconds // (1.5 * timeout)))
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._timeout = timeout
        self._wake = threading.Event()  # set: deliveries may be due now
        self._stop = threading.Event()
        # Shares of deliveries to send (a take split among the senders, or a batch's hold); outcomes are group
        # committed (_record).
        self._work: queue.SimpleQueue[list[Due] | None] = queue.SimpleQueue()
        self._busy = 0  # deliveries held by this process: handed to a sender and not yet recorded
        self._idle = threading.Condition()
        # When the retries this process recorded fall due (monotonic, a heap): the poller looks then, not later.
        self._retries: list[float] = []
        self._threads: list[threading.Thread] = []
        self._local = threading.local()  # each sender's Poster
        self._checked: dict[str, tuple[float, Target | WebhookRefused]] = {}  # url: (when checked, the answer)
        self._pending: list[deliveries.Outcome] = []  # attempts made, waiting to be recorded
        self._pending_lock = threading.Lock()
        self._recording = False  # a sender is recording what is pending

    def start(self) -> None:
        """Start the loop and the sending threads (daemons: a hung receiver never keeps a process alive)."""
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._send_loop, name=f"webhook-sender-{i}", daemon=True)
                         for i in range(self._senders)]
        self._threads.append(threading.Thread(target=self._run, name="webhook-poller", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("delivering webhooks on %d sender thread(s)", self._senders)

    def stop(self, timeout: float = SEND_TIMEOUT_SECONDS + 2) -> None:
        """Take nothing more, and give attempts in flight up to `timeout` seconds to be recorded."""
        self._stop.set()
        self._wake.set()
        for _ in range(self._senders):
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Whatever is still unrecorded is sent again by some sender once its lease runs out (at least once).

    def poll_once(self) -> int:
        """Take as many due deliveries as the senders can surely send within their hold; how many were taken."""
        with self._idle:
            free = self._capacity - self._busy
        if free <= 0 or self._stop.is_set():
            return 0
        # Only what can be sent now: a held delivery waiting behind a slow one would use up its lease.
        with self._engine.begin() as conn:
            taken = deliveries.take_due(conn, free, self._lease_seconds)
        with self._idle:
            self._busy += len(taken)
        shares = min(self._senders, len(taken))
        for share in range(shares):
            self._work.put(taken[share::shares])
        return len(taken)

    def reserve(self, count: int) -> deliveries.Hold | None:
        """Room for up to `count` events about to be scheduled, held as they are; None if the senders are full
        or not running (the poller takes the events then). Pass the hold to hand() whatever happens."""
        with self._idle:
            room = min(count, self._capacity - self._busy)
            if room <= 0 or not self._threads or self._stop.is_set():
                return None
            self._busy += room
        return deliveries.Hold(secrets.token_hex(8), self._lease_seconds, room)

    def hand(self, hold: deliveries.Hold, committed: bool = True) -> None:
        """Send what the hold holds once its transaction committed, and give back the room it did not use."""
        held = hold.held if committed else []
        self._release(hold.room - len(held))
        per_sender = self._capacity // self._senders  # as many as one sender surely sends within the hold
        for start in range(0, len(held), per_sender):
            self._work.put(held[start:start + per_sender])

    def scheduled(self) -> None:
        """Events were scheduled that nobody holds: take them now rather than at the next poll."""
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every delivery this process took has been recorded within the timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _attempt_all(self, held: list[Due]) -> list[deliveries.Outcome]:
        """One attempt of each held delivery, one after another; what to record of each."""
        attempts = [self._attempt(due) for due in held]
        return [deliveries.Outcome(due, attempt.status, attempt.error, attempt.ok, self._retry_in(due, attempt))
                for due, attempt in zip(held, attempts, strict=True)]

    def _record(self, outcomes: list[deliveries.Outcome]) -> None:
        """Record outcomes together with those other senders finished meanwhile, and give back their room.

        Group commit: the sender that finds nobody recording lets outcomes gather for RECORD_GATHER_SECONDS, then
        records everything pending in one transaction, until nothing is left; the others leave theirs to it.
        Under load batches are small (two or three uploads), and a transaction per batch cost more than the sends.
        """
        with self._pending_lock:
            self._pending += outcomes
            if self._recording:
                return
            self._recording = True
        try:
            self._stop.wait(RECORD_GATHER_SECONDS)  # let the other senders' next outcomes join this transaction
            while batch := self._take_pending():
                try:
                    with self._engine.begin() as conn:
                        recorded = deliveries.record_many(conn, batch)
                except Exception:  # their holds run out and they are sent again: at least once
                    log.exception("webhooks of %s: attempts not recorded", ", ".join(o.due.task_id for o in batch),
                                  extra={"task_ids": [o.due.task_id for o in batch]})
                else:
                    for outcome, done in zip(batch, recorded, strict=True):
                        self._report(outcome, done)
                finally:
                    self._release(len(batch))
        except BaseException:  # never left marked as recording, or nothing would be recorded again
            with self._pending_lock:
                self._recording = False
            raise

    def _take_pending(self) -> list[deliveries.Outcome]:
        """The outcomes waiting to be recorded, now this sender's to record."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            if not batch:
                self._recording = False  # in the same lock: an outcome added after this is recorded by its sender
            return batch

    def _retry_in(self, due: Due, attempt: Attempt) -> float | None:
        """When to try again after this attempt; None when delivered or given up."""
        made = due.attempts + 1
        return None if attempt.ok or made >= self._max_attempts else backoff_seconds(made,
                                                                                    base_seconds=self._retry_base)

    def _report(self, outcome: deliveries.Outcome, recorded: bool) -> None:
        """Count and log one recorded attempt, and note when its retry falls due."""
        due = outcome.due
        if recorded and outcome.retry_in is not None:
            self._retry_due_in(outcome.retry_in)
        result = "delivered" if outcome.delivered else "retry" if outcome.retry_in is not None else "gave_up"
        WEBHOOK_ATTEMPTS.labels(outcome=result).inc()
        # A line per failed attempt; deliveries only at DEBUG (under load they are hundreds a second, and the
        # document and the counter say it already).
        level = logging.DEBUG if outcome.delivered and recorded else logging.INFO
        log.log(level, "webhook %s of %s, attempt %d: %s (%s)%s", due.event, due.task_id, due.attempts + 1, result,
                outcome.status if outcome.error is None else outcome.error,
                "" if recorded else "; not recorded: its hold ran out and another sender took it over",
                extra={"task_ids": [due.task_id]})

    def _attempt(self, due: Due) -> Attempt:
        """One POST of the stored body to the target, checked again now; a refusal is a failed attempt."""
        target = self._check(due.url)
        if isinstance(target, WebhookRefused):
            return Attempt(status=None, error=f"refused: {target.message}")
        # Signed at each attempt (a fresh timestamp), with the same webhook-id: receivers drop repeats by it.
        headers = sign(self._secret, deliveries.message_id(due.task_id, due.event), datetime.now(UTC), due.payload)
        return self._poster().send(target, headers, due.payload.encode())

    def _check(self, url: str) -> Target | WebhookRefused:
        """The URL's target, or why it is refused: checked (resolved) again once CHECK_SECONDS have passed.

        Whatever the answer, a POST goes only to an address that was checked: a name that resolves elsewhere
        later is checked again within CHECK_SECONDS, like a short DNS TTL (a check per POST cost as much as
        the POST under load).
        """
        now = time.monotonic()
        known = self._checked.get(url)
        if known is not None and now - known[0] < CHECK_SECONDS:
            return known[1]
        try:
            result: Target | WebhookRefused = check_target(url, self._allowed)
        except WebhookRefused as exc:
            result = exc
        if len(self._checked) >= MAX_CHECKED:  # many receivers: start again rather than grow without bound
            self._checked.clear()
        self._checked[url] = (now, result)
        return result

    def _poster(self) -> Poster:
        """This thread's Poster: its connections are kept for its next POSTs, never shared with another thread."""
        poster: Poster | None = getattr(self._local, "poster", None)
        if poster is None:
            poster = self._local.poster = Poster(self._timeout, MAX_ANSWER_BYTES)
        return poster

    def _run(self) -> None:
        """The poller: take due deliveries when woken, or every POLL_SECONDS."""
        while not self._stop.is_set():
            self._wake.clear()  # before the take: a wake during it makes the wait below return at once
            try:
                self.poll_once()
            except Exception as exc:  # the database away: try again later, never let the loop die
                log.warning("could not take due webhooks: %s", exc)
                self._stop.wait(self._poll_seconds)
                continue
            if self._wake.wait(self._next_wait()):
                # Woken by a batch: let the next few batches' events join this take (one take, one record).
                self._stop.wait(GATHER_SECONDS)

    def _retry_due_in(self, seconds: float) -> None:
        """Note a retry this process recorded, so a back-off shorter than the poll is kept to."""
        if seconds >= self._poll_seconds:
            return  # a regular poll takes it in time
        with self._idle:
            heapq.heappush(self._retries, time.monotonic() + seconds)
        self._wake.set()  # the poller may be in a longer wait: it looks again and waits for this one

    def _next_wait(self) -> float:
        """Seconds until the next poll: POLL_SECONDS, or less if a retry of this process falls due sooner."""
        now = time.monotonic()
        with self._idle:
            if self._retries and self._retries[0] <= now:
                while self._retries and self._retries[0] <= now:  # due now: the next poll takes them
                    heapq.heappop(self._retries)
                return 0.0
            return min(self._poll_seconds, self._retries[0] - now) if self._retries else self._poll_seconds

    def _send_loop(self) -> None:
        """A sender: attempt what the poller hands over until told to stop."""
        while (held := self._next_work()) is not None:
            try:
                outcomes = self._attempt_all(held)
            except Exception:  # their holds run out and they are sent again: at least once
                log.exception("webhooks of %s: attempts not made", ", ".join(d.task_id for d in held),
                              extra={"task_ids": [d.task_id for d in held]})
                self._release(len(held))
                continue
            self._record(outcomes)

    def _next_work(self) -> list[Due] | None:
        """The next deliveries to send, or None to stop; kept connections are closed while none come."""
        while True:
            try:
                held = self._work.get(timeout=KEEP_ALIVE_SECONDS)
            except queue.Empty:
                self._poster().close_idle()
                continue
            if held is None:
                self._poster().close_idle(everything=True)
            return held

    def _release(self, count: int) -> None:
        """`count` held deliveries were recorded (or never held): room for as many more."""
        if count <= 0:
            return
        with self._idle:
            was_full = self._busy == self._capacity
            self._busy -= count
            self._idle.notify_all()
        if was_full:  # the poller could take nothing while every sender was busy: more may be due
            self._wake.set()


def make_deliverer(settings: Settings) -> Deliverer | None:
    """This process's Deliverer (not started) on a database pool of its own, or None where it has no secret."""
    if not settings.webhook_secret:
        log.info("WEBHOOK_SECRET is not set: this worker delivers no webhooks")
        return None
    if not valid_secret(settings.webhook_secret):
        log.error("WEBHOOK_SECRET is not whsec_ and base64 of 24+ bytes: this worker delivers no webhooks")
        return None
    # Its own connections (one per sender and the poller's): webhook bookkeeping never takes one a batch needs.
    engine = make_service_engine(settings, pool_size=max(1, settings.webhook_senders) + 1, max_overflow=0)
    return Deliverer(engine, settings, lease_seconds=settings.webhook_lease_seconds)
