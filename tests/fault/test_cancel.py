"""Cancel under the faults that break naive designs, with real processes: a stopped worker, a worker mid-batch.

- cancelled while its worker is stopped (SIGSTOP), then resumed: the model never sees the upload, which stays
  CANCELED;
- cancelled while STARTED: the worker's final write is fenced, and it publishes nothing but what MySQL holds.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import redis
import requests

from shared.statuses import FINISHED_CHANNEL
from tests.fault.test_lifecycle import _traced, fault_env, live, marked_png, rows, trace_file, wait_final
from tests.helpers import eventually, png_bytes

pytestmark = pytest.mark.fault
__all__ = ["live", "trace_file"]  # fixtures shared with the lifecycle's fault tests

OWNER = {"X-Owner-Token": "cancel-test-owner-token-0001"}


def _upload(base_url: str, data: bytes) -> str:
    resp = requests.post(f"{base_url}/predict", files={"file": ("d.png", data)}, headers=OWNER, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def _cancel(base_url: str, task_id: str) -> dict:
    resp = requests.post(f"{base_url}/tasks/{task_id}/cancel", headers=OWNER, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_an_upload_cancelled_while_its_worker_is_stopped_never_reaches_the_model(
        live, db_sessions, mnist, trace_file):
    worker = live.start_worker(**fault_env(trace_file=trace_file))
    live.wait_for_workers(1)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        doomed = _upload(live.base_url, png_bytes(mnist.x_test[0]))
        assert _cancel(live.base_url, doomed)["state"] == "CANCELED"
        after = _upload(live.base_url, png_bytes(mnist.x_test[1]))  # queued behind it
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    found = wait_final(db_sessions, [doomed, after], timeout=60)
    assert found[after].state == "SUCCESS"  # the worker got past the cancelled upload's message
    canceled = found[doomed]
    # Never claimed, so never preprocessed nor predicted: no delivery, no worker, no digit.
    assert (canceled.state, canceled.deliveries, canceled.worker, canceled.digit) == ("CANCELED", 0, None, None)
    traced = trace_file.read_text() if trace_file.exists() else ""
    assert doomed not in traced and after in traced
    assert requests.get(f"{live.base_url}/tasks/{doomed}", timeout=10).json()["state"] == "CANCELED"


def test_a_started_upload_cancelled_mid_batch_is_fenced_and_nothing_contradicts_it(
        live, db_sessions, mnist, trace_file, redis_url):
    heard: list[dict] = []
    stop = threading.Event()
    client = redis.Redis.from_url(live.settings.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(FINISHED_CHANNEL)
    assert pubsub.get_message(timeout=5) is None  # the subscription is confirmed (and ignored) before we go on

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                heard.append(json.loads(message["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    worker = live.start_worker(**fault_env(slow_marker="SLOW", slow_seconds=3, trace_file=trace_file))
    live.wait_for_workers(1)
    slow = _upload(live.base_url, marked_png(mnist.x_test[0], "SLOW"))
    assert eventually(lambda: rows(db_sessions, [slow])[slow].state == "STARTED", timeout=30)

    assert _cancel(live.base_url, slow)["state"] == "CANCELED"

    late = _traced(trace_file, worker.pid, f"finished {slow}", 30)  # its write ran, and found its claim gone
    assert late == [f"{worker.pid} finished {slow}=CANCELED"]
    row = rows(db_sessions, [slow])[slow]
    assert (row.state, row.digit, row.claim_token) == ("CANCELED", None, None)
    assert requests.get(f"{live.base_url}/tasks/{slow}", timeout=10).json()["state"] == "CANCELED"
    assert eventually(lambda: len([d for d in heard if d["task_id"] == slow]) >= 2, timeout=10)
    stop.set()
    listener.join(5)
    pubsub.close()
    client.close()
    assert {d["state"] for d in heard if d["task_id"] == slow} == {"CANCELED"}  # the web's and the worker's
