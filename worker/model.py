"""The digit model, loaded once per worker process and called through one batched function.

On a CPU every model runs on ONNX Runtime, from the ONNX form training derives from the .h5 (shared/model_files.py):
no TensorFlow in the worker, which was most of its memory and start time. TensorFlow runs the .h5 on a GPU.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import quiet_tensorflow_logs
from shared.deskew import deskew
from shared.model_files import onnx_beside, open_onnx, sha256_of, source_of
from worker.metrics import INFERENCE

log = logging.getLogger(__name__)

INPUT_SHAPE = (28, 28)
GPU_DEVICE = Path("/dev/nvidiactl")  # present where NVIDIA's driver is: the host may have a GPU for TensorFlow
CONVERT_TIMEOUT_SECONDS = 300


class ModelUnavailable(RuntimeError):
    """The model's files cannot be served as they are: no ONNX form matches the .h5, or its metadata does not."""


@dataclass(frozen=True)
class ModelCard:
    """What the files beside a model say about it that serving needs: its hash, version and input normalisation."""

    version: str
    sha256: str  # of the .h5: the ONNX form served must record the same
    deskew: bool = False  # trained on deskewed digits (shared/deskew.py): it must be served them too
    name: str = "unnamed"  # its architecture (metadata "architecture"), shown with each answer

    @classmethod
    def of(cls, model_path: Path) -> ModelCard:
        """The card from the model's .json; without one (or unreadable), a hash of the file and MNIST's plain input.

        ModelUnavailable if the .json names another .h5 (a rollout is replacing the files): try again.
        """
        digest = sha256_of(model_path)
        meta = model_path.with_suffix(".json")
        try:
            data = json.loads(meta.read_text()) if meta.exists() else {}
        except (OSError, ValueError):
            log.warning("unreadable model metadata %s; hashing the model file instead", meta)
            data = {}
        if data.get("sha256") not in (None, digest):
            raise ModelUnavailable(f"{meta} describes another model than {model_path} (being replaced?)")
        version = str(data.get("model_version") or digest[:16])
        return cls(version, digest, bool(data.get("deskew", False)), str(data.get("architecture") or "unnamed"))


ENGINES = ("auto", "onnx", "tensorflow")
# How long a worker waits for a rollout that is replacing the model's files to finish before it gives up.
REPLACING_WAIT_SECONDS = 10.0
Converter = Callable[[Path, Path], None]  # (the .h5, where to write its ONNX form)


@dataclass
class Predictor:
    """A loaded model behind one batched call (an ONNX Runtime session, or a traced TensorFlow function)."""

    version: str
    device: str
    engine: str
    _fn: Callable[[np.ndarray], Any]
    deskew: bool = False  # the model's input normalisation (ModelCard): applied to every batch before the call
    name: str = "unnamed"  # the model's architecture (ModelCard)

    @classmethod
    def load(cls, model_path: Path, engine: str = "auto", threads: int = 0, cache_dir: Path | None = None,
             convert: Converter | None = None) -> Predictor:
        """Load the model with the engine asked for (auto: ONNX Runtime on a CPU, TensorFlow where a GPU is),
        and call it once so the first upload does not pay for the warm-up."""
        if engine not in ENGINES:
            raise ValueError(f"unknown inference engine {engine!r}; expected one of {ENGINES}")
        card = _card_when_settled(model_path)
        if engine == "tensorflow" or (engine == "auto" and GPU_DEVICE.exists()):
            predictor = _tensorflow_predictor(model_path, card, threads)
        else:
            session = find_onnx(model_path, card.sha256, cache_dir or model_path.parent,
                                convert or convert_in_subprocess, threads)
            predictor = cls(card.version, "/CPU:0", "onnx", _batched(session), card.deskew, card.name)
        predictor.predict(np.zeros((1, *INPUT_SHAPE), np.float32))
        return predictor

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) for a batch of preprocessed images (N, 28, 28) scaled to [0, 1]."""
        x = np.asarray(batch, dtype=np.float32).reshape(-1, *INPUT_SHAPE)
        if self.deskew:  # the model's input normalisation, outside the timer: the histogram is the model call
            x = deskew(x)
        with INFERENCE.time():
            return np.asarray(self._fn(x[..., np.newaxis]))


def _card_when_settled(model_path: Path) -> ModelCard:
    """The model's card, waiting out a rollout that is replacing its files (they name each other's hash)."""
    deadline = time.monotonic() + REPLACING_WAIT_SECONDS
    while True:
        try:
            return ModelCard.of(model_path)
        except ModelUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def find_onnx(model_path: Path, digest: str, cache_dir: Path, convert: Converter, threads: int = 0) -> Any:
    """The serving session of an ONNX form made from exactly this .h5 (beside it, or cached by its hash; else
    converted): each file is read and opened once, and the session that showed its hash is the one served."""
    cached = cache_dir / f"{digest}.onnx"
    for candidate in (onnx_beside(model_path), cached):
        if not candidate.exists():
            continue
        session = open_onnx(candidate.read_bytes(), _session_options(threads))
        if source_of(session) == digest:
            return session
        log.warning("%s was made from another model (sha256 %s, not %s): not served", candidate,
                    source_of(session), digest)
    log.info("no ONNX form of %s yet: converting it into %s", model_path, cached)
    convert(model_path, cached)
    session = open_onnx(cached.read_bytes(), _session_options(threads)) if cached.exists() else None
    if source_of(session) != digest:
        raise ModelUnavailable(f"converting {model_path} gave no ONNX form that records its hash")
    return session


def convert_in_subprocess(model_path: Path, target: Path) -> None:
    """Derive the ONNX form of a .h5 in a short-lived process (it needs TensorFlow; the worker never imports it)."""
    command = [sys.executable, "-m", "training.onnx_export", str(model_path), "--output", str(target)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()[-1:]
        raise ModelUnavailable(
            f"no ONNX form of {model_path} records its hash, and converting it failed ({' '.join(detail)}): "
            f"run `python -m training.onnx_export {model_path}` where TensorFlow is installed") from exc


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread unless asked: a worker's batches are small, and the cores serve the rest of the stack.
    options.intra_op_num_threads = threads if threads > 0 else 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads must not spin: they would take CPU from the web, MySQL and the other batch runner.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _batched(session: Any) -> Callable[[np.ndarray], Any]:
    """An ONNX Runtime session as one batched call."""
    input_name = session.get_inputs()[0].name
    output_names = [session.get_outputs()[0].name]

    def run(x: np.ndarray) -> Any:
        return session.run(output_names, {input_name: x})[0]

    return run


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

    return Predictor(card.version, device, "tensorflow", infer, card.deskew, card.name)


def load_predictor(model_path: Path, engine: str = "auto", threads: int = 0,
                   cache_dir: Path | None = None) -> Predictor:
    """Load the model for this process (call once, after any fork)."""
    predictor = Predictor.load(model_path, engine, threads, cache_dir)
    log.info("model %s %s loaded from %s: %s engine on %s%s", predictor.name, predictor.version, model_path,
             predictor.engine, predictor.device, ", deskewed input" if predictor.deskew else "")
    return predictor
