"""The model card (what a model's metadata tells serving) and the input normalisation it asks for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from shared.deskew import deskew
from tests.helpers import slanted_stroke
from worker.model import ModelCard, ModelUnavailable, Predictor


def _model_file(tmp_path: Path, metadata: dict | str | None) -> Path:
    path = tmp_path / "m.h5"
    path.write_bytes(b"weights")
    if metadata is not None:
        path.with_suffix(".json").write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))
    return path


DIGEST = hashlib.sha256(b"weights").hexdigest()


def test_the_card_reads_the_version_and_the_input_normalisation(tmp_path: Path) -> None:
    path = _model_file(tmp_path, {"model_version": "abc123", "deskew": True, "architecture": "seed-cnn"})
    assert ModelCard.of(path) == ModelCard("abc123", DIGEST, deskew=True, name="seed-cnn")
    path = _model_file(tmp_path, {"model_version": "abc123", "sha256": DIGEST})
    assert ModelCard.of(path) == ModelCard("abc123", DIGEST)


def test_a_model_without_metadata_gets_plain_input_and_a_hash_for_version(tmp_path: Path) -> None:
    assert ModelCard.of(_model_file(tmp_path, None)) == ModelCard(DIGEST[:16], DIGEST, deskew=False)
    assert ModelCard.of(_model_file(tmp_path, "{not json")) == ModelCard(DIGEST[:16], DIGEST, deskew=False)
    assert ModelCard.of(_model_file(tmp_path, {"model_version": "old"})) == ModelCard("old", DIGEST, deskew=False)


def test_metadata_of_another_h5_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable):
        ModelCard.of(_model_file(tmp_path, {"model_version": "new", "sha256": "f" * 64}))


def _recording_predictor(deskewed: bool, seen: list[np.ndarray]) -> Predictor:
    def call(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return np.full((len(x), 10), 0.1, np.float32)

    return Predictor("v", "/CPU:0", "onnx", call, deskew=deskewed)


def test_a_model_trained_on_deskewed_digits_is_served_deskewed_digits() -> None:
    batch = np.stack([slanted_stroke(0.5), slanted_stroke(-0.3)])
    seen: list[np.ndarray] = []
    _recording_predictor(True, seen).predict(batch)
    _recording_predictor(False, seen).predict(batch)
    assert [x.shape for x in seen] == [(2, 28, 28, 1)] * 2
    np.testing.assert_allclose(seen[0][..., 0], deskew(batch))
    np.testing.assert_allclose(seen[1][..., 0], batch)
