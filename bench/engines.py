"""Compare the inference engines a worker can run a model on: memory, time to ready, speed, agreement with Keras.

    python -m bench.engines [--models models/mnist_model.h5 models/mnist_model_strong.h5]
                            [--engines onnx tensorflow] [--seconds 1.5]

Each (model, engine) pair runs in a fresh process, as a worker would load it: RSS after the load and at its
peak under load (before the test data is read), seconds from the start of the imports to a warmed-up model,
images/s on one thread at batch sizes 1, 32 and 128, and the largest difference in probabilities from Keras
on the 10,000 MNIST test images (fed to both as the model expects them, deskewed where its metadata says so).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import REPO_ROOT, STRONG_MODEL_PATH

log = logging.getLogger("bench.engines")

DEFAULT_MODELS = (REPO_ROOT / "models" / "mnist_model.h5", STRONG_MODEL_PATH)
ENGINES = ("onnx", "tensorflow")
BATCH_SIZES = (1, 32, 128)
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


def _rss_mb(field: str) -> float:
    """This process's VmRSS or VmHWM (peak) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(model: Path, engine: str) -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """The engine's batched call over (N, 28, 28) images, without the model's input normalisation, and that flag."""
    import dataclasses

    from worker.model import Predictor

    predictor = Predictor.load(model, engine, threads=1)
    return dataclasses.replace(predictor, deskew=False).predict, predictor.deskew


def _rate(call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second through ``call`` at one batch size, for about ``seconds``."""
    x = images[:batch]
    call(x)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call(x)
        done += batch
    return done / (time.perf_counter() - started)


def measure_one(model: Path, engine: str, seconds: float) -> dict[str, Any]:
    """Everything the table shows for one (model, engine), measured in this process (call it in a fresh one)."""
    started = time.perf_counter()
    call, deskewed = _load(model, engine)
    ready_s = time.perf_counter() - started
    rss_loaded = _rss_mb("VmRSS")
    # Speed and memory under load on random digits (the cost of a call does not depend on the pixels), before
    # MNIST and Keras are loaded for the comparison below and take memory of their own.
    noise = np.random.default_rng(0).random((max(BATCH_SIZES), 28, 28), dtype=np.float32)
    rates = {str(b): round(_rate(call, noise, b, seconds)) for b in BATCH_SIZES}
    rss_peak = _rss_mb("VmHWM")
    from shared.deskew import deskew
    from training.mnist_data import load_idx_dir

    x = load_idx_dir(MNIST_DIR).x_test.astype(np.float32) / 255
    if deskewed:
        x = deskew(x)
    ours = np.concatenate([call(x[i:i + 128]) for i in range(0, len(x), 128)])
    import keras

    theirs = keras.models.load_model(model, compile=False).predict(x[..., None], batch_size=500, verbose=0)
    return {"model": model.name, "engine": engine, "ready_s": round(ready_s, 2), "rss_loaded_mb": round(rss_loaded),
            "rss_peak_mb": round(rss_peak), "images_per_s": rates,
            "max_abs_diff": float(np.abs(ours - theirs).max()),
            "same_digits": float((ours.argmax(1) == theirs.argmax(1)).mean())}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | engine | ready (s) | RSS loaded (MB) | RSS peak (MB) | "
             + " | ".join(f"images/s batch {b}" for b in BATCH_SIZES) + " | max diff from Keras | same digit |",
             "|---|---|---:|---:|---:|" + "---:|" * len(BATCH_SIZES) + "---:|---:|"]
    for r in rows:
        rates = " | ".join(f"{r['images_per_s'][str(b)]:,}" for b in BATCH_SIZES)
        lines.append(f"| {r['model']} | {r['engine']} | {r['ready_s']} | {r['rss_loaded_mb']} | {r['rss_peak_mb']} | "
                     f"{rates} | {r['max_abs_diff']:.1e} | {r['same_digits']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", default=[m for m in DEFAULT_MODELS if m.exists()])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per batch size")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "ENGINE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.one:
        print(json.dumps(measure_one(Path(args.one[0]), args.one[1], args.seconds)))
        return 0
    rows = []
    for model in args.models:
        for engine in args.engines:
            out = subprocess.run([sys.executable, "-m", "bench.engines", "--one", str(model), engine,
                                  "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            log.warning("measured %s on %s", model.name, engine)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
