"""A model rollout and its rollback under load, end to end: nothing lost, each answer from the model it names."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import select

from shared.model_files import onnx_beside, sha256_of
from shared.preprocessing import preprocess
from shared.schema import Prediction
from tests.helpers import png_bytes
from tests.stack import running_stack
from training.onnx_export import export_onnx
from training.publish import publish
from worker.model import Predictor

pytestmark = pytest.mark.e2e
CLIENTS = 4


def _variant(trained_model: Path, folder: Path) -> Path:
    """The seed model with the 3's bias raised: other probabilities for the same input, another version."""
    import keras

    model = keras.models.load_model(trained_model, compile=False)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, bias + np.eye(10, dtype=bias.dtype)[3] * 1.5])
    path = folder / "variant.h5"
    model.save(path)
    meta = json.loads(trained_model.with_suffix(".json").read_text())
    meta.pop("sha256", None)
    path.with_suffix(".json").write_text(json.dumps({**meta, "model_version": sha256_of(path)[:16]}))
    export_onnx(path, onnx_beside(path))
    return path


@dataclass
class _Answer:
    sent: float
    answered: float
    status: int
    body: dict
    image: int


class _Load:
    """Closed-loop clients uploading MNIST digits in one-request mode until stopped; every answer kept."""

    def __init__(self, base_url: str, images: list[bytes]) -> None:
        self.base_url, self.images = base_url, images
        self.answers: list[_Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, offset: int) -> None:
        http, n = requests.Session(), offset
        while not self._stop.is_set():
            index = n % len(self.images)
            sent = time.monotonic()
            resp = http.post(f"{self.base_url}/predict", params={"wait": 20},
                             files={"file": ("d.png", self.images[index])}, timeout=60)
            self.answers.append(_Answer(sent, time.monotonic(), resp.status_code, resp.json(), index))
            n += CLIENTS

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until `count` more answers came in."""
        target, deadline = len(self.answers) + count, time.monotonic() + timeout
        while len(self.answers) < target:
            assert time.monotonic() < deadline, f"only {len(self.answers)} answers of {target}"
            time.sleep(0.05)


def _serving(base_url: str, version: str, timeout: float = 30) -> Callable[[], float]:
    """Wait until /system lists only `version`; the moment it did."""
    deadline = time.monotonic() + timeout
    while requests.get(f"{base_url}/system", timeout=5).json()["model_versions"] != [version]:
        assert time.monotonic() < deadline, f"{version} not served after {timeout} s"
        time.sleep(0.05)
    seen = time.monotonic()
    return lambda: seen


def test_a_new_model_reaches_a_worker_under_load_and_rolls_back_without_losing_an_upload(
        database_url, redis_url, db_sessions, tmp_path, trained_model, mnist):
    serving = tmp_path / "serving" / "mnist_model.h5"
    serving.parent.mkdir()
    old = publish(trained_model, serving)
    variant = _variant(trained_model, tmp_path)
    images = [png_bytes(x) for x in mnist.x_test[:200]]

    with running_stack(database_url, redis_url, MODEL_PATH=str(serving), MODEL_RELOAD_SECONDS="0.5") as live:
        live.wait_for_workers()
        with _Load(live.base_url, images) as load:
            load.wait_for(60)
            new = publish(variant, serving)
            switched = _serving(live.base_url, new)()
            load.wait_for(100)
            rolled_back = time.monotonic()
            assert publish(trained_model, serving) == old  # rolling back is the same operation
            _serving(live.base_url, old)
            load.wait_for(60)

    answers = load.answers
    assert [a for a in answers if a.status != 200 or a.body["state"] != "SUCCESS"] == []
    assert {a.body["model_version"] for a in answers} == {old, new}
    # Sent once /system said the new model serves and answered before the rollback began: the new model answered.
    # (An upload still in flight when the rollback is published may rightly be read by the old model again.)
    between = [a for a in answers if switched < a.sent and a.answered < rolled_back]
    stale = [(round(a.sent - switched, 3), a.body["task_id"], a.body.get("created_at"), a.body.get("finished_at"))
             for a in between if a.body["model_version"] != new]
    assert {a.body["model_version"] for a in between} == {new}, \
        f"answered by the old model though sent after /system listed only the new one and answered before the " \
        f"rollback {rolled_back - switched:.3f} s after it (s after, task, times): {stale}"
    # Each answer's probabilities are those of the model it names: none came from a half-loaded model.
    models = {old: Predictor.load(trained_model, "onnx"), new: Predictor.load(variant, "onnx")}
    inputs = np.stack([preprocess(data) for data in images])
    expected = {version: model.predict(inputs) for version, model in models.items()}
    for answer in answers:
        got = np.array(answer.body["probabilities"])
        np.testing.assert_allclose(got, expected[answer.body["model_version"]][answer.image], atol=2e-6)
    with db_sessions() as s:
        stored = dict(s.execute(select(Prediction.task_id, Prediction.model_version)
                                .where(Prediction.task_id.in_([a.body["task_id"] for a in answers]))).all())
    assert stored == {a.body["task_id"]: a.body["model_version"] for a in answers}
