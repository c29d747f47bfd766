"""Model rollout: the watcher swaps in a replaced model file once it loads, and publishing writes the .h5 last."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from shared.model_files import onnx_beside, recorded_source, sha256_of
from training.publish import publish
from worker.model import ModelUnavailable, Predictor
from worker.rollout import ModelWatcher, Stamp


def _replace(path: Path, data: bytes) -> None:
    """Replace a file the way publishing does: a new file renamed over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _Loads:
    """What the watcher is given to load with: each call reads the file, or raises while told to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failing: Exception | None = None
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        return self.path.read_bytes()


def test_a_replaced_model_is_loaded_and_swapped_once(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"v1")
    load, swapped = _Loads(path), []
    watcher = ModelWatcher(path, 1.0, load, swapped.append, Stamp.of(path))

    assert not watcher.check() and load.calls == 0  # unchanged: not even loaded
    _replace(path, b"v2")
    assert watcher.check() and swapped == [b"v2"]
    assert not watcher.check() and load.calls == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_model_that_does_not_load_leaves_the_old_one_serving_and_is_tried_again_less_often(tmp_path,
                                                                                              caplog) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"v1")
    load, swapped, clock = _Loads(path), [], _Clock()
    watcher = ModelWatcher(path, 1.0, load, swapped.append, Stamp.of(path), clock=clock)
    _replace(path, b"v2")
    load.failing = ModelUnavailable("its ONNX form records another .h5")

    with caplog.at_level(logging.WARNING, logger="worker.rollout"):
        attempts = []
        for _ in range(16):  # one look a second for 16 s
            watcher.check()
            attempts.append(load.calls)
            clock.now += 1.0
    assert swapped == []
    assert attempts == [1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5]  # after 1, 2, 4, 8 s
    assert len([r for r in caplog.records if "did not load" in r.getMessage()]) == 1  # said once per file
    load.failing = None
    clock.now += 16.0
    assert watcher.check() and swapped == [b"v2"]


def test_a_newer_file_is_tried_at_once_after_a_refused_one(tmp_path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"v1")
    load, swapped = _Loads(path), []
    watcher = ModelWatcher(path, 10.0, load, swapped.append, Stamp.of(path), clock=_Clock())
    _replace(path, b"half")
    load.failing = ModelUnavailable("being replaced")
    assert not watcher.check()
    load.failing = None
    _replace(path, b"v2 whole")  # the rest of the rollout landed: no waiting out the backoff
    assert watcher.check() and swapped == [b"v2 whole"]


def test_a_missing_file_is_no_change(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"v1")
    load = _Loads(path)
    watcher = ModelWatcher(path, 1.0, load, lambda model: None, Stamp.of(path))
    path.unlink()
    assert not watcher.check() and load.calls == 0


def test_publishing_copies_the_set_and_the_worker_loads_it(tmp_path: Path, trained_model: Path) -> None:
    target = tmp_path / "serving" / "mnist_model.h5"
    target.parent.mkdir()
    version = publish(trained_model, target)

    digest = sha256_of(trained_model)
    metadata = json.loads(target.with_suffix(".json").read_text())
    assert (version, metadata["sha256"], sha256_of(target)) == (digest[:16], digest, digest)
    assert recorded_source(onnx_beside(target).read_bytes()) == digest
    assert Predictor.load(target, "onnx").version == version
    assert sorted(p.name for p in target.parent.iterdir()) == ["mnist_model.h5", "mnist_model.json",
                                                              "mnist_model.onnx"]


def test_publishing_refuses_metadata_of_another_model(tmp_path: Path, trained_model: Path) -> None:
    source = tmp_path / "m.h5"
    shutil.copy(trained_model, source)
    source.with_suffix(".json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ValueError, match="another model"):
        publish(source, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()
