"""The digit model, loaded once per worker process and called through one compiled function."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import quiet_tensorflow_logs
from worker.metrics import INFERENCE

log = logging.getLogger(__name__)

INPUT_SHAPE = (28, 28)


def model_version_of(model_path: Path) -> str:
    """The model's version: from its metadata file when there is one, else a hash of the weights file."""
    meta = model_path.with_suffix(".json")
    if meta.exists():
        try:
            version = json.loads(meta.read_text()).get("model_version")
            if version:
                return str(version)
        except (OSError, ValueError):
            log.warning("unreadable model metadata %s; hashing the model file instead", meta)
    return hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]


@dataclass
class Predictor:
    """A loaded Keras model with a traced inference function: one call per batch, no `model.predict`."""

    model: Any
    version: str
    device: str
    _fn: Any

    @classmethod
    def load(cls, model_path: Path) -> Predictor:
        """Load the .h5 model, pick GPU if TensorFlow sees one, and trace the batched call once."""
        # TensorFlow is imported here, never at module import: the Celery parent process must not
        # initialise it before forking its children (TF's thread pools do not survive fork).
        import keras
        import tensorflow as tf

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

        predictor = cls(model=model, version=model_version_of(model_path), device=device, _fn=infer)
        predictor.predict(np.zeros((1, *INPUT_SHAPE), np.float32))  # warm up: trace now, not on the first upload
        return predictor

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for a batch of preprocessed images (N, 28, 28) scaled to [0, 1]."""
        x = np.asarray(batch, dtype=np.float32).reshape(-1, *INPUT_SHAPE, 1)
        with INFERENCE.time():
            return np.asarray(self._fn(x))


def load_predictor(model_path: Path, threads: int = 0) -> Predictor:
    """Configure TensorFlow's thread pools for this process, then load the model (call once, after fork)."""
    quiet_tensorflow_logs()
    import tensorflow as tf

    if threads > 0:
        # Several worker processes share the cores: cap each one's pool so they do not oversubscribe.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    predictor = Predictor.load(model_path)
    log.info("model %s loaded from %s on %s", predictor.version, model_path, predictor.device)
    return predictor
