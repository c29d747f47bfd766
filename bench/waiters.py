"""How many waiting clients one web process holds: `python -m bench.waiters [--clients 900]`.

Starts `make run`'s stack with one gunicorn process (WEB_WORKERS=1) against the benchmark services,
records an upload that no worker will ever finish (it belongs to another queue), and opens --clients
long polls on it at once (`GET /tasks/<id>?wait=30`, one connection each). While they are all held, it
sends one-request uploads and reports their latency, and the web process' memory with every poll held.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, insert

from bench.load import Connection, multipart
from bench.samples import load_samples
from bench.stack import RunningStack, stack_processes, start_stack, stop_stack, wait_for_workers
from shared.config import BenchSettings
from shared.logs import configure_logging
from shared.schema import Prediction, State, utcnow

log = logging.getLogger("bench.waiters")


def _pending_elsewhere(database_url: str) -> str:
    """A PENDING upload of a queue nobody serves: a long poll on it waits its whole `wait`."""
    task_id = str(uuid.uuid4())
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(Prediction).values(
            task_id=task_id, state=State.PENDING.value, image=b"x", image_sha256=hashlib.sha256(b"x").hexdigest(),
            size_bytes=1, queue="nobody-serves-this", created_at=utcnow(), deliveries=0))
    engine.dispose()
    return task_id


def _web_process(stack: RunningStack) -> psutil.Process:
    """The one gunicorn worker process (not its master)."""
    for role, proc in stack_processes(stack.launcher.pid):
        if role == "web worker":
            return proc
    raise RuntimeError("no gunicorn worker process")


async def _hold(port: int, task_id: str, clients: int, upload: bytes, uploads: int,
                web: psutil.Process) -> dict[str, Any]:
    """Open the polls, measure uploads while they are held, then collect the polls' answers."""
    rss_before = web.memory_info().rss
    conns = [Connection("127.0.0.1", port) for _ in range(clients)]
    polls = [asyncio.create_task(c.request("GET", f"/tasks/{task_id}?wait=30")) for c in conns]
    await asyncio.sleep(5)  # let every poll reach the server and start waiting
    rss_held = web.memory_info().rss
    body, ctype = multipart([("d.png", upload)])
    latencies, answers = [], []
    uploader = Connection("127.0.0.1", port)
    for _ in range(uploads):
        started = time.perf_counter()
        status, raw = await uploader.request("POST", "/predict?wait=10", body, ctype)
        latencies.append(time.perf_counter() - started)
        answers.append(status == 200 and json.loads(raw)["state"] == "SUCCESS")
    held = sum(not p.done() for p in polls)  # still waiting after the uploads: none was answered early
    statuses = [status for status, _ in await asyncio.gather(*polls)]
    for conn in [*conns, uploader]:
        await conn.close()
    return {"clients": clients, "still_held_after_uploads": held,
            "polls_answered_200": statuses.count(200), "uploads_answered_in_one_request": sum(answers),
            "uploads": uploads, "upload_p50_ms": 1000 * sorted(latencies)[len(latencies) // 2],
            "upload_max_ms": 1000 * max(latencies),
            "web_rss_mb_before": rss_before / 2**20, "web_rss_mb_held": rss_held / 2**20,
            "kb_per_waiting_client": (rss_held - rss_before) / 1024 / clients}


def main(argv: list[str] | None = None) -> int:
    """Start the stack, hold the polls, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=900, help="long polls held at once (MAX_LONG_POLLS: 900)")
    parser.add_argument("--uploads", type=int, default=20, help="one-request uploads sent while they are held")
    args = parser.parse_args(argv)
    configure_logging()
    bench = BenchSettings()
    upload = load_samples(bench.mnist_dir, 1)[0].png
    stack = start_stack(bench, 1, Path(tempfile.mkdtemp(prefix="waiters-")))
    try:
        wait_for_workers(stack, 180)
        task_id = _pending_elsewhere(bench.database_url)
        result = asyncio.run(_hold(stack.port, task_id, args.clients, upload, args.uploads, _web_process(stack)))
    finally:
        stop_stack(stack)
    print(json.dumps(result, indent=2))  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
