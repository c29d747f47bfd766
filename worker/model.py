"""The digit model, loaded once per worker process and called through one batched function.

On a CPU the seed CNN runs on numpy (worker/numpy_model.py): no TensorFlow in the worker at all, which is
most of its memory and start time. TensorFlow runs what numpy cannot run well: a GPU, larger models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import quiet_tensorflow_logs
from shared.deskew import deskew
from worker.metrics import INFERENCE
from worker.numpy_model import NumpyModel, Unsupported

log = logging.getLogger(__name__)

INPUT_SHAPE = (28, 28)
GPU_DEVICE = Path("/dev/nvidiactl")  # present where NVIDIA's driver is: the host may have a GPU for TensorFlow


@dataclass(frozen=True)
class ModelCard:
    """What the metadata beside a model says about it that serving needs: its version and its input normalisation."""

    version: str
    deskew: bool = False  # trained on deskewed digits (shared/deskew.py): it must be served them too
    name: str = "unnamed"  # its architecture (metadata "architecture"), shown with each answer

    @classmethod
    def of(cls, model_path: Path) -> ModelCard:
        """The card from the model's .json; without one (or unreadable), a hash of the file and MNIST's plain input."""
        meta = model_path.with_suffix(".json")
        try:
            data = json.loads(meta.read_text()) if meta.exists() else {}
        except (OSError, ValueError):
            log.warning("unreadable model metadata %s; hashing the model file instead", meta)
            data = {}
        version = str(data.get("model_version") or hashlib.sha256(model_path.read_bytes()).hexdigest()[:16])
        return cls(version, bool(data.get("deskew", False)), str(data.get("architecture") or "unnamed"))


# Multiply-adds per image up to which numpy's matrix products keep up with TensorFlow on a CPU (the seed CNN:
# 0.25 M, 4 ms per batch of 128 on one core); the strong CNN (about 12 M) is several times faster in TensorFlow.
NUMPY_MAX_MACS = 2_000_000
ENGINES = ("auto", "numpy", "tensorflow")


@dataclass
class Predictor:
    """A loaded model behind one batched call (numpy, or a traced TensorFlow function): no `model.predict`."""

    version: str
    device: str
    engine: str
    params: int
    _fn: Callable[[np.ndarray], Any]
    deskew: bool = False  # the model's input normalisation (ModelCard): applied to every batch before the call
    name: str = "unnamed"  # the model's architecture (ModelCard)

    @classmethod
    def load(cls, model_path: Path, engine: str = "auto", threads: int = 0) -> Predictor:
        """Load the .h5 with the engine asked for (auto: numpy when it runs the model well on this CPU), and
        call it once so the first upload does not pay for the warm-up."""
        if engine not in ENGINES:
            raise ValueError(f"unknown inference engine {engine!r}; expected one of {ENGINES}")
        card = ModelCard.of(model_path)
        model = None if engine == "tensorflow" else _numpy_model(model_path, engine)
        if model is not None:
            predictor = cls(card.version, "/CPU:0", "numpy", model.params, model, card.deskew, card.name)
            _limit_blas_threads(threads)
        else:
            predictor = _tensorflow_predictor(model_path, card, threads)
        predictor.predict(np.zeros((1, *INPUT_SHAPE), np.float32))
        return predictor

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for a batch of preprocessed images (N, 28, 28) scaled to [0, 1]."""
        x = np.asarray(batch, dtype=np.float32).reshape(-1, *INPUT_SHAPE)
        if self.deskew:  # the model's input normalisation, outside the timer: the histogram is the model call
            x = deskew(x)
        with INFERENCE.time():
            return np.asarray(self._fn(x[..., np.newaxis]))


def _numpy_model(model_path: Path, engine: str) -> NumpyModel | None:
    """The model on the numpy engine, or None where TensorFlow should run it (auto) ; Unsupported if forced."""
    if engine == "auto" and GPU_DEVICE.exists():
        return None  # an NVIDIA GPU on this host: TensorFlow's CUDA build uses it
    try:
        model = NumpyModel.load(model_path, (*INPUT_SHAPE, 1))
    except Unsupported as exc:
        if engine == "numpy":
            raise
        log.info("the numpy engine cannot run %s (%s): using TensorFlow", model_path, exc)
        return None
    if engine == "auto" and model.macs_per_image > NUMPY_MAX_MACS:
        log.info("%s needs %d multiply-adds per image: TensorFlow runs it faster than numpy", model_path,
                 model.macs_per_image)
        return None
    return model


def _limit_blas_threads(threads: int) -> None:
    """numpy's BLAS on one thread unless asked: its batches are small, and the cores serve the rest of the stack."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads if threads > 0 else 1, user_api="blas")


def _tensorflow_predictor(model_path: Path, card: ModelCard, threads: int) -> Predictor:
    """The .h5 in Keras, on the GPU if TensorFlow sees one, behind a function traced once."""
    quiet_tensorflow_logs()
    # TensorFlow is imported here, never at module import: the Celery parent process must not initialise it
    # before forking its children (TF's thread pools do not survive fork).
    import keras
    import tensorflow as tf

    if threads > 0:
        # Several worker processes share the cores: cap each one's pool so they do not oversubscribe.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    gpus = tf.config.list_physical_devices("GPU")
    device = "/GPU:0" if gpus else "/CPU:0"
    for gpu in gpus:
        # Several worker processes may share one GPU: grow memory instead of grabbing it all.
        tf.config.experimental.set_memory_growth(gpu, True)
    with tf.device(device):
        model = keras.models.load_model(model_path, compile=False)

    # A fixed signature with an open batch dimension: traced once, reused for every batch size.
    @tf.function(input_signature=[tf.TensorSpec([None, *INPUT_SHAPE, 1], tf.float32)], reduce_retracing=True)
    def infer(x: Any) -> Any:
        return model(x, training=False)

    return Predictor(card.version, device, "tensorflow", int(model.count_params()), infer, card.deskew, card.name)


def load_predictor(model_path: Path, engine: str = "auto", threads: int = 0) -> Predictor:
    """Load the model for this process (call once, after any fork)."""
    predictor = Predictor.load(model_path, engine, threads)
    log.info("model %s %s loaded from %s: %s engine on %s%s", predictor.name, predictor.version, model_path,
             predictor.engine, predictor.device, ", deskewed input" if predictor.deskew else "")
    return predictor
