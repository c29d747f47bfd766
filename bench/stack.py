"""`make run`'s stack as the benchmarks start it: the real launcher, on free ports, against the benchmark's
Redis and database (flushed and re-created); and what each of its processes costs in CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from scripts.supervisor import free_port
from shared.config import REPO_ROOT, BenchSettings, child_environment
from shared.migrate import upgrade

log = logging.getLogger("bench.stack")


def reset_services(bench: BenchSettings) -> None:
    """A fresh benchmark database at the schema's head and an empty Redis database."""
    url = make_url(bench.database_url)
    if url.get_backend_name() == "mysql":
        server = create_engine(url.set(database=""))
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database}`"))
            conn.execute(text(f"CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4"))
        server.dispose()
    upgrade(bench.database_url)
    redis.Redis.from_url(bench.redis_url).flushdb()


@dataclass(frozen=True)
class RunningStack:
    """The launcher we started, where its web listens, and where its output goes."""

    launcher: subprocess.Popen[bytes]
    port: int
    log_path: Path
    webhook_url: str | None = None  # bench/receiver.py, when the scenarios send webhooks


def start_stack(bench: BenchSettings, web_workers: int, data_dir: Path, flower: bool = True,
                webhook_url: str | None = None) -> RunningStack:
    """`python -m scripts.run_local` on free ports against the (reset) benchmark Redis and database."""
    reset_services(bench)
    port = free_port()
    while (flower_port := free_port()) == port:
        pass
    env = child_environment(REDIS_URL=bench.redis_url, DATABASE_URL=bench.database_url, PORT=str(port),
                            FLOWER_PORT=str(flower_port), FLOWER_BASIC_AUTH=f"soak:{secrets.token_urlsafe(12)}",
                            WEB_WORKERS=str(web_workers), RATE_LIMIT="",  # all the load comes from one address
                            DATA_DIR=str(data_dir),  # its own metrics folder, not a running `make run`'s var/
                            WITH_FLOWER="1" if flower else "0",
                            # The receiver listens on loopback, which webhooks may reach only when allowed.
                            WEBHOOK_ALLOWED_HOSTS="127.0.0.1" if webhook_url else "")
    log_path = data_dir / "stack.log"
    log.info("starting the stack (web on port %d); its output goes to %s", port, log_path)
    with log_path.open("ab") as out:
        # A session of its own: Ctrl-C reaches only us, and we stop the launcher once, which stops the rest.
        launcher = subprocess.Popen([sys.executable, "-m", "scripts.run_local"], cwd=REPO_ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return RunningStack(launcher, port, log_path, webhook_url)


def wait_for_workers(stack: RunningStack, timeout: float) -> float:
    """Seconds until GET /system reports at least one worker; fails if the launcher exits or time runs out."""
    start = time.monotonic()
    while (waited := time.monotonic() - start) < timeout:
        if stack.launcher.poll() is not None:
            raise RuntimeError(f"the stack exited with code {stack.launcher.returncode} while starting:\n"
                               + log_tail(stack.log_path))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/system", timeout=2) as resp:
                if json.loads(resp.read()).get("workers", 0) >= 1:
                    return waited
        except (OSError, ValueError):
            pass  # not listening yet, or 503 while Redis is not reachable
        time.sleep(0.5)
    raise RuntimeError(f"no worker on GET /system after {timeout:.0f} s:\n" + log_tail(stack.log_path))


def log_tail(path: Path, lines: int = 30) -> str:
    """The last lines of the stack's output."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def stop_stack(stack: RunningStack, grace: float = 40.0) -> None:
    """SIGINT to the launcher (it stops its children in order); SIGKILL whatever is left after `grace`."""
    launcher = stack.launcher
    try:
        tree = psutil.Process(launcher.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if launcher.poll() is None:
        log.info("stopping the stack")
        launcher.send_signal(signal.SIGINT)
    try:
        code = launcher.wait(timeout=grace)
        log.info("the stack stopped (launcher exit code %s)", code)
    except subprocess.TimeoutExpired:
        log.warning("the launcher did not stop in %.0f s; killing it", grace)
        launcher.kill()
        launcher.wait()
    # Its children run in sessions of their own: make sure none outlived it.
    _gone, alive = psutil.wait_procs(tree, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            log.warning("killing left-over %s (pid %d)", " ".join(proc.cmdline()[:4]), proc.pid)
            proc.kill()


def role_of(cmdline: Sequence[str], parent_cmdline: Sequence[str]) -> str:
    """What a process of the stack is, from its command line and its parent's."""
    joined, parent = " ".join(cmdline), " ".join(parent_cmdline)
    if "scripts.run_local" in joined:
        return "launcher"
    if "gunicorn" in joined:
        return "web worker" if "gunicorn" in parent else "web master"
    if "worker.flower" in joined or "flower" in joined.split():
        return "flower"
    if "celery" in joined:
        return "worker child" if "celery" in parent else "worker"
    if cmdline and "redis-server" in cmdline[0]:
        return "redis-server"
    return Path(cmdline[0]).name if cmdline else "?"




def service_pid(program: str, port: int) -> int | None:
    """The pid of the local server `program` (mariadbd, redis-server) listening on `port`, if this user sees it."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] not in (program, program.replace("mariadbd", "mysqld")):
            continue
        with contextlib.suppress(psutil.Error):
            if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in proc.net_connections()):
                return proc.pid
    return None


def stack_processes(launcher_pid: int) -> list[tuple[str, psutil.Process]]:
    """The launcher and every process below it, each with its role (role_of); ones that just ended are left out."""
    try:
        root = psutil.Process(launcher_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # it ended between listing and reading (a recycled web worker)
            parent = proc.parent()
            found.append((role_of(proc.cmdline(), parent.cmdline() if parent else []), proc))
    return found


def cpu_seconds(stack: RunningStack, services: Mapping[str, int | None]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role of the stack, by the services and by this process."""
    used: dict[str, float] = {}
    for role, proc in stack_processes(stack.launcher.pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            kind = role.split(" ")[0]  # web master and web workers are "web", the worker and its children "worker"
            used[kind] = used.get(kind, 0.0) + times.user + times.system
    for name, pid in services.items():
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                used[name] = times.user + times.system
    own = psutil.Process().cpu_times()
    used["load generator"] = own.user + own.system
    return used
