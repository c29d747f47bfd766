"""Flower starts only behind real credentials, needs no database, and never shows its password in `ps`."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from shared.config import REPO_ROOT, child_environment
from shared.credentials import CredentialsRefused, check_basic_auth
from worker.flower import check_options

START_TIMEOUT = 60.0


def flower_environment(redis_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a `python -m worker.flower` child: the broker and Flower's settings, no database."""
    env = {key: value for key, value in child_environment().items()
           if key != "DATABASE_URL" and not key.startswith("FLOWER_")}  # nothing inherited for Flower
    return env | {"REDIS_URL": redis_url, **overrides}


@pytest.mark.parametrize("value", [None, "", "admin", "admin:", ":secretsecret123"])
def test_missing_or_malformed_credentials_are_refused_even_locally(value):
    with pytest.raises(CredentialsRefused):
        check_basic_auth(value, local_mode=True)


@pytest.mark.parametrize("password", ["CHANGE_ME", "CHANGE_ME_flower_password", "admin", "short"])
def test_the_example_or_a_weak_password_is_refused_outside_local_mode(password):
    with pytest.raises(CredentialsRefused, match="example or too weak"):
        check_basic_auth(f"admin:{password}", local_mode=False)
    assert check_basic_auth(f"admin:{password}", local_mode=True) == f"admin:{password}"


def test_a_strong_password_is_accepted():
    assert check_basic_auth("ops:4f0c9e2b7a1d55e3", local_mode=False) == "ops:4f0c9e2b7a1d55e3"


@pytest.mark.parametrize("option", ["--basic-auth=ops:4f0c9e2b7a1d55e3", "--basic_auth=ops:4f0c9e2b7a1d55e3"])
def test_credentials_on_the_command_line_are_refused(option):
    with pytest.raises(CredentialsRefused, match="not on the command line"):
        check_options(["--port=5555", option])
    check_options(["--port=5555", "--purge_offline_workers=600"])


def test_the_command_exits_with_a_message_instead_of_starting_flower(services):
    env = flower_environment(services.redis_url, FLOWER_BASIC_AUTH="admin:CHANGE_ME", FLOWER_LOCAL_MODE="0")
    out = subprocess.run([sys.executable, "-m", "worker.flower", "--port=1"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Flower not started" in out.stderr and "example or too weak" in out.stderr


def test_the_command_refuses_credentials_in_its_arguments(services):
    env = flower_environment(services.redis_url, FLOWER_BASIC_AUTH="admin:4f0c9e2b7a1d55e3", FLOWER_LOCAL_MODE="0")
    out = subprocess.run([sys.executable, "-m", "worker.flower", "--port=1", "--basic-auth=admin:4f0c9e2b7a1d55e3"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Flower not started" in out.stderr and "not on the command line" in out.stderr


# --- a real Flower process ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_answers(proc: subprocess.Popen, url: str, auth: tuple[str, str]) -> tuple[int, int]:
    """(status without credentials, status with them) once Flower answers; fails if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"Flower exited with {proc.returncode}"
        try:
            anonymous = requests.get(url, timeout=5).status_code
            return anonymous, requests.get(url, auth=auth, timeout=5).status_code
        except requests.ConnectionError:
            time.sleep(0.2)
    pytest.fail(f"Flower did not answer on {url} within {START_TIMEOUT:.0f} s")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line as `ps` shows it) of every process whose /proc entry can be read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        table[int(entry.name)] = (ppid, " ".join(arg.decode(errors="replace") for arg in argv))
    return table


def descendants(table: dict[int, tuple[int, str]], pid: int) -> list[int]:
    """A process and all its descendants in a process table."""
    found = [pid]
    for current in found:
        found += [child for child, (ppid, _) in table.items() if ppid == current]
    return found


def enable_events_seen(messages: Iterator[dict | None]) -> bool:
    """Whether a Celery control broadcast `enable_events` goes by on the pidbox channel within 15 s."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        message = next(messages)
        if message and message["type"] == "pmessage":
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if body.get("method") == "enable_events":
                return True
    return False


@pytest.fixture
def pidbox(services) -> Iterator[Iterator[dict | None]]:
    """Messages broadcast to the Celery workers (control commands) on the test Redis."""
    client = redis.Redis.from_url(services.redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*celery.pidbox*")
    yield iter(lambda: pubsub.get_message(timeout=1.0), object())
    pubsub.close()
    client.close()


def test_flower_runs_without_a_database_and_keeps_its_password_out_of_ps(services, pidbox, tmp_path: Path):
    password = secrets.token_hex(8)  # 16 characters
    port = free_port()
    env = flower_environment(services.redis_url, FLOWER_BASIC_AUTH=f"admin:{password}", FLOWER_LOCAL_MODE="0")
    log_path = tmp_path / "flower.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "worker.flower", f"--port={port}", "--address=127.0.0.1"],
                                cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        codes = wait_for_answers(proc, f"http://127.0.0.1:{port}/workers", ("admin", password))
        assert codes == (401, 200), log_path.read_text()
        table = process_table()
        flower = {pid: table[pid][1] for pid in descendants(table, proc.pid)}
        assert flower[proc.pid] == f"{sys.executable} -m worker.flower --port={port} --address=127.0.0.1", flower
        assert not [line for line in flower.values() if password in line], flower
        assert not [line for _, line in table.values() if password in line], "the password is in `ps`"
        # Flower still turns the workers' task events on (they are off until a monitor asks).
        assert enable_events_seen(pidbox), log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, "SIGTERM stops Flower cleanly"
    log = log_path.read_text()
    assert "--max_tasks=10000" in log and password not in log
