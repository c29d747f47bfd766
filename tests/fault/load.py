"""Closed-loop upload load for the fault tests, and the books they close with: accepted, completed, lost, duplicates."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from sqlalchemy import func, select

from shared.schema import FINAL_STATES, Prediction

log = logging.getLogger(__name__)


@dataclass
class Load:
    """Uploads sent by a few client threads until stopped, and what the server answered."""

    base_url: str
    images: list[bytes]
    accepted: list[str] = field(default_factory=list)
    refused: dict[int, int] = field(default_factory=dict)
    bodies_not_json: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds to each answer (any status)
    timeout: float = 15.0  # a request unanswered this long counts as refused with no answer (status 0)
    no_answer: dict[str, int] = field(default_factory=dict)  # why requests got no answer, by exception
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, n: int) -> None:
        session = requests.Session()
        i = n
        while not self.stop.is_set():
            data = self.images[i % len(self.images)]
            i += 3
            sent = time.monotonic()
            try:
                resp = session.post(f"{self.base_url}/predict", files={"file": (f"{i}.png", data)},
                                    timeout=self.timeout)
            except requests.RequestException as exc:
                self.refused[0] = self.refused.get(0, 0) + 1  # no answer at all: not accepted either
                self.no_answer[type(exc).__name__] = self.no_answer.get(type(exc).__name__, 0) + 1
                continue
            self.latencies.append(time.monotonic() - sent)
            if resp.status_code == 202:
                self.accepted.append(resp.json()["task_id"])
                continue
            self.refused[resp.status_code] = self.refused.get(resp.status_code, 0) + 1
            try:
                resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                self.bodies_not_json += 1
            self.stop.wait(0.05)  # a refused client backs off a little, as a real one would

    def run(self, clients: int = 3) -> list[threading.Thread]:
        """Start the client threads."""
        threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        return threads

    def wait_until_accepted(self, count: int, timeout: float = 30) -> None:
        """Block until at least `count` uploads were accepted (the load is really flowing)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} uploads accepted"
            self.stop.wait(0.05)


def books(db_sessions, accepted: list[str], timeout: float = 50) -> dict[str, int]:
    """Wait (bounded) until every accepted upload is final; then count completed, lost and duplicate rows."""
    deadline = time.monotonic() + timeout
    while True:
        with db_sessions() as s:
            rows = s.execute(select(Prediction.task_id, Prediction.state)
                             .where(Prediction.task_id.in_(accepted))).all()
            total = s.scalar(select(func.count()).select_from(Prediction))
        final = [r for r in rows if r.state in FINAL_STATES]
        if len(final) == len(set(accepted)) or time.monotonic() > deadline:
            break
        time.sleep(0.25)  # bounded wait for the workers and the sweeper to finish the backlog
    books = {
        "accepted": len(set(accepted)),
        "completed": sum(r.state == "SUCCESS" for r in rows),
        "failed": sum(r.state == "FAILURE" for r in rows),
        "lost": len(set(accepted)) - len(final),
        "duplicates": len(rows) - len({r.task_id for r in rows}),
        # Rows of uploads the client was NOT told were accepted: the commit reached the database but its
        # answer did not reach the web (the connection broke), so the client saw a 503 and may send it again.
        "unacknowledged": total - len(rows),
    }
    log.warning("books: %s", books)
    print(f"\n    books: {books}")  # noqa: T201 - the figures the issue asks to report
    return books


def under_load(base_url: str, images: list[bytes], fault: Callable[[], None], sessions,
               recovery_timeout: float = 30) -> tuple[dict[str, int], Load]:
    """Run the load, inject the fault once it flows, keep loading until the service accepts again; the books."""
    load = Load(base_url, images)
    threads = load.run()
    load.wait_until_accepted(40)
    fault()
    load.wait_until_accepted(len(load.accepted) + 40, timeout=recovery_timeout)
    load.stop.set()
    for t in threads:
        t.join(20)
    return books(sessions, load.accepted), load
