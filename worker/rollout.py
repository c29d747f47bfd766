"""Model rollout: a worker notices a new model at MODEL_PATH and swaps to it between batches, losing nothing.

Training (or `python -m training.publish`) writes the ONNX form and the metadata first and moves the .h5 into
place last, each atomically. A worker looks at the .h5 every MODEL_RELOAD_SECONDS; when it changed, the new model
is loaded beside the old one, called once, and only then handed to the pipeline: a batch reads its model once,
so batches in flight finish on the old one and every answer names the version that read it. A set that does not
load (still being written, an ONNX form of another .h5) leaves the old model serving, and is tried again later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A file that did not load is tried again at the next look, then less and less often (a conversion of a
# broken .h5 costs a TensorFlow process each time): at most every this many seconds.
MAX_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class Stamp:
    """What tells one file from its replacement: a rename gives a new inode; a rewrite, a new size or time."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Stamp | None:
        """The file's stamp now; None while it is missing."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class ModelWatcher:
    """Looks at the model file every `interval` seconds in a daemon thread; loads and swaps in what changed."""

    def __init__(self, path: Path, interval: float, load: Callable[[], Any], swap: Callable[[Any], None],
                 served: Stamp | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._interval = interval
        self._load = load
        self._swap = swap
        self._served = served  # the stamp of the file the serving model was loaded from
        self._clock = clock
        self._refused: Stamp | None = None  # the last stamp that did not load (logged once)
        self._failures = 0  # consecutive failed loads of that stamp
        self._retry_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start looking (nothing to do when the interval is 0: rollouts then need a restart)."""
        if self._interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop looking."""
        self._stop.set()

    def check(self) -> bool:
        """One look: load and swap in the model if its file changed since the served one; whether it swapped."""
        stamp = Stamp.of(self._path)
        if stamp is None or stamp == self._served:
            return False
        if stamp == self._refused and self._clock() < self._retry_at:
            return False
        try:
            model = self._load()
        except Exception as exc:  # the old model keeps serving; a later look tries again
            self._refused_again(stamp, exc)
            return False
        self._swap(model)
        self._served, self._refused, self._failures = stamp, None, 0
        return True

    def _refused_again(self, stamp: Stamp, exc: Exception) -> None:
        """Note a failed load: said once per file, tried again after a delay that doubles each time."""
        if stamp != self._refused:
            log.warning("a new model at %s did not load (%s); still serving the old one", self._path, exc)
            self._refused, self._failures = stamp, 0
        self._failures += 1
        delay = min(self._interval * 2 ** (self._failures - 1), MAX_RETRY_SECONDS)
        self._retry_at = self._clock() + delay

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()
