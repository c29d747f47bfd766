"""The numpy engine (worker/numpy_model.py) against Keras on the same .h5, and how a worker picks its engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.model import NUMPY_MAX_MACS, Predictor
from worker.numpy_model import NumpyModel, Unsupported

SHAPE = (28, 28, 1)


def _keras(path: Path):
    import keras

    return keras.models.load_model(path, compile=False)


def _save(tmp_path: Path, *layers) -> Path:
    """A small model with random weights (and moved batch-norm statistics), saved as the worker's .h5."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(SHAPE), *layers])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # not the identity it starts as
            layer.set_weights([w + np.random.default_rng(1).uniform(0.2, 1.0, w.shape) for w in layer.get_weights()])
    path = tmp_path / "model.h5"
    model.save(path)
    return path


def test_the_seed_model_gives_kerass_probabilities(mnist, trained_model):
    batch = mnist.x_test[:500].astype(np.float32)[..., None] / 255
    ours = NumpyModel.load(trained_model, SHAPE)(batch)
    theirs = _keras(trained_model).predict(batch, verbose=0)

    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()


def test_batch_norm_dropout_activations_and_dense_layers_match_keras(tmp_path, mnist):
    import keras
    from keras import layers

    path = _save(tmp_path, layers.Conv2D(8, 3, use_bias=False), layers.BatchNormalization(),
                 layers.Activation("relu"), layers.Conv2D(8, (5, 3), activation="relu"), layers.MaxPooling2D(),
                 layers.Dropout(0.3), layers.Flatten(), layers.Dense(16), layers.ReLU(),
                 layers.Dense(10, activation="softmax"))
    batch = mnist.x_test[:64].astype(np.float32)[..., None] / 255
    model = NumpyModel.load(path, SHAPE)

    np.testing.assert_allclose(model(batch), _keras(path).predict(batch, verbose=0), atol=1e-5)
    assert model.params == keras.models.load_model(path, compile=False).count_params() - 2 * 8  # BN folded


def test_a_layer_it_cannot_run_is_refused_and_auto_falls_back_to_tensorflow(tmp_path):
    from keras import layers

    path = _save(tmp_path, layers.Conv2D(4, 3, padding="same"), layers.Flatten(), layers.Dense(10))
    with pytest.raises(Unsupported, match="Conv2D"):
        NumpyModel.load(path, SHAPE)
    with pytest.raises(Unsupported):
        Predictor.load(path, engine="numpy")
    assert Predictor.load(path, engine="auto").engine == "tensorflow"


def test_auto_runs_the_seed_model_on_numpy_and_a_large_model_on_tensorflow(tmp_path, trained_model):
    from keras import layers

    seed = Predictor.load(trained_model, engine="auto")
    assert (seed.engine, seed.device) == ("numpy", "/CPU:0")
    assert NumpyModel.load(trained_model, SHAPE).macs_per_image < NUMPY_MAX_MACS
    large = _save(tmp_path, layers.Conv2D(64, 3), layers.Conv2D(64, 3), layers.Flatten(), layers.Dense(10))
    assert NumpyModel.load(large, SHAPE).macs_per_image > NUMPY_MAX_MACS
    assert Predictor.load(large, engine="auto").engine == "tensorflow"


def test_both_engines_give_the_same_digits_through_the_predictor(mnist, trained_model):
    batch = mnist.x_test[:128].astype(np.float32) / 255
    numpy_engine, tensorflow = Predictor.load(trained_model, "numpy"), Predictor.load(trained_model, "tensorflow")

    assert numpy_engine.version == tensorflow.version and numpy_engine.params == tensorflow.params
    np.testing.assert_allclose(numpy_engine.predict(batch), tensorflow.predict(batch), atol=1e-5)
