"""End-to-end tests of the training command on a small slice of the offline MNIST copy."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from shared.model_files import recorded_source
from training import captures, fonts
from training.cli import main
from training.fit import VALIDATION_SEED
from training.mnist_data import EXPECTED_SHA256

REPO_ROOT = Path(__file__).resolve().parents[2]
# CI checks the repo out with the shared team material beside it: <dir>/<repo> and <dir>/shared.
OFFLINE_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"

METADATA_FIELDS = {
    "model_version", "architecture", "test_accuracy", "test_loss", "test_samples", "validation_accuracy",
    "validation_loss", "validation_samples", "validation_seed", "deskew", "augmentation", "capture_copies",
    "font_copies", "epochs", "train_samples", "seed",
    "train_seconds", "data_source", "data_sha256", "trained_at", "tensorflow_version", "keras_version",
    "python_version", "parameters", "sha256",
}


def _quick_train(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """Train on the offline MNIST copy into a fresh folder with these options; the saved model's path."""
    if not OFFLINE_MNIST.is_dir():
        pytest.fail(f"offline MNIST copy not found at {OFFLINE_MNIST} (expected ../shared beside the repo)")
    output = tmp_path_factory.mktemp(name) / f"{name}.h5"
    assert main(["--data", str(OFFLINE_MNIST), *args, "--output", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train once for the module: 3,000 images, 1 epoch (a few seconds on 2 cores)."""
    return _quick_train(tmp_path_factory, "m", "--limit", "3000", "--epochs", "1", "--min-accuracy", "0.80",
                        "--font-copies", "1")


def test_model_file_has_the_seed_architecture(trained: Path) -> None:
    import keras

    model = keras.models.load_model(trained)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert tuple(model.input_shape) == (None, 28, 28, 1)
    assert tuple(model.output_shape) == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.layers[0].filters == 32 and tuple(model.layers[0].kernel_size) == (3, 3)


def test_metadata_describes_the_saved_file(trained: Path) -> None:
    metadata = json.loads(trained.with_suffix(".json").read_text())
    assert set(metadata) == METADATA_FIELDS
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    assert (metadata["model_version"], metadata["sha256"]) == (digest[:16], digest)
    assert metadata["parameters"] == 54_410  # Conv32 3x3 (320) + Dense10 over 13x13x32 (54,090)
    assert metadata["architecture"] == "seed-cnn"
    assert 0.80 <= metadata["test_accuracy"] <= 1.0
    assert metadata["epochs"] == 1 and metadata["seed"] == 1
    # A twelfth of the 3,000 images is held out for validation; the test split is all of MNIST's 10,000.
    assert (metadata["train_samples"], metadata["validation_samples"], metadata["test_samples"]) == (2750, 250, 10000)
    assert metadata["validation_seed"] == VALIDATION_SEED
    assert metadata["deskew"] is True  # trained on deskewed digits: workers serve it deskewed ones
    # The seed CNN's only augmentation: degraded copies, restyled, and the fonts' digits.
    assert metadata["augmentation"] == [captures.RECIPE, captures.STYLES_RECIPE, fonts.RECIPE]
    _, families, held_out = fonts.load_font_digits()
    trained_families = len(set(families[~held_out]))
    assert 0.95 * 10 * trained_families <= metadata["font_copies"] <= 10 * trained_families  # one of each digit
    # One copy per training image, less the few preprocessing refuses; the fonts' copies take some copies' places.
    assert 2500 <= metadata["capture_copies"] + metadata["font_copies"] <= 2750
    assert 0.80 <= metadata["validation_accuracy"] <= 1.0
    assert metadata["data_sha256"] == EXPECTED_SHA256
    assert datetime.fromisoformat(metadata["trained_at"]).utcoffset().total_seconds() == 0
    # The ONNX form the workers run, made from exactly this .h5; atomic writes leave no temporary files behind.
    assert recorded_source(trained.with_suffix(".onnx").read_bytes()) == digest
    assert sorted(p.name for p in trained.parent.iterdir()) == ["m.h5", "m.json", "m.onnx"]


def test_existing_output_is_skipped_without_force(trained: Path) -> None:
    before = trained.read_bytes()
    # A bogus --data proves it returns before touching the data at all.
    assert main(["--data", "/nonexistent", "--output", str(trained)]) == 0
    assert trained.read_bytes() == before


def test_accuracy_below_the_bar_fails_and_saves_nothing(tmp_path: Path) -> None:
    output = tmp_path / "m.h5"
    # The least training that reaches the bar's check: no copies, no fonts' digits.
    rc = main([
        "--data", str(OFFLINE_MNIST), "--limit", "500", "--epochs", "1", "--no-captures", "--font-copies", "0",
        "--min-accuracy", "0.999", "--output", str(output),
    ])
    assert rc != 0
    assert list(tmp_path.iterdir()) == []


def test_bad_data_dir_fails_clearly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--data", str(tmp_path / "nope"), "--output", str(tmp_path / "m.h5")]) == 2
    assert "MNIST data not found" in caplog.text


def test_script_runs_as_a_file() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "worker" / "create_and_train_model.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--min-accuracy" in proc.stdout


@pytest.fixture(scope="module")
def trained_strong(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strong architecture, briefly: 2,000 images, 1 epoch (a few seconds on 2 cores)."""
    # Batch size 32: enough steps in one short epoch for the BatchNorm statistics to settle. No restyling: the seed
    # fixture above covers it, and this one checks the architecture.
    return _quick_train(tmp_path_factory, "s", "--architecture", "strong", "--limit", "2000", "--epochs", "1",
                        "--batch-size", "32", "--min-accuracy", "0.5", "--font-copies", "1", "--no-styles")


def test_strong_model_loads_plainly_with_the_expected_structure(trained_strong: Path) -> None:
    import keras

    # compile=False and no custom_objects: exactly how worker.model loads it.
    model = keras.models.load_model(trained_strong, compile=False)
    names = [type(layer).__name__ for layer in model.layers]
    assert tuple(model.input_shape) == (None, 28, 28, 1)
    assert tuple(model.output_shape) == (None, 10)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert names.count("Conv2D") >= 4 and names.count("MaxPooling2D") >= 2
    assert names.count("BatchNormalization") >= 4 and names.count("Dropout") >= 2
    # Each conv block: Conv-BN-ReLU twice, then pooling and dropout.
    first_pool = names.index("MaxPooling2D")
    assert names[:first_pool + 2] == ["Conv2D", "BatchNormalization", "Activation"] * 2 + ["MaxPooling2D", "Dropout"]
    # No augmentation layers inside the saved model: inference is a plain function.
    assert not [n for n in names if n.startswith("Random")]


def test_strong_model_inference_is_deterministic(trained_strong: Path) -> None:
    import keras
    import numpy as np

    model = keras.models.load_model(trained_strong, compile=False)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    first, second = np.asarray(model(x, training=False)), np.asarray(model(x, training=False))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)


def test_strong_metadata(trained_strong: Path) -> None:
    metadata = json.loads(trained_strong.with_suffix(".json").read_text())
    assert set(metadata) >= METADATA_FIELDS
    assert metadata["architecture"] == "strong-cnn"
    assert metadata["model_version"] == hashlib.sha256(trained_strong.read_bytes()).hexdigest()[:16]
    assert metadata["epochs"] == 1 and metadata["batch_size"] == 32
    assert (metadata["train_samples"], metadata["validation_samples"]) == (1833, 167)
    assert 0.5 <= metadata["test_accuracy"] <= 1.0
    assert metadata["augmentation"][0] == captures.RECIPE and "rotation" in metadata["augmentation"][-1]
    assert metadata["parameters"] > 0


def test_per_architecture_defaults() -> None:
    from training.cli import parse_args

    seed = parse_args([])
    strong = parse_args(["--architecture", "strong"])
    assert (seed.architecture, seed.min_accuracy) == ("seed", 0.98)
    assert (strong.architecture, strong.min_accuracy) == ("strong", 0.993)
    assert parse_args(["--architecture", "strong", "--min-accuracy", "0.5"]).min_accuracy == 0.5
    assert seed.epochs is None and strong.epochs is None  # resolved per architecture in train()
    assert seed.deskew and not parse_args(["--no-deskew"]).deskew
