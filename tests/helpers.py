"""Helpers the tests share (fixtures stay in conftest.py): where the test services are, test images."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from PIL import Image
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.config import REPO_ROOT
from shared.owners import owner_key


class TestServices(BaseSettings):
    """Where the test services are: TEST_MYSQL_URL (a server URL with rights to create databases), TEST_REDIS_URL,
    TEST_CHROMIUM, TEST_SCREENSHOT_DIR."""

    __test__ = False  # not a test class, despite the name
    model_config = SettingsConfigDict(env_prefix="TEST_")

    mysql_url: str = "mysql+pymysql://root@127.0.0.1:3306/"
    redis_url: str = "redis://127.0.0.1:6379/15"
    # The browser tests drive this Chromium (Debian's package) and keep their screenshots here.
    chromium: Path = Path("/usr/bin/chromium")
    screenshot_dir: Path = REPO_ROOT / "var" / "screenshots"


# The web processes a test session starts (and every Settings it builds) key owner tokens with this secret:
# tests/conftest.py puts it in the session's environment before anything is collected.
OWNER_TOKEN_SECRET = "test-owner-token-secret-" + "0123456789abcdef" * 2


def worker_redis_url(url: str, worker_id: str) -> str:
    """The Redis database of one pytest-xdist worker: "gwN" takes N databases below the configured one, so workers
    flushing their own database never empty another's ("master", no xdist, keeps the configured one)."""
    if not worker_id.startswith("gw"):
        return url
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0) - int(worker_id[2:])
    if number < 0:
        raise ValueError(f"{url}: too few Redis databases below it for xdist worker {worker_id}")
    return urlunsplit(parts._replace(path=f"/{number}"))


def stored_owner(token: str) -> str:
    """The owner key the test session's web stores for this token."""
    return owner_key(token, OWNER_TOKEN_SECRET)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 greyscale array as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()



def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether the condition came true within the timeout (polled: it waits on another thread's progress)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def published(pubsub: Any, task_id: str, timeout: float = 5) -> dict[str, Any] | None:
    """The next document published for this task on a subscribed pubsub, or None: the channel is server-wide in
    Redis (not per database), so other test sessions' documents pass by and are skipped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is not None and (doc := json.loads(message["data"])).get("task_id") == task_id:
            return doc
    return None


def slanted_stroke(slant: float) -> np.ndarray:
    """A 28x28 2-px stroke from row 4 to row 23, moving `slant` px right per row upwards, around column 13."""
    image = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        left = round(13 + slant * (13.5 - row))
        image[row, left:left + 2] = 1.0
    return image


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[..., list[tuple]]:
    """A getaddrinfo stand-in that answers from a table (and raises like getaddrinfo for other names)."""

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]]

    return resolve
