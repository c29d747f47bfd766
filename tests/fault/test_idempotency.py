"""A retried submit with the same Idempotency-Key makes no second prediction, even if the web died in between.

The web process (gunicorn's worker) is SIGKILLed right after it committed a keyed request's key and rows, before it
queued them or answered (tests/fault/inject/sitecustomize.py, DIGITS_FAULT_KILL_AFTER_RECORD). The client sees its
connection drop and retries with the same key against the restarted web: the answer names the recorded upload, no
second row is made, and recovery queues the upload whose message was never sent, so it is still read.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from shared.config import REPO_ROOT
from shared.schema import Prediction
from tests.helpers import eventually, png_bytes, stored_owner
from tests.stack import LiveStack

pytestmark = pytest.mark.fault

INJECT = Path(__file__).parent / "inject"


def _rows(db_sessions, token: str) -> list[Prediction]:
    with db_sessions() as s:
        return list(s.scalars(select(Prediction).where(Prediction.owner == stored_owner(token))))


def test_a_web_killed_between_recording_and_answering_makes_no_duplicate(database_url, redis_url, db_sessions,
                                                                         mnist, trained_model):
    token, key = f"fault-idem-{uuid.uuid4().hex}", str(uuid.uuid4())
    request = {"files": {"file": ("seven.png", png_bytes(mnist.x_test[0]))},
               "headers": {"X-Owner-Token": token, "Idempotency-Key": key}, "timeout": 30}
    stack = LiveStack(database_url, redis_url, PYTHONPATH=f"{INJECT}{os.pathsep}{REPO_ROOT}",
                      DIGITS_FAULT_KILL_AFTER_RECORD="1")
    try:
        stack.start_web()
        with pytest.raises(requests.ConnectionError):  # the web died before answering
            requests.post(f"{stack.base_url}/predict", **request)
        [recorded] = _rows(db_sessions, token)
        assert recorded.state == "PENDING"

        stack.restart_web()
        retry = requests.post(f"{stack.base_url}/predict", **request)

        assert retry.status_code == 202, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["task_id"] == recorded.task_id
        assert [r.task_id for r in _rows(db_sessions, token)] == [recorded.task_id]
        # Its message was never sent: recovery finds the upload waiting and queues it, and a worker reads it.
        stack.start_worker()
        assert eventually(lambda: [r.state for r in _rows(db_sessions, token)] == ["SUCCESS"], timeout=120)
        assert len(_rows(db_sessions, token)) == 1
    finally:
        stack.stop()
