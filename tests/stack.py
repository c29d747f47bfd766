"""Real processes for end-to-end and fault tests: gunicorn serving the web app, Celery workers, a private Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from scripts import processes
from shared.config import REPO_ROOT, Settings, child_environment


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LiveStack:
    """gunicorn and Celery workers as separate processes on the given services, with a queue of their own."""

    def __init__(self, database_url: str, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(redis_url=redis_url, database_url=database_url, queue_name=f"live-{self.port}")
        self.env = child_environment(REDIS_URL=redis_url, DATABASE_URL=database_url,
                                     QUEUE_NAME=self.settings.queue_name, LOG_LEVEL="INFO",
                                     SWEEP_INTERVAL_SECONDS="1", SWEEP_AFTER_SECONDS="2",
                                     RATE_LIMIT="",  # the load comes from one address: no limit
                                     WORKER_METRICS_PORT="0", **env)
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def start_web(self) -> None:
        """Start gunicorn and wait until /healthz answers."""
        # A process group of its own, so a restart can kill the master and its workers at once.
        self.web = subprocess.Popen(processes.web(f"127.0.0.1:{self.port}", 1, sys.executable), cwd=REPO_ROOT,
                                    env=self.env, start_new_session=True)
        self.wait_for("/healthz")

    def restart_web(self) -> None:
        """Kill the web processes at once (as a crashed container would) and start new ones on the same port."""
        assert self.web is not None
        os.killpg(self.web.pid, signal.SIGKILL)
        self.web.wait()
        self.start_web()

    def start_worker(self, **env: str) -> subprocess.Popen:
        """Start one more Celery worker process."""
        worker = subprocess.Popen(
            processes.worker(sys.executable, hostname=f"w{len(self.workers)}-{self.port}@%h",
                             extra=["--without-gossip", "--without-mingle"]), cwd=REPO_ROOT, env=self.env | env)
        self.workers.append(worker)
        return worker

    def wait_for(self, path: str, timeout: float = 60) -> None:
        """Poll a path until it answers 200 (a bounded wait for a starting server)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in [self.web, *self.workers]:
                assert proc is None or proc.poll() is None, f"{proc.args[:5]} exited with {proc.returncode}"
            try:
                if requests.get(f"{self.base_url}{path}", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} not answering after {timeout} s")

    def wait_for_workers(self, count: int = 1, timeout: float = 90) -> None:
        """Poll GET /system until this many worker processes have announced themselves (model loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.workers:
                assert proc.poll() is None, f"worker exited with {proc.returncode}"
            if requests.get(f"{self.base_url}/system", timeout=5).json()["workers"] >= count:
                return
            time.sleep(0.2)
        raise AssertionError(f"{count} worker(s) not ready after {timeout} s")

    def stop(self) -> None:
        """Stop every process (workers get a warm shutdown)."""
        for proc in [*self.workers, self.web]:
            if proc is not None:
                _stop(proc)


@contextmanager
def running_stack(database_url: str, redis_url: str, **worker_env: str) -> Iterator[LiveStack]:
    """A web process and one worker, ready (both services answer), stopped afterwards."""
    stack = LiveStack(database_url, redis_url)
    try:
        stack.start_web()
        stack.start_worker(**worker_env)
        stack.wait_for("/readyz")
        yield stack
    finally:
        stack.stop()


@contextmanager
def web_only_stack(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    """A web process and no worker (a test may start one), stopped afterwards."""
    stack = LiveStack(database_url, redis_url)
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop()


class PrivateRedis:
    """A redis-server of the test's own (nothing on disk), so a test may restart it or lose its data."""

    def __init__(self, workdir: Path, address: str = "127.0.0.1", run_in: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.address = address  # another host's (tests/fault/netns.py), run there by the `run_in` prefix
        self.url = f"redis://{address}:{self.port}/0"
        self.workdir = workdir
        self._run_in = list(run_in)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
        self.proc = subprocess.Popen([*self._run_in, binary, "--port", str(self.port), "--bind", self.address,
                                      "--protected-mode", "no", "--save", "", "--appendonly", "no",
                                      "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is persisted)."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class PrivateMariaDB:
    """A mariadbd of the test's own in a temporary data directory, so a test may stop and start it."""

    def __init__(self, workdir: Path, address: str = "127.0.0.1", run_in: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.address = address  # another host's (tests/fault/netns.py), run there by the `run_in` prefix
        self.datadir = workdir / "mariadb"
        # Its own temporary files: installs running at once in the default /tmp collide on their temporary tables
        # ("Unknown table 'mysql.tmp_user_sys'", about one install in eight when five run together here).
        self.tmpdir = workdir / "mariadb-tmp"
        self.url = f"mysql+pymysql://root@{address}:{self.port}/digits"
        self._run_in = list(run_in)
        self.proc: subprocess.Popen | None = None
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []

    def install(self) -> None:
        """Create the data directory (system tables, a root without password on 127.0.0.1)."""
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}",
                        *self._as_root, "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections (bounded)."""
        # Debian keeps the server in /usr/sbin, which a non-root PATH may lack.
        binary = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin") or "mariadbd"
        self.proc = subprocess.Popen(
            [*self._run_in, binary, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             f"--bind-address={self.address}", f"--socket={self.datadir}/mysqld.sock", f"--tmpdir={self.tmpdir}",
             "--innodb-buffer-pool-size=64M",
             "--skip-name-resolve", *self._as_root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mariadbd exited with {self.proc.returncode}"
            with socket.socket() as s:
                if s.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("private mariadbd did not start")

    def allow_root_from_anywhere(self) -> None:
        """Let root in without a password from other hosts too (through the local socket: no network needed)."""
        subprocess.run(["mariadb", f"--socket={self.datadir}/mysqld.sock", "-uroot", "-e",
                        "CREATE USER IF NOT EXISTS root@'%'; GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION; "
                        "CREATE DATABASE IF NOT EXISTS digits"], check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        """Shut the server down cleanly."""
        if self.proc is not None:
            _stop(self.proc, timeout=60)
            self.proc = None


class MakeRun:
    """`make run` itself (python -m scripts.run_local) on the given services: web, a worker and Flower, supervised."""

    def __init__(self, database_url: str, redis_url: str, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.queue_name = f"make-run-{self.port}"
        self.env = child_environment(REDIS_URL=redis_url, DATABASE_URL=database_url, PORT=str(self.port),
                                     FLOWER_PORT=str(free_port()), FLOWER_BASIC_AUTH="admin:make-run-test",
                                     DATA_DIR=str(data_dir), QUEUE_NAME=self.queue_name, RATE_LIMIT="",
                                     WORKER_METRICS_PORT="0", WEB_WORKERS="1",
                                     # The seed model (make test trains it), even where a strong one was trained.
                                     **{"MODEL_PATH": str(REPO_ROOT / "models" / "mnist_model.h5"), **env})
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the launcher and wait (bounded) until the page answers and a worker has announced itself."""
        self.proc = subprocess.Popen([sys.executable, "-m", "scripts.run_local"], cwd=REPO_ROOT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"make run exited with {self.proc.returncode}"
            try:
                if requests.get(f"{self.base_url}/system", timeout=2).json()["workers"] >= 1:
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"make run not serving with a worker after {timeout} s")

    def stop(self) -> None:
        """Ctrl-C, as a user stops it: the launcher stops its children."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGINT, timeout=40)
