"""The command-line client against a real gunicorn on the real services (no worker): an upload whose answer is lost
on the way back is sent again with the same Idempotency-Key and predicted once; cancel and delete; webhooks."""

from __future__ import annotations

import io
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout, suppress

import pytest
import requests
from sqlalchemy import select

from scripts import cli
from shared.schema import Prediction
from tests.helpers import png_bytes, stored_owner
from tests.stack import LiveStack, web_only_stack


@pytest.fixture(scope="module")
def live(database_url: str, redis_url: str) -> Iterator[LiveStack]:
    with web_only_stack(database_url, redis_url) as stack:
        yield stack


def _close(*sockets: socket.socket) -> None:
    """Shut down and close: shutdown also wakes a thread blocked reading the socket (close alone does not)."""
    for s in sockets:
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until either side closes."""
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    _close(source, sink)


@contextmanager
def answer_lost_once(port: int) -> Iterator[str]:
    """A TCP proxy to the port that delivers the first request but drops its answer (closes the client instead)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        first = True
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            if first:  # the first bytes of the answer mean the request was handled: lose them
                first = False
                upstream.recv(1)
                _close(client, upstream)
                continue
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        _close(listener)


def _token() -> str:
    return f"cli-test-{uuid.uuid4().hex}"


def _owned(db_sessions, token: str) -> list[Prediction]:
    with db_sessions() as s:
        return list(s.scalars(select(Prediction).where(Prediction.owner == stored_owner(token))))


def test_an_upload_whose_answer_is_lost_is_sent_again_and_recorded_once(live, db_engine, db_sessions, mnist):
    token = _token()
    with answer_lost_once(live.port) as url, requests.Session() as http:
        http.headers["X-Owner-Token"] = token
        response = cli._submit(http, f"{url}/predict", [("file", ("d.png", png_bytes(mnist.x_test[0])))], {},
                               wait=0)

    assert response.status_code == 202 and response.headers["Idempotent-Replayed"] == "true"
    assert [r.task_id for r in _owned(db_sessions, token)] == [response.json()["task_id"]]


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def _upload(live: LiveStack, token: str, image: bytes) -> str:
    resp = requests.post(f"{live.base_url}/predict", files={"file": ("d.png", image)},
                         headers={"X-Owner-Token": token}, timeout=30)
    assert resp.status_code == 202
    return str(resp.json()["task_id"])


def test_cancel_then_delete_from_the_command_line(live, db_engine, db_sessions, mnist):
    token = _token()
    task_id = _upload(live, token, png_bytes(mnist.x_test[0]))

    assert _run("cancel", task_id, "--url", live.base_url, "--owner-token", token) == (0, f"{task_id}: CANCELED\n")
    code, line = _run("cancel", task_id, "--url", live.base_url, "--owner-token", token)
    assert code == 1 and line.startswith(f"{task_id}: error: ") and "CANCELED" in line
    assert _run("delete", task_id, "--url", live.base_url, "--owner-token", token) == (0, f"{task_id}: deleted\n")
    assert _owned(db_sessions, token) == []
    assert _run("delete", task_id, "--url", live.base_url, "--owner-token", token)[0] == 1
    assert _run("delete", task_id, "--url", live.base_url) == (2, "")  # whose? no token, nothing to do


def test_a_webhook_the_service_refuses_is_reported_per_file(live, db_engine, tmp_path, mnist):
    path = tmp_path / "seven.png"
    path.write_bytes(png_bytes(mnist.x_test[0]))

    code, out = _run("predict", str(path), "--url", live.base_url, "--webhook", "http://127.0.0.1:9/hook")

    assert code == 1
    assert out.startswith(f"{path}: error: This service sends no webhooks")  # the live web has no WEBHOOK_SECRET
