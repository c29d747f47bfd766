"""Compare trained digit models on MNIST test, user-style, other-writers, styled-writers, held-out-font,
box-filled-scan, styled box-filled and pixelated-scan uploads (the other writers' enlarged by repeating pixels);
prints Markdown tables (overall, per digit on every set, per kind on every set that has kinds).

    python -m bench.compare_models [--models models/mnist_model.h5 models/mnist_model_strong.h5]
                                   [--user-style 2000] [--seed 2024]
                                   [--other-writers 2000] [--other-seed 1130]
                                   [--styled 2000] [--fonts-per-glyph 4] [--filled 2000]

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation import otherwriters, writerstyles
from evaluation.userstyle import accuracy_by_kind, encode_png, user_style_set
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
    parser.add_argument("--styled", type=int, default=2000, help="size of the styled-writers set (default 2000)")
    parser.add_argument("--fonts-per-glyph", type=int, default=4,
                        help="captures of each digit of each held-out font (default 4)")
    parser.add_argument("--filled", type=int, default=otherwriters.DEFAULT_SIZE,
                        help=f"size of the box-filled-scans set (default {otherwriters.DEFAULT_SIZE})")
    parser.add_argument("--mnist", type=Path, default=MNIST_DIR, help=f"MNIST IDX directory (default {MNIST_DIR})")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set, preprocessed once for every model."""

    name: str
    images: np.ndarray  # (N, 28, 28), NaN where preprocessing refused the upload
    labels: np.ndarray
    kinds: tuple[str, ...] = ()  # per upload, where the set has kinds


def _uploads_set(name: str, uploads: Sequence[tuple[bytes, int, str]]) -> EvalSet:
    return EvalSet(name, preprocess_all([data for data, _, _ in uploads]), np.array([lb for _, lb, _ in uploads]),
                   tuple(kind for _, _, kind in uploads))


def evaluation_sets(args: argparse.Namespace, mnist) -> list[EvalSet]:
    """MNIST test (as PNG uploads), user-style, other writers, styled writers, held-out fonts, box-filled scans,
    styled box-filled and pixelated scans."""
    return [
        EvalSet("MNIST test", preprocess_all([encode_png(d) for d in mnist.x_test]), np.asarray(mnist.y_test)),
        _uploads_set("user-style", user_style_set(mnist.x_test, mnist.y_test, args.user_style, seed=args.seed)),
        _uploads_set("other writers", otherwriters.other_writers_set(mnist.x_test, mnist.y_test, args.other_writers,
                                                                     seed=args.other_seed)),
        _uploads_set("styled writers", writerstyles.styled_set(mnist.x_test, mnist.y_test, args.styled)),
        _uploads_set("held-out fonts", writerstyles.font_set(args.fonts_per_glyph)),
        _uploads_set("box-filled scans", otherwriters.box_filled_set(mnist.x_test, mnist.y_test, args.filled)),
        _uploads_set("styled box-filled", writerstyles.styled_set(mnist.x_test, mnist.y_test, args.styled, fill=True)),
        _uploads_set("pixelated scans", otherwriters.pixelated_set(mnist.x_test, mnist.y_test, args.other_writers,
                                                                   seed=args.other_seed)),
    ]


def _kind_table(title: str, kinds: Sequence[str], rows: list[tuple], column: int) -> None:
    """Per-kind accuracy, one column per model; ``column`` picks the set's scores from each row."""
    print(f"\n{title} accuracy by kind:\n")
    print("| kind | " + " | ".join(row[0].name for row in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for kind in (*kinds, "all"):
        print(f"| {kind} | " + " | ".join(f"{row[column].get(kind, float('nan')):.3f}" for row in rows) + " |")


def per_class(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy on each digit 0-9 (as "0".."9") and on all: the figures the per-class tables report."""
    out = {str(d): float(np.mean(predicted[labels == d] == d)) for d in range(10) if (labels == d).any()}
    out["all"] = float(np.mean(predicted == labels))
    return out


def _class_table(sets: list[EvalSet], rows: list[tuple]) -> None:
    """Per-class accuracy on every set: one row per model and set, one column per digit."""
    print("\nAccuracy per digit:\n")
    print("| set | model | " + " | ".join(str(d) for d in range(10)) + " | all |")
    print("|---|---|" + "---:|" * 11)
    for i, evaluation in enumerate(sets):
        for row in rows:
            scores = per_class(evaluation.labels, row[3][i])
            cells = " | ".join(f"{scores.get(str(d), float('nan')):.3f}" for d in range(10))
            print(f"| {evaluation.name} | {row[0].name} | {cells} | {scores['all']:.4f} |")


def main(argv: list[str] | None = None) -> int:
    """Score every model on every set; print the tables."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()

    missing = [str(p) for p in args.models if not p.exists()]
    if missing:
        print(f"model file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    sets = evaluation_sets(args, load_idx_dir(args.mnist))
    prep_s = time.perf_counter() - started

    from worker.model import Predictor

    rows = []
    for path in args.models:
        predictor = Predictor.load(path)
        t0 = time.perf_counter()
        predicted = [predict(predictor, evaluation.images) for evaluation in sets]
        infer_ms = (time.perf_counter() - t0) * 1000 / sum(len(e.images) for e in sets)
        rows.append((path, predictor, _metadata(path), predicted, infer_ms))
    _print_tables(args, sets, rows, prep_s)
    return 0


def _print_tables(args: argparse.Namespace, sets: list[EvalSet], rows: list[tuple], prep_s: float) -> None:
    print(f"Sets: {', '.join(f'{e.name} {len(e.images)}' for e in sets)} (user-style seed {args.seed}, other "
          f"writers seed {args.other_seed}); all through shared.preprocessing.preprocess ({prep_s:.0f} s, shared "
          f"by all models).\n")
    print("| model | version | architecture | params | trained (s) | " + " | ".join(e.name for e in sets)
          + " | ms/image (batched) |")
    print("|---|---|---|---:|---:|" + "---:|" * len(sets) + "---:|")
    for path, predictor, meta, predicted, infer_ms in rows:
        scores = " | ".join(f"{np.mean(p == e.labels):.4f}" for p, e in zip(predicted, sets, strict=True))
        print(f"| {path.name} | {predictor.version} | {meta.get('architecture', '?')} | "
              f"{meta.get('parameters', '?')} | {meta.get('train_seconds', '')} | {scores} | {infer_ms:.3f} |")
    _class_table(sets, rows)
    for i, evaluation in enumerate(sets):
        if not evaluation.kinds:
            continue
        kinds = tuple(dict.fromkeys(evaluation.kinds))  # the sets cycle through their kinds: in that order
        kind_rows = [(row[0], accuracy_by_kind(list(evaluation.labels), list(evaluation.kinds), row[3][i]))
                     for row in rows]
        _kind_table(evaluation.name, kinds, kind_rows, 1)


if __name__ == "__main__":
    raise SystemExit(main())
