"""The supervisor `make run` starts its processes under: it restarts a child that died (with back-off) or whose
heartbeat went stale, and stops them all together. Used by `make run` and `make bench`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import REPO_ROOT
from worker.heartbeat import heartbeat_age

log = logging.getLogger("run_local")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Return once something accepts connections on the port; fail if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            program = proc.args if isinstance(proc.args, str | bytes | os.PathLike) else proc.args[0]
            raise SystemExit(f"{os.fsdecode(program)} {describe_exit(proc.returncode)} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


# How `make run` restarts a child that died, as compose's `restart: unless-stopped` and Kubernetes' CrashLoopBackOff
# do: one image that crashes a worker must not take the web down, and a child that cannot start must not spin.
RESTART_DELAY_S = 1.0  # first back-off: a crash costs about a second, yet a crash loop cannot burn a core
RESTART_DELAY_MAX_S = 30.0  # doubling stops here: a broken child is still retried twice a minute
HEALTHY_AFTER_S = 60.0  # a child that lived this long was working: its next exit starts the back-off over
# Exits in a row, each within HEALTHY_AFTER_S of a start: about 2.5 min of back-off in all, enough to ride out
# a database or Redis restart, short enough that a setup that cannot work ends `make run` visibly.
MAX_QUICK_EXITS = 10


@dataclass
class RestartState:
    """One child's exits since it last ran healthily."""

    exits: int = 0  # sets the back-off: the first delay after the first exit, doubling after each further one
    quick_exits: int = 0  # exits in a row, each within healthy_after of a start: the give-up count


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential back-off between restarts, and when to give up; pure, the caller passes the time."""

    first_delay: float = RESTART_DELAY_S
    max_delay: float = RESTART_DELAY_MAX_S
    healthy_after: float = HEALTHY_AFTER_S
    max_quick_exits: int = MAX_QUICK_EXITS

    def delay(self, exits: int) -> float:
        """Seconds to wait before the restart that follows the n-th exit since the child last ran healthily."""
        return min(self.max_delay, self.first_delay * 2 ** min(max(0, exits - 1), 32))

    def record_exit(self, state: RestartState, started_at: float, now: float) -> float | None:
        """Count an exit at `now` of a child started at `started_at`: the back-off before its restart, or None
        to give up."""
        if now - started_at >= self.healthy_after:
            state.exits, state.quick_exits = 1, 0
        else:
            state.exits += 1
            state.quick_exits += 1
        if state.quick_exits >= self.max_quick_exits:
            return None
        return self.delay(state.exits)


def describe_exit(returncode: int) -> str:
    """How a process ended, e.g. 'exited with code 3' or 'killed by SIGKILL'."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def kill_leftovers(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what a dead child left behind in its session (gunicorn or Celery workers), as a container runtime
    does when the container's main process exits."""
    # start_new_session made the child a group leader; the group's id stays taken while members remain.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Child:
    """One supervised process and what it takes to start it again."""

    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started_at: float
    restarts: RestartState = field(default_factory=RestartState)
    restart_at: float | None = None  # set while it is dead and waits out its back-off
    heartbeat: Watchdog | None = None  # a worker: killed (and so restarted) when its heartbeat goes stale


@dataclass(frozen=True)
class Watchdog:
    """A child's heartbeat file (worker/heartbeat.py) and how old it may get while the child lives."""

    path: Path
    stall_seconds: float
    start_seconds: float = 0.0  # how long it may take to its first beat (loading a model on a busy machine)

    def stalled_for(self, lived: float) -> float | None:
        """How long the child has shown no sign of progress, if longer than allowed: since its last beat, or since
        its start while it has not beaten yet (then allowed the longer of start_seconds and stall_seconds, as a
        Kubernetes startup probe would: a slow start on a loaded machine is not a hang, and killing it for one
        would only start the same slow start again)."""
        age = heartbeat_age(self.path)
        if age is None or age >= lived:  # no beat since this child started (the file may be a previous one's)
            return lived if lived > max(self.stall_seconds, self.start_seconds) else None
        return age if age > self.stall_seconds else None


class Stack:
    """The child processes: restarted when they die, stopped together."""

    def __init__(self, policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self.children: dict[str, Child] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a supervise() in another thread never restarts a child stop() has passed

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """The current process of each child, by name."""
        return {name: child.proc for name, child in self.children.items()}

    def start(self, name: str, args: list[str], env: dict[str, str],
              heartbeat: Watchdog | None = None) -> subprocess.Popen[bytes]:
        """Start one child in the repository root, remembering how, to restart it."""
        with self._lock:
            proc = self._spawn(name, args, env)
            self.children[name] = Child(name, list(args), dict(env), proc, self.clock(), heartbeat=heartbeat)
        return proc

    @staticmethod
    def _spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log.info("starting %s: %s", name, " ".join(args))
        # A session of its own: Ctrl-C reaches only this launcher, which then stops each child once, in order.
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True)

    def supervise(self, poll_interval: float = 0.5) -> str | None:
        """Restart children that exit until stop() is called (None) or one keeps failing (its name)."""
        while not self._stopping.is_set():
            with self._lock:
                failing = self.check_children()
            if failing is not None:
                return failing
            # Short interruptible waits (Ctrl-C stops at once), and a dead child is reaped within one interval.
            self._stopping.wait(poll_interval)
        return None

    def check_children(self) -> str | None:
        """One pass: reap and schedule the dead, restart those whose back-off is over; a child to give up on."""
        now = self.clock()
        for child in self.children.values():
            if self._stopping.is_set():
                return None
            if child.restart_at is None:
                self._kill_if_stalled(child, now)
                code = child.proc.poll()  # reaps it: no zombie waits out the back-off
                if code is not None:
                    kill_leftovers(child.proc)
                    reason = f"(pid {child.proc.pid}) {describe_exit(code)}"
                    if not self._schedule_restart(child, reason, now, clean=code == 0):
                        return child.name
            elif now >= child.restart_at and not self._restart(child, now):
                return child.name
        return None

    @staticmethod
    def _kill_if_stalled(child: Child, now: float) -> None:
        """SIGKILL a live child whose heartbeat went stale (hung, or stopped): the restart below brings it back."""
        if child.heartbeat is None or child.proc.poll() is not None:
            return
        silent = child.heartbeat.stalled_for(now - child.started_at)
        if silent is not None:
            log.error("%s (pid %d) made no progress for %.0f s (heartbeat %s, limit %.0f s): killing it", child.name,
                      child.proc.pid, silent, child.heartbeat.path, child.heartbeat.stall_seconds)
            kill_leftovers(child.proc)

    def _schedule_restart(self, child: Child, reason: str, now: float, clean: bool = False) -> bool:
        """Log why the child died and when it comes back; False when it keeps failing."""
        lived = now - child.started_at
        delay = self.policy.record_exit(child.restarts, child.started_at, now)
        if delay is None:
            log.error("%s %s after %.1f s: %d exits in a row, each within %.0f s of its start", child.name,
                      reason, lived, child.restarts.quick_exits, self.policy.healthy_after)
            return False
        log.log(logging.WARNING if clean else logging.ERROR, "%s %s after %.1f s; restarting it in %g s",
                child.name, reason, lived, delay)
        child.restart_at = now + delay
        return True

    def _restart(self, child: Child, now: float) -> bool:
        """Start the child again with its arguments and environment; False when it keeps failing."""
        child.restart_at = None
        try:
            proc = self._spawn(child.name, child.args, child.env)
        except OSError as exc:  # e.g. the program vanished: a failed start counts as an exit
            child.started_at = now
            return self._schedule_restart(child, f"could not be started ({exc})", now)
        child.proc, child.started_at = proc, now
        return True

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM everything (workers finish their current task), then SIGKILL what is left or on a 2nd Ctrl-C."""
        self._stopping.set()
        with self._lock:
            self._stop_all(grace)

    def _stop_all(self, grace: float) -> None:
        procs = self.procs
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        try:
            for name, proc in procs.items():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", name)
                    proc.kill()
        except KeyboardInterrupt:
            log.warning("interrupted again: killing everything now")
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
