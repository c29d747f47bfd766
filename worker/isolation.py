"""Run a suspect upload alone in its process, so that if it kills the process it takes nothing else down.

The micro-batcher runs several groups at once (BATCH_RUNNERS). An upload that a worker already started
and never finished is retried on its own, but "on its own" must hold for the whole process: if a fresh
group were in flight beside it and it killed the process again, that group's uploads would lose a
delivery too, and an innocent neighbour could reach MAX_ATTEMPTS and end as poison. So fresh groups share
the process, and a retry waits for them to finish and holds new ones back until it is done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Isolation:
    """A readers-writer lock that favours the writer: many fresh groups at once, or one retry alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0  # fresh groups in flight
        self._alone = False  # a retry in flight
        self._waiting_alone = 0  # retries waiting: new fresh groups wait behind them, so retries never starve

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the process together with other fresh groups."""
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Hold the process with nothing else in flight."""
        with self._cond:
            self._waiting_alone += 1
            try:
                self._cond.wait_for(lambda: not self._alone and not self._shared)
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()

    @property
    def waiting_alone(self) -> int:
        """How many retries wait for the process to empty."""
        with self._cond:
            return self._waiting_alone
