"""GPU check: does Keras' backend see a GPU, does the .h5 model load there, and how fast is batched inference.

    python -m bench.gpu_check [--model models/mnist_model.h5] [--batch-sizes 1,128,1024,8192]

Runs on the TensorFlow backend (what the workers use) or, with KERAS_BACKEND=jax, on JAX: the same .h5,
the same compiled batched call, measured on every GPU the backend sees and on the CPU, with a check that
the GPU's probabilities match the CPU's.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.gpu_check")

Infer = Callable[[np.ndarray], np.ndarray]


def _tensorflow_devices(model_path: Path) -> dict[str, Infer]:
    import keras
    import tensorflow as tf

    names = [f"/GPU:{i}" for i, _ in enumerate(tf.config.list_physical_devices("GPU"))] + ["/CPU:0"]
    fns: dict[str, Infer] = {}
    for name in names:
        with tf.device(name):
            model = keras.models.load_model(model_path, compile=False)
            fn = tf.function(lambda x, m=model: m(x, training=False),
                             input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])

        def infer(x: np.ndarray, fn: Any = fn, name: str = name) -> np.ndarray:
            with tf.device(name):
                return fn(tf.constant(x)).numpy()  # .numpy() waits for the device to finish

        fns[name] = infer
    return fns


def _jax_devices(model_path: Path) -> dict[str, Infer]:
    import jax
    import keras

    model = keras.models.load_model(model_path, compile=False)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    call = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    fns: dict[str, Infer] = {}
    for device in [d for d in jax.devices() if d.platform != "cpu"] + jax.devices("cpu")[:1]:
        tv, ntv = jax.device_put(trainable, device), jax.device_put(frozen, device)

        def infer(x: np.ndarray, tv: Any = tv, ntv: Any = ntv, device: Any = device) -> np.ndarray:
            return np.asarray(call(tv, ntv, jax.device_put(x, device)))  # np.asarray waits for the result

        fns[f"{device.platform}:{device.id}"] = infer
    return fns


def measure(infer: Infer, batch: int, seconds: float) -> dict[str, float]:
    """Images per second and milliseconds per call for one batch size (after a warm-up call)."""
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    infer(x)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
        infer(x)
        calls += 1
    return {"batch": batch, "ms_per_call": 1000 * elapsed / calls, "images_per_s": batch * calls / elapsed}


def main(argv: list[str] | None = None) -> int:
    """Print a table (and optionally JSON) of batched inference speed per device."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/mnist_model.h5"))
    parser.add_argument("--batch-sizes", default="1,32,128,1024,8192")
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per batch size and device")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import keras

    backend = keras.backend.backend()
    fns = _jax_devices(args.model) if backend == "jax" else _tensorflow_devices(args.model)
    gpus = [name for name in fns if "cpu" not in name.lower()]
    log.info("keras %s, backend %s; GPUs seen: %s", keras.__version__, backend, gpus or "none")

    probe = np.random.default_rng(1).random((256, 28, 28, 1), dtype=np.float32)
    reference = fns[next(n for n in fns if "cpu" in n.lower())](probe)
    results: dict[str, Any] = {"backend": backend, "keras": keras.__version__, "gpus": gpus, "devices": {}}
    for name, infer in fns.items():
        diff = float(np.abs(infer(probe) - reference).max())
        rows = [measure(infer, int(b), args.seconds) for b in args.batch_sizes.split(",")]
        results["devices"][name] = {"max_abs_diff_vs_cpu": diff, "rows": rows}
        log.info("%s (max |p - p_cpu| = %.2e)", name, diff)
        for row in rows:
            log.info("  batch %5d: %9.3f ms/call  %12.0f images/s", row["batch"], row["ms_per_call"],
                     row["images_per_s"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
