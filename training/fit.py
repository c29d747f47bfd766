"""Fit an architecture on MNIST's training split, validating on a held-out part of it; score it on the test split.

The test split is touched once, after training, for the final figure (and the CLI's gate on it). What
Keras reports each epoch, and anything tuned by it, comes from the held-out validation images only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.deskew import deskew
from training.architectures import (
    ARCHITECTURES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    augmenter,
    build_model,
    build_strong_model,
)
from training.captures import served_copies
from training.fonts import PER_FAMILY, font_copies
from training.mnist_data import Mnist

log = logging.getLogger(__name__)

# 5,000 of MNIST's 60,000 training images, the customary validation split's size, drawn by a fixed seed
# that does not follow --seed: every training run of any seed is validated on the same images.
VALIDATION_FRACTION = 1 / 12
VALIDATION_SEED = 20261130


@dataclass(frozen=True)
class TrainResult:
    """A trained model with its validation and test scores and its training cost."""

    model: Any  # keras.Model; Any so this module imports without TensorFlow
    validation_loss: float
    validation_accuracy: float
    validation_samples: int
    test_loss: float
    test_accuracy: float
    test_samples: int
    train_seconds: float
    train_samples: int  # MNIST training images (less the held-out ones)
    capture_copies: int  # degraded copies trained on besides them (training/captures.py)
    epochs: int
    architecture: str = "seed"
    batch_size: int = 32
    deskewed: bool = True
    captures: bool = True
    styles: bool = False  # the copies restyled (training/styles.py)
    font_copies: int = 0  # copies of the fonts' digits, in place of as many degraded copies (training/fonts.py)


def normalise(x: np.ndarray, deskewed: bool = True) -> np.ndarray:
    """Float images (N, 28, 28) in [0, 1], deskewed if asked, with one channel: (N, 28, 28, 1)."""
    if deskewed and len(x):  # in slices: deskew's intermediates are several times the images' size
        x = np.concatenate([deskew(x[i:i + 4096]) for i in range(0, len(x), 4096)])
    return x[..., np.newaxis]


def preprocess(images: Any, deskewed: bool = True) -> np.ndarray:
    """Scale uint8 images (N, 28, 28) to float32 in [0, 1], deskewed if asked, with one channel: (N, 28, 28, 1)."""
    return normalise(np.asarray(images, dtype=np.float32) / 255.0, deskewed)


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float = VALIDATION_FRACTION,
                     seed: int = VALIDATION_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_validation, y_validation): a seeded random `fraction` of the images held out."""
    order = np.random.default_rng(seed).permutation(len(x))
    held = max(1, round(len(x) * fraction))
    train, validation = np.sort(order[held:]), np.sort(order[:held])  # sorted: the training order stays MNIST's
    return x[train], y[train], x[validation], y[validation]


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
        .map(augmenter(seed))  # batched map: one vectorised call per batch; sequential = reproducible
        .prefetch(tf.data.AUTOTUNE)  # augment the next batch while the model trains on this one
    )
    validation_ds = tf.data.Dataset.from_tensor_slices(validation).batch(512)
    model.fit(train_ds, epochs=epochs, validation_data=validation_ds, callbacks=[_epoch_logger()], verbose=0,
              shuffle=False)  # train_ds shuffles itself; this only silences Keras' warning
    return model


def _seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow RNGs: same weights, same shuffling
    # Reproducible kernels too; measured on 2 CPU cores it costs next to nothing for this model.
    tf.config.experimental.enable_op_determinism()


def _training_set(mnist: Mnist, limit: int | None, seed: int, captures: bool, styles: bool,
                  fonts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(x_train, y_train, x_val, y_val, MNIST images, font copies): MNIST's training split less the held-out images,
    then its degraded (and restyled) copies, then the font digits' copies; floats in [0, 1], not yet deskewed.

    The fonts' copies take the place of as many copies of MNIST's digits (a seeded sample is left out), so the
    training set, and with it the training time, stays the size it was without them."""
    x_all = np.asarray(mnist.x_train[:limit], dtype=np.float32) / 255.0
    x_train, y_train, x_val, y_val = split_validation(x_all, mnist.y_train[:limit])
    extra_x, extra_y = [np.zeros((0, 28, 28), np.float32)], [np.zeros(0, np.int64)]
    if captures:
        copies, labels = served_copies(x_train, y_train, seed, styles=styles)
        extra_x, extra_y = [copies], [labels.astype(np.int64)]
    font_count = 0
    if fonts:
        x_font, y_font = font_copies(seed, per_family=fonts)
        keep = np.sort(np.random.default_rng([seed, 55]).permutation(len(extra_x[0]))[len(x_font):])
        extra_x, extra_y = [extra_x[0][keep], x_font], [extra_y[0][keep], y_font]
        font_count = len(x_font)
    return (np.concatenate([x_train, *extra_x]), np.concatenate([y_train.astype(np.int64), *extra_y]), x_val, y_val,
            len(x_train), font_count)


def train(mnist: Mnist, *, epochs: int | None = None, batch_size: int | None = None, seed: int = 1,
          limit: int | None = None, architecture: str = "seed", deskewed: bool = True,
          captures: bool = True, styles: bool = True, fonts: int = PER_FAMILY) -> TrainResult:
    """Train ``architecture`` on ``mnist``'s training split (its first ``limit`` images if given), less the held-out
    validation images; score it on the test split once. ``deskewed``: train on (and score) deskewed digits, as
    the workers will then serve them (shared/deskew.py). ``captures``: train on one degraded copy of each training
    digit too (training/captures.py), ``styles`` restyled first (other writers' 1, 4, 7 and 9; elastic
    distortions); ``fonts``: and on that many copies of each digit of each font family (training/fonts.py; 0:
    none), in place of as many copies. Validation and test digits stay MNIST's own.

    ``epochs`` and ``batch_size`` default to the architecture's own (DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
    epochs = epochs or DEFAULT_EPOCHS[architecture]
    batch_size = batch_size or DEFAULT_BATCH_SIZE[architecture]
    _seed_everything(seed)
    x_train, y_train, x_val, y_val, mnist_samples, font_count = _training_set(mnist, limit, seed, captures,
                                                                              styles, fonts)
    x_train, x_val = normalise(x_train, deskewed), normalise(x_val, deskewed)

    log.info("training %s on %d %simages (%d held out for validation), %d epoch(s), batch size %d, seed %d",
             ARCHITECTURES[architecture], len(x_train), "deskewed " if deskewed else "", len(x_val), epochs,
             batch_size, seed)
    started = time.perf_counter()
    if architecture == "seed":
        model = _fit_seed(x_train, y_train, (x_val, y_val), epochs, batch_size)
    else:
        model = _fit_strong(x_train, y_train, (x_val, y_val), epochs, batch_size, seed)
    train_seconds = time.perf_counter() - started
    val_loss, val_accuracy = model.evaluate(x_val, y_val, batch_size=256, verbose=0)
    x_test = preprocess(mnist.x_test, deskewed)
    test_loss, test_accuracy = model.evaluate(x_test, mnist.y_test, batch_size=256, verbose=0)
    log.info("validation accuracy %.4f; test accuracy %.4f (loss %.4f); trained in %.1f s",
             val_accuracy, test_accuracy, test_loss, train_seconds)
    return TrainResult(model=model, validation_loss=float(val_loss), validation_accuracy=float(val_accuracy),
                       validation_samples=len(x_val), test_loss=float(test_loss),
                       test_accuracy=float(test_accuracy), test_samples=len(mnist.x_test),
                       train_seconds=train_seconds, train_samples=mnist_samples,
                       capture_copies=len(x_train) - mnist_samples - font_count, epochs=epochs,
                       architecture=architecture, batch_size=batch_size, deskewed=deskewed, captures=captures,
                       styles=captures and styles, font_copies=font_count)
