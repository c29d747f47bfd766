"""A worker's heartbeat: a file that only its batch pipeline touches, so a hung worker can be told from a slow one.

Celery's `inspect ping` proves that the consumer answers; a batch thread stuck for ever (a half-open socket, a
wedged model call) passes it. The batcher's runner threads touch WORKER_HEARTBEAT_FILE when a batch ends and
when they wait with nothing to do, but never while a batch has been running for longer than
WORKER_STALL_SECONDS. A file older than that means the pipeline is stuck (or the process is stopped): `make run`
then kills and restarts the worker, and Kubernetes' liveness probe (`python -m worker.heartbeat`) fails.

The checker and the worker share a host (a container, or `make run`'s machine): the file's mtime and the
checker's clock are the same clock.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# Touch at most this often: under load a batch ends every few milliseconds.
BEAT_EVERY_SECONDS = 1.0


class Heartbeat:
    """Touches `path` while the batches of this process keep finishing (or there are none to run)."""

    def __init__(self, path: Path | None, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._running: dict[int, float] = {}  # batch number -> when it started
        self._count = 0
        self._last_beat = float("-inf")
        self._lock = threading.Lock()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Mark a batch as running for the block; beat when it ends."""
        with self._lock:
            self._count += 1
            number = self._count
            self._running[number] = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(number, None)
            self.beat()

    def beat(self) -> None:
        """Touch the file, unless a batch has been running for longer than the stall limit."""
        if self.path is None:
            return
        now = self._clock()
        with self._lock:
            oldest = min(self._running.values(), default=now)
            if now - oldest >= self.stall_seconds or now - self._last_beat < BEAT_EVERY_SECONDS:
                return
            self._last_beat = now
        try:
            self.path.touch()
        except OSError as exc:  # a full or read-only disk: the watchdog will say so by restarting us
            log.warning("could not touch the heartbeat %s: %s", self.path, exc)


def heartbeat_age(path: Path, now: float | None = None) -> float | None:
    """Seconds since the heartbeat file was last touched; None if there is none."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - mtime


def main() -> int:
    """Liveness probe: exit 0 while the heartbeat is fresh, 1 when it is stale or missing."""
    from shared.config import get_settings

    settings = get_settings()
    if settings.worker_heartbeat_file is None:
        print("WORKER_HEARTBEAT_FILE is not set: nothing to check", file=sys.stderr)  # noqa: T201 - a probe's answer
        return 1
    age = heartbeat_age(settings.worker_heartbeat_file)
    if age is None or age > settings.worker_stall_seconds:
        shown = "missing" if age is None else f"{age:.0f} s old"
        print(f"worker stalled: heartbeat {settings.worker_heartbeat_file} {shown} "  # noqa: T201
              f"(limit {settings.worker_stall_seconds:.0f} s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
