"""End to end: real gunicorn web + real Celery worker process + Redis + MariaDB."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from sqlalchemy import select

from evaluation.userstyle import user_style_set
from shared.config import REPO_ROOT, Settings
from shared.schema import Prediction, utcnow
from shared.statuses import status_key
from tests.helpers import png_bytes
from tests.stack import free_port, running_stack

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    base_url: str
    settings: Settings
    worker_pid: int
    metrics_port: int


def _start(database_url: str, redis_url: str, **worker_env: str) -> Iterator[Stack]:
    metrics_port = free_port()
    with running_stack(database_url, redis_url, WORKER_METRICS_PORT=str(metrics_port), **worker_env) as live:
        yield Stack(live.base_url, live.settings, live.workers[0].pid, metrics_port)


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str) -> Iterator[Stack]:
    """The stack as configured by default: a micro-batching worker on the threads pool."""
    yield from _start(database_url, redis_url)


@pytest.fixture(scope="module")
def prefork_stack(database_url: str, redis_url: str) -> Iterator[Stack]:
    """The same with a prefork worker (one child) on TensorFlow, the pool where loading TensorFlow early would hang."""
    # Through the settings: Celery's CLI cannot override a configured pool with `--pool prefork`.
    yield from _start(database_url, redis_url, WORKER_POOL="prefork", WORKER_CONCURRENCY="1",
                      WORKER_INFERENCE="tensorflow")


def _wait_final(stack: Stack, status_url: str, timeout: float = 90) -> dict:
    """Long-poll the status URL until the task is final (the server holds each request up to 10 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = requests.get(f"{stack.base_url}{status_url}", params={"wait": 10}, timeout=30)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        if doc["state"] in ("SUCCESS", "FAILURE"):
            return doc
    raise AssertionError(f"{status_url} not final after {timeout} s")


def test_photo_upload_is_predicted_and_stored_once(stack, mnist, db_sessions):
    cases = user_style_set(mnist.x_test, mnist.y_test, n=6, seed=7)
    accepted = []
    for data, label, kind in cases:
        resp = requests.post(f"{stack.base_url}/predict", files={"file": (f"{kind}.img", data)}, timeout=10)
        assert resp.status_code == 202, resp.text
        accepted.append((resp.json(), label))

    docs = [(_wait_final(stack, body["status_url"]), label) for body, label in accepted]

    assert all(doc["state"] == "SUCCESS" for doc, _ in docs), docs
    correct = sum(doc["digit"] == label for doc, label in docs)
    assert correct >= len(docs) - 1, docs  # the model is ~98% accurate: allow one miss, not more
    with db_sessions() as s:
        for doc, _ in docs:
            rows = s.scalars(select(Prediction).where(Prediction.task_id == doc["task_id"])).all()
            assert len(rows) == 1
            assert rows[0].state == "SUCCESS" and rows[0].digit == doc["digit"]
            assert rows[0].status_document() == doc


def test_status_survives_the_redis_result_expiring(stack, mnist):
    body = requests.post(f"{stack.base_url}/predict", files={"file": ("d.png", png_bytes(mnist.x_test[3]))},
                         timeout=10).json()
    doc = _wait_final(stack, body["status_url"])
    redis.Redis.from_url(stack.settings.redis_url).delete(status_key(body["task_id"]))

    again = requests.get(f"{stack.base_url}{body['status_url']}", timeout=10)

    assert again.status_code == 200
    assert again.json() == doc


def test_blank_page_is_refused_with_a_clear_message(stack):
    blank = png_bytes(np.full((120, 90), 250))
    resp = requests.post(f"{stack.base_url}/predict", files={"file": ("blank.png", blank)}, timeout=10)

    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "no_ink"
    assert "blank.png" in err["message"]


def test_a_burst_of_uploads_is_predicted_in_shared_batches(stack, mnist, db_sessions):
    accepted = []
    for start in range(0, 48, 16):  # three requests of 16 files: the tasks reach the queue back to back
        files = [("file", (f"{i}.png", png_bytes(mnist.x_test[i]))) for i in range(start, start + 16)]
        resp = requests.post(f"{stack.base_url}/predict", files=files, timeout=10)
        assert resp.status_code == 202
        accepted += [(task, int(mnist.y_test[start + j])) for j, task in enumerate(resp.json()["tasks"])]

    docs = [(_wait_final(stack, task["status_url"]), label) for task, label in accepted]

    assert all(doc["state"] == "SUCCESS" for doc, _ in docs)
    assert sum(doc["digit"] == label for doc, label in docs) >= 46
    with db_sessions() as s:
        rows = s.scalars(select(Prediction).where(Prediction.task_id.in_([d["task_id"] for d, _ in docs]))).all()
    assert len(rows) == 48
    assert len({(r.started_at, r.worker) for r in rows}) < 48  # uploads shared model calls


def test_an_upload_whose_message_was_lost_is_swept_back_onto_the_queue(stack, mnist, db_sessions):
    # What the web records before enqueueing, with the message then lost (Redis flushed, say).
    task_id = str(uuid.uuid4())
    data = png_bytes(mnist.x_test[9])
    long_ago = utcnow() - timedelta(seconds=30)
    with db_sessions() as s, s.begin():
        s.add(Prediction(task_id=task_id, state="PENDING", image=data, image_sha256=hashlib.sha256(data).hexdigest(),
                         size_bytes=len(data), created_at=long_ago, enqueued_at=long_ago,
                         queue=stack.settings.queue_name))

    doc = _wait_final(stack, f"/tasks/{task_id}")

    assert doc["state"] == "SUCCESS" and doc["digit"] == int(mnist.y_test[9])
    with db_sessions() as s:  # re-sent once, started once
        assert s.scalars(select(Prediction.deliveries).where(Prediction.task_id == task_id)).one() == 1


def test_one_request_mode_answers_the_digit_in_one_call(stack, mnist, db_sessions):
    resp = requests.post(f"{stack.base_url}/predict", params={"wait": 20},
                         files={"file": ("d.png", png_bytes(mnist.x_test[0]))}, timeout=30)

    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["state"] == "SUCCESS" and doc["digit"] == int(mnist.y_test[0])
    with db_sessions() as s:  # recorded like any upload, and the answer is what the row holds
        assert s.scalars(select(Prediction).where(Prediction.task_id == doc["task_id"])).one().status_document() == doc


def test_many_waiting_clients_never_crowd_out_uploads(stack, mnist, db_sessions):
    # A task nobody will finish (another queue's), polled by many more clients than a thread pool would hold.
    task_id = str(uuid.uuid4())
    with db_sessions() as s, s.begin():
        s.add(Prediction(task_id=task_id, state="PENDING", image=b"x", image_sha256=hashlib.sha256(b"x").hexdigest(),
                         size_bytes=1, queue="nobody-serves-this"))
    polls: list[int] = []

    def poll() -> None:
        polls.append(requests.get(f"{stack.base_url}/tasks/{task_id}", params={"wait": 25}, timeout=40).status_code)

    pollers = [threading.Thread(target=poll) for _ in range(64)]
    for t in pollers:
        t.start()
    try:
        # The one web process holds 64 long polls; an upload in one-request mode still gets its answer. Crowded
        # out, it would get none (or a 503); the wait is generous, as the test's other processes load the cores
        # (with 6 s a loaded machine once answered 202, "not final yet", which is no crowding out).
        resp = requests.post(f"{stack.base_url}/predict", params={"wait": 25},
                             files={"file": ("d.png", png_bytes(mnist.x_test[1]))}, timeout=40)
        assert resp.status_code == 200, resp.text
        assert resp.json()["digit"] == int(mnist.y_test[1])
    finally:
        for t in pollers:
            t.join(40)
    assert polls == [200] * 64


def test_page_and_unknown_task(stack):
    assert "Digit reader" in requests.get(stack.base_url, timeout=5).text
    missing = requests.get(f"{stack.base_url}/tasks/00000000-0000-4000-8000-000000000000", timeout=5)
    assert missing.status_code == 404


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue  # the process ended while we looked
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _loaded_tensorflow(pid: int) -> bool:
    return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()


def test_model_lives_in_the_forked_child_never_in_the_celery_parent(prefork_stack, mnist):
    stack = prefork_stack
    body = requests.post(f"{stack.base_url}/predict", files={"file": ("d.png", png_bytes(mnist.x_test[5]))},
                         timeout=10).json()
    assert _wait_final(stack, body["status_url"])["state"] == "SUCCESS"

    children = _children(stack.worker_pid)

    assert children, "the prefork worker has no child processes"
    assert not _loaded_tensorflow(stack.worker_pid)  # TensorFlow in the parent would hang its forked children
    assert all(_loaded_tensorflow(child) for child in children)


def test_a_cpu_worker_serves_the_seed_model_without_loading_tensorflow(stack, mnist):
    body = requests.post(f"{stack.base_url}/predict", params={"wait": 20},
                         files={"file": ("d.png", png_bytes(mnist.x_test[6]))}, timeout=30).json()

    assert body["state"] == "SUCCESS" and body["digit"] == int(mnist.y_test[6])
    assert not _loaded_tensorflow(stack.worker_pid)  # ONNX Runtime: most of a worker's memory saved


def test_a_body_over_the_limit_is_refused_from_its_declared_length_before_it_is_sent(stack):
    host, port = stack.base_url.removeprefix("http://").split(":")
    declared = stack.settings.max_request_bytes + 1
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode())  # ...and not one byte of the body
        chunks = []
        while chunk := conn.recv(65536):  # the server answers, then closes: it will not read that body
            chunks.append(chunk)
        answer = b"".join(chunks).decode("latin-1")

    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert '"code":"too_large"' in body.replace(" ", "")


def test_web_and_worker_expose_prometheus_metrics(stack, mnist):
    body = requests.post(f"{stack.base_url}/predict", files={"file": ("d.png", png_bytes(mnist.x_test[2]))},
                         timeout=10).json()
    doc = _wait_final(stack, body["status_url"])
    requests.post(f"{stack.base_url}/predict", files={"file": ("x.png", b"not an image")}, timeout=10)

    web = requests.get(f"{stack.base_url}/metrics", timeout=10).text
    worker = requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10).text

    assert 'digits_uploads_total{outcome="accepted"}' in web
    assert 'digits_uploads_total{outcome="not_an_image"}' in web
    assert 'digits_http_request_seconds_bucket{endpoint="/tasks/<task_id>"' in web
    assert f'digits_predictions_total{{digit="{doc["digit"]}"}}' in worker
    assert "digits_inference_seconds_count" in worker and "digits_batch_size_bucket" in worker
    assert "digits_queue_wait_seconds_count" in worker
    assert 'digits_model_info{device="/CPU:0",version="' in worker


def test_command_line_client_prints_each_files_digit(stack, mnist, tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(png_bytes(mnist.x_test[i]))
        files.append(str(path))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "scripts.cli", "predict", *files, "--url", stack.base_url],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == [str(int(y)) for y in mnist.y_test[:3]]

    refused = subprocess.run([sys.executable, "-m", "scripts.cli", "predict", str(notes), "--url", stack.base_url],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "notes.png: error: 'notes.png': this is a text file, not an image" in refused.stdout
