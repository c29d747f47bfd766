"""The ONNX Runtime engine against Keras on the same .h5, and the rule that a worker serves only its .h5's ONNX form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.deskew import deskew
from shared.model_files import onnx_beside, recorded_source, sha256_of
from training.onnx_export import export_onnx
from worker import model as model_module
from worker.model import ModelUnavailable, Predictor, convert_in_subprocess


def _keras_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    import keras

    return keras.models.load_model(path, compile=False).predict(x[..., None], batch_size=500, verbose=0)


def _never_convert(model_path: Path, target: Path) -> None:
    raise AssertionError(f"asked to convert {model_path}")


def test_the_seed_model_gives_kerass_probabilities_on_all_of_mnist_test(mnist, trained_model):
    x = mnist.x_test.astype(np.float32) / 255
    predictor = Predictor.load(trained_model, "onnx", convert=_never_convert)  # training wrote its ONNX form
    ours = np.concatenate([predictor.predict(x[i:i + 128]) for i in range(0, len(x), 128)])
    theirs = _keras_probabilities(trained_model, deskew(x) if predictor.deskew else x)

    assert (predictor.engine, predictor.device) == ("onnx", "/CPU:0")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


def test_the_strong_architecture_gives_kerass_probabilities(tmp_path, mnist):
    """Batch norm (moved statistics), dropout, padding and pooling of the strong CNN, with random weights."""
    import keras

    from training.architectures import build_strong_model

    keras.utils.set_random_seed(3)
    model = build_strong_model()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # not the identity it starts as
            layer.set_weights([w + np.random.default_rng(1).uniform(0.2, 1.0, w.shape) for w in layer.get_weights()])
    path = tmp_path / "strong.h5"
    model.save(path)
    export_onnx(path, onnx_beside(path))
    x = mnist.x_test[:500].astype(np.float32) / 255

    ours = Predictor.load(path, "onnx", convert=_never_convert).predict(x)
    np.testing.assert_allclose(ours, _keras_probabilities(path, x), atol=1e-5)


def _copy_model(trained_model: Path, tmp_path: Path) -> Path:
    """The seed .h5 alone in a folder of its own (no .json, no ONNX form)."""
    path = tmp_path / "m.h5"
    shutil.copy(trained_model, path)
    return path


def test_an_onnx_file_made_from_another_model_is_never_served(tmp_path, trained_model):
    path = _copy_model(trained_model, tmp_path)
    shutil.copy(onnx_beside(trained_model), onnx_beside(path))
    with path.open("ab") as f:  # the .h5 changes after its ONNX form was made: that form is stale
        f.write(b"\0")
    asked: list[tuple[Path, Path]] = []

    def convert(model_path: Path, target: Path) -> None:
        asked.append((model_path, target))  # writes nothing: the worker has nothing it may serve

    assert recorded_source(onnx_beside(path).read_bytes()) == sha256_of(trained_model) != sha256_of(path)
    with pytest.raises(ModelUnavailable, match="records its hash"):
        Predictor.load(path, "onnx", convert=convert)
    assert asked == [(path, tmp_path / f"{sha256_of(path)}.onnx")]


def test_an_onnx_file_that_records_no_model_is_never_served(tmp_path, trained_model):
    import onnx

    path = _copy_model(trained_model, tmp_path)
    proto = onnx.load(onnx_beside(trained_model))
    del proto.metadata_props[:]
    onnx.save(proto, onnx_beside(path))
    assert recorded_source(onnx_beside(path).read_bytes()) is None
    assert recorded_source(b"not an onnx file") is None
    with pytest.raises(ModelUnavailable):
        Predictor.load(path, "onnx", convert=lambda model_path, target: None)


def test_a_h5_without_its_onnx_form_is_converted_once_in_a_subprocess_and_cached(tmp_path, mnist, trained_model):
    path = _copy_model(trained_model, tmp_path)
    shutil.copy(trained_model.with_suffix(".json"), path.with_suffix(".json"))  # the same model, input and all
    cache = tmp_path / "cache"
    calls: list[Path] = []

    def convert(model_path: Path, target: Path) -> None:
        calls.append(target)
        convert_in_subprocess(model_path, target)

    first = Predictor.load(path, "onnx", cache_dir=cache, convert=convert)
    again = Predictor.load(path, "onnx", cache_dir=cache, convert=convert)

    assert calls == [cache / f"{sha256_of(path)}.onnx"]
    assert recorded_source(calls[0].read_bytes()) == sha256_of(path)
    x = mnist.x_test[:64].astype(np.float32) / 255
    np.testing.assert_array_equal(first.predict(x), again.predict(x))
    reference = Predictor.load(trained_model, "onnx", convert=_never_convert)
    np.testing.assert_allclose(first.predict(x), reference.predict(x), atol=1e-6)


def test_a_failed_conversion_says_how_to_make_the_onnx_form(tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="python -m training.onnx_export"):
        convert_in_subprocess(broken, tmp_path / "out.onnx")


def test_metadata_naming_another_h5_is_waited_out_then_refused(tmp_path, trained_model, monkeypatch):
    path = _copy_model(trained_model, tmp_path)
    path.with_suffix(".json").write_text(json.dumps({"model_version": "new", "sha256": "0" * 64}))
    monkeypatch.setattr(model_module, "REPLACING_WAIT_SECONDS", 0.0)
    with pytest.raises(ModelUnavailable, match="being replaced"):
        Predictor.load(path, "onnx", convert=_never_convert)


def test_training_publishes_the_onnx_form_recording_the_h5s_hash(trained_model):
    metadata = json.loads(trained_model.with_suffix(".json").read_text())
    digest = sha256_of(trained_model)
    assert recorded_source(onnx_beside(trained_model).read_bytes()) == digest
    assert metadata.get("sha256", digest) == digest and metadata["model_version"] == digest[:16]


def test_an_unknown_engine_is_refused(trained_model):
    with pytest.raises(ValueError, match="unknown inference engine 'numpy'"):
        Predictor.load(trained_model, "numpy")
