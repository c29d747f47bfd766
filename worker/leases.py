"""Keep the leases of the uploads this process is working on: a live worker keeps what it started.

A claim's lease lasts SWEEP_AFTER_SECONDS. Batches normally finish in milliseconds, but a long one (a
cold GPU, a huge image) is renewed every third of the lease by a daemon thread. A process that dies or
is stopped renews nothing, so its claims run out and recovery hands them to another worker. A process
that lives but hangs (a wedged GPU call) stops renewing after MAX_HOLD_LEASES leases, for the same end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from shared import predictions
from shared.predictions import Claim

log = logging.getLogger(__name__)

# No batch legitimately takes this many leases (three minutes by default): past it, the work is presumed hung.
MAX_HOLD_LEASES = 3


class Leases:
    """The claims this process holds, renewed in the background while they are held."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.seconds = seconds
        self._engine = engine
        self._held: dict[str, tuple[Claim, float]] = {}  # token -> (claim, when it was taken, monotonic)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        """Renew this claim's lease for as long as the block runs."""
        self._ensure_thread()
        with self._lock:
            self._held[claim.token] = (claim, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(claim.token, None)

    def renew_now(self) -> None:
        """Renew once every lease held for less than MAX_HOLD_LEASES leases."""
        oldest = time.monotonic() - MAX_HOLD_LEASES * self.seconds
        with self._lock:
            held = [claim for claim, since in self._held.values() if since > oldest]
        if held:
            with self._engine.begin() as conn:
                predictions.renew(conn, held, self.seconds)

    def _ensure_thread(self) -> None:
        # Started on first use, in the process that does the work (never before a fork).
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.seconds / 3)
            try:
                self.renew_now()
            except Exception as exc:  # the database away: the next round tries again, the lease may run out
                log.warning("could not renew leases: %s", exc)
