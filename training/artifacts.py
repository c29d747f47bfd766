"""What training leaves for the workers: the .h5 model, its ONNX form and its .json metadata, written atomically."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.model_files import atomic_path, onnx_beside, sha256_of
from training import captures, fonts
from training.architectures import ARCHITECTURES, AUGMENTATION
from training.fit import VALIDATION_SEED, TrainResult
from training.mnist_data import Mnist
from training.onnx_export import export_onnx


class _DropHdf5LegacyWarning(logging.Filter):
    """Drop Keras 3's "HDF5 is legacy" warning: .h5 is this project's chosen format, not an accident."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You are saving your model as an HDF5 file")


def save_model(model: Any, output: Path, metadata: Callable[[str], dict[str, Any]]) -> str:
    """Publish ``model`` at ``output`` (.h5) with its ONNX form and .json beside it; return its model_version.

    The .h5 is moved into place last: whoever sees a new .h5 finds the ONNX form and metadata made from it
    already there, and each records the .h5's SHA-256, so a worker can tell a set still being written.
    """
    absl_logger = logging.getLogger("absl")
    legacy_filter = _DropHdf5LegacyWarning()
    with atomic_path(output) as tmp:
        absl_logger.addFilter(legacy_filter)
        try:
            model.save(tmp)  # .h5 suffix selects the legacy HDF5 format the workers load
        finally:
            absl_logger.removeFilter(legacy_filter)
        # Hash the bytes we are about to publish, so the version always matches the file.
        digest = sha256_of(tmp)
        version = digest[:16]
        export_onnx(tmp, onnx_beside(output), digest)
        write_metadata(output.with_suffix(".json"), {**metadata(version), "sha256": digest})
    return version


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as JSON at ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def build_metadata(result: TrainResult, mnist: Mnist, model_version: str, seed: int) -> dict[str, Any]:
    """Return the metadata that describes a trained model (stored beside it as .json)."""
    import keras
    import tensorflow as tf

    metadata: dict[str, Any] = {
        "model_version": model_version,
        "architecture": ARCHITECTURES[result.architecture],
        "test_accuracy": round(result.test_accuracy, 6),
        "test_loss": round(result.test_loss, 6),
        "test_samples": result.test_samples,
        "validation_accuracy": round(result.validation_accuracy, 6),
        "validation_loss": round(result.validation_loss, 6),
        "validation_samples": result.validation_samples,
        "validation_seed": VALIDATION_SEED,
        # The input normalisation the model was trained with: workers apply the same (worker/model.py).
        "deskew": result.deskewed,
        "epochs": result.epochs,
        "train_samples": result.train_samples,
        "capture_copies": result.capture_copies,
        "font_copies": result.font_copies,
        "seed": seed,
        "train_seconds": round(result.train_seconds, 2),
        "data_source": mnist.source,
        "data_sha256": dict(mnist.checksums),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
    }
    # What training saw besides MNIST's digits: the degraded copies, and the architecture's own augmentation.
    metadata["augmentation"] = [step for step in (captures.RECIPE if result.captures else None,
                                                  captures.STYLES_RECIPE if result.styles else None,
                                                  fonts.RECIPE if result.font_copies else None,
                                                  AUGMENTATION[result.architecture]) if step]
    metadata["parameters"] = int(result.model.count_params())
    if result.architecture != "seed":
        metadata["batch_size"] = result.batch_size
    return metadata
