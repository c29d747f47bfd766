"""The whole system spread over hosts of its own (tests/fault/netns.py): Redis, MariaDB, the web and workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts import processes
from shared.config import REPO_ROOT, child_environment
from shared.migrate import upgrade
from tests.fault.netns import Host, Network
from tests.stack import PrivateMariaDB, PrivateRedis, _stop, free_port

WEB_PORT = 8000


class NetStack:
    """Redis, MariaDB and the web each on a host; workers added one host each; all stopped by `stop`."""

    def __init__(self, net: Network, workdir: Path, link_delay: float = 0.0, **env: str) -> None:
        self.net = net
        self.link_delay = link_delay  # > 0: web and workers reach Redis and MySQL through slow relays
        self.redis_host, self.mysql_host, self.web_host = (net.add_host(r) for r in ("redis", "mysql", "web"))
        self.redis = PrivateRedis(workdir, self.redis_host.address, self.redis_host.command([]))
        self.mysql = PrivateMariaDB(workdir, self.mysql_host.address, self.mysql_host.command([]))
        self.base_url = f"http://{self.web_host.address}:{WEB_PORT}"
        self.queue_name = "net"
        self.env = child_environment(REDIS_URL=self.redis.url, DATABASE_URL=self.mysql.url, QUEUE_NAME="net",
                                     LOG_LEVEL="INFO", RATE_LIMIT="", WORKER_METRICS_PORT="0", **env)
        self.web: subprocess.Popen | None = None
        self.workers: dict[str, tuple[Host, subprocess.Popen]] = {}
        self.relays: list[subprocess.Popen] = []

    def _slow_links(self) -> None:
        """Relays on the test's own address that delay each way by link_delay; the services' clients use them."""
        for name, server in (("REDIS_URL", self.redis), ("DATABASE_URL", self.mysql)):
            port = free_port()
            self.relays.append(subprocess.Popen(
                [sys.executable, "-m", "tests.fault.slowlink", f"{self.net.gateway}:{port}",
                 f"{server.address}:{server.port}", str(self.link_delay)], cwd=REPO_ROOT))
            self.env[name] = server.url.replace(f"{server.address}:{server.port}", f"{self.net.gateway}:{port}")

    def start(self) -> None:
        """Start Redis, MariaDB (migrated) and the web; wait until the web answers."""
        self.redis.start()
        self.mysql.install()
        self.mysql.start()
        self.mysql.allow_root_from_anywhere()
        upgrade(self.mysql.url)
        if self.link_delay:
            self._slow_links()
        self.web = subprocess.Popen(self.web_host.command(
            processes.web(f"{self.web_host.address}:{WEB_PORT}", 1, sys.executable)), cwd=REPO_ROOT, env=self.env)
        self._wait(lambda: requests.get(f"{self.base_url}/healthz", timeout=2).status_code == 200, "the web")

    def start_worker(self, role: str, log_file: Path | None = None, **env: str) -> tuple[Host, subprocess.Popen]:
        """A Celery worker on a host of its own (its output to `log_file` if given); returns once it is announced."""
        host = self.net.add_host(role)
        out = log_file.open("ab") if log_file is not None else None
        proc = subprocess.Popen(host.command(
            processes.worker(sys.executable, hostname=f"{role}@%h", extra=["--without-gossip", "--without-mingle"])),
            cwd=REPO_ROOT, env=self.env | env, stdout=out, stderr=subprocess.STDOUT if out is not None else None)
        self.workers[role] = (host, proc)
        count = len(self.workers)
        self._wait(lambda: requests.get(f"{self.base_url}/system", timeout=5).json()["workers"] >= count, role)
        return host, proc

    def _wait(self, ready: object, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{what} not ready after {timeout} s")

    def stop(self) -> None:
        """Stop workers, web, MariaDB and Redis (what is left is killed by Network.close)."""
        for _host, proc in self.workers.values():
            _stop(proc, timeout=10)
        if self.web is not None:
            _stop(self.web, timeout=10)
        self.mysql.stop()
        self.redis.stop()
        for relay in self.relays:
            _stop(relay, timeout=5)
