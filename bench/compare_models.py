"""Compare trained digit models on MNIST test, the user-style and the other-writers uploads; prints Markdown tables.

    python -m bench.compare_models [--models models/mnist_model.h5 models/mnist_model_strong.h5]
                                   [--user-style 2000] [--seed 2024]
                                   [--other-writers 2000] [--other-seed 1130]

Every image goes the way an upload does: encoded (PNG for MNIST, evaluation/userstyle.py's renderings
for the user-style set, evaluation/otherwriters.py's low-resolution scans for the other-writers set; all
from the MNIST test split), through ``shared.preprocessing.preprocess``, then ``worker.model.Predictor``
(which applies the model's own input normalisation, e.g. deskewing, from its metadata). The preprocessing
is done once and shared by all models, so they are scored on identical inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluation import otherwriters
from evaluation.userstyle import KINDS, accuracy_by_kind, encode_png, user_style_set
from shared.config import REPO_ROOT, STRONG_MODEL_PATH, quiet_tensorflow_logs
from shared.imaging import ImageRejected
from shared.preprocessing import preprocess
from training.mnist_data import load_idx_dir

log = logging.getLogger("bench.compare_models")

DEFAULT_MODELS = (REPO_ROOT / "models" / "mnist_model.h5", STRONG_MODEL_PATH)
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


def preprocess_all(uploads: Sequence[bytes]) -> np.ndarray:
    """Preprocess every upload; a refused one becomes a NaN image (scored as wrong)."""
    images = np.full((len(uploads), 28, 28), np.nan, np.float32)
    for i, data in enumerate(uploads):
        try:
            images[i] = preprocess(data)
        except ImageRejected as exc:
            log.warning("upload %d refused: %s", i, exc)
    return images


def predict(predictor, images: np.ndarray) -> np.ndarray:
    """Predicted digits for (N, 28, 28) images in batches of 512; NaN (refused) images get -1."""
    rejected = np.isnan(images).any(axis=(1, 2))
    batch = np.nan_to_num(images)
    digits = np.concatenate([predictor.predict(batch[i:i + 512]).argmax(axis=1) for i in range(0, len(batch), 512)])
    return np.where(rejected, -1, digits)


def _metadata(path: Path) -> dict:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_models", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", default=list(DEFAULT_MODELS), help="model .h5 files")
    parser.add_argument("--user-style", type=int, default=2000, help="size of the user-style set (default 2000)")
    parser.add_argument("--seed", type=int, default=2024, help="user-style seed (default 2024)")
    parser.add_argument("--other-writers", type=int, default=otherwriters.DEFAULT_SIZE,
                        help=f"size of the other-writers set (default {otherwriters.DEFAULT_SIZE})")
    parser.add_argument("--other-seed", type=int, default=otherwriters.DEFAULT_SEED,
                        help=f"other-writers seed (default {otherwriters.DEFAULT_SEED})")
    parser.add_argument("--mnist", type=Path, default=MNIST_DIR, help=f"MNIST IDX directory (default {MNIST_DIR})")
    return parser.parse_args(argv)


def _kind_table(title: str, kinds: Sequence[str], rows: list[tuple], column: int) -> None:
    """Per-kind accuracy, one column per model; ``column`` picks the set's scores from each row."""
    print(f"\n{title} accuracy by kind:\n")
    print("| kind | " + " | ".join(row[0].name for row in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for kind in (*kinds, "all"):
        print(f"| {kind} | " + " | ".join(f"{row[column].get(kind, float('nan')):.3f}" for row in rows) + " |")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()

    missing = [str(p) for p in args.models if not p.exists()]
    if missing:
        print(f"model file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2

    mnist = load_idx_dir(args.mnist)
    started = time.perf_counter()
    mnist_images = preprocess_all([encode_png(d) for d in mnist.x_test])
    user = user_style_set(mnist.x_test, mnist.y_test, args.user_style, seed=args.seed)
    user_images = preprocess_all([data for data, _, _ in user])
    other = otherwriters.other_writers_set(mnist.x_test, mnist.y_test, args.other_writers, seed=args.other_seed)
    other_images = preprocess_all([data for data, _, _ in other])
    prep_s = time.perf_counter() - started

    from worker.model import Predictor

    rows = []
    for path in args.models:
        predictor = Predictor.load(path)
        t0 = time.perf_counter()
        mnist_acc = float(np.mean(predict(predictor, mnist_images) == mnist.y_test))
        infer_ms = (time.perf_counter() - t0) * 1000 / len(mnist_images)
        user_scores = accuracy_by_kind([lb for _, lb, _ in user], [k for _, _, k in user],
                                       predict(predictor, user_images))
        other_scores = accuracy_by_kind([lb for _, lb, _ in other], [k for _, _, k in other],
                                                     predict(predictor, other_images))
        rows.append((path, predictor, _metadata(path), mnist_acc, user_scores, other_scores, infer_ms))

    print(f"MNIST test: {len(mnist_images)} digits as PNG uploads; user-style: {args.user_style} uploads, "
          f"seed {args.seed}; other writers: {args.other_writers} uploads, seed {args.other_seed}; "
          f"all through shared.preprocessing.preprocess ({prep_s:.0f} s, shared by all models).\n")
    print("| model | version | architecture | params | trained (s) | MNIST test | user-style | other writers "
          "| ms/image (batched) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for path, predictor, meta, mnist_acc, user_scores, other_scores, infer_ms in rows:
        print(f"| {path.name} | {predictor.version} | {meta.get('architecture', '?')} | "
              f"{meta.get('parameters', '?')} | {meta.get('train_seconds', '')} | {mnist_acc:.4f} | "
              f"{user_scores['all']:.4f} | {other_scores['all']:.4f} | {infer_ms:.3f} |")
    _kind_table("User-style", KINDS, rows, 4)
    _kind_table("Other-writers", otherwriters.KINDS, rows, 5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
