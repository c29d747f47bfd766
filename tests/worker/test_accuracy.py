"""Accuracy of shared.imaging's preprocessing with the real model on real MNIST digits.

Four figures, printed with each run:
* raw MNIST test digits uploaded as PNG: preprocessing must keep the model's own accuracy;
* a seeded set of "user-style" uploads (evaluation/userstyle.py: photos, scans, drawings);
* the same set through a resize-only baseline, to show the set is hard;
* a small fixed part of the "other writers" set (evaluation/otherwriters.py: low-resolution scans with
  slants, proportions and pens of their own, issue #13), enlarged smoothly and by repeating pixels.

The model's error rate is a floor for every figure, so each accuracy is also compared with the
model's accuracy on the very same digits as clean MNIST: the gap is what preprocessing loses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from evaluation import otherwriters
from evaluation.userstyle import KINDS, accuracy_by_kind, encode_png, resize_only, sample_indices, user_style_set
from shared.imaging import ImageRejected
from shared.preprocessing import preprocess

log = logging.getLogger(__name__)

TARGET = 0.98  # accuracy on user-style uploads (and on raw MNIST uploads)
MAX_GAP = 0.01  # what preprocessing may lose against the model's accuracy on the same clean digits
# No kind of upload may collapse. About 180 images each, so +-1.2 points of sampling noise; over
# all 10,000 test digits every kind scores within 0.6 points of the model's clean accuracy.
KIND_FLOOR = 0.93
BASELINE_CEILING = 0.6  # the resize-only baseline must fail on the user-style set
USER_STYLE_N = 2000
USER_STYLE_SEED = 2024
# The first 300 uploads of the other-writers set (python -m bench.compare_models scores all 2,000).
OTHER_WRITERS_N = 300
OTHER_WRITERS_SEED = otherwriters.DEFAULT_SEED
# Measured 2026-11-30 on these 300 with the model `make model` trains (seed CNN, deskewed, with degraded copies;
# 86c5ae24db1eea91): 0.9767 (293/300; the full 2,000: 0.9735). Before deskewing, the copies and the even
# strokes of preprocessing: 0.9267. Threshold: the measured figure less about 2.5 points (300 digits: +-0.9).
OTHER_WRITERS_FLOOR = 0.95
# The same 300 enlarged by repeating pixels may read at most this much worse (measured 2026-12-07 on all 2,000:
# 0.45 points; 6.3 before preprocessing undid the blocks).
PIXELATED_GAP = 0.02


@pytest.fixture(scope="module")
def predictor(trained_model):
    """The real model, loaded once for the module."""
    from worker.model import Predictor

    return Predictor.load(trained_model)


@pytest.fixture(scope="module")
def user_style(mnist) -> list[tuple[bytes, int, str]]:
    """The seeded user-style set drawn from the MNIST test split."""
    return user_style_set(mnist.x_test, mnist.y_test, USER_STYLE_N, USER_STYLE_SEED)


def predict(predictor, images: np.ndarray) -> np.ndarray:
    """Predicted digits for preprocessed (N, 28, 28) images, in model-sized batches; NaN images get -1."""
    rejected = np.isnan(images).any(axis=(1, 2))
    batch = np.nan_to_num(images)
    digits = np.concatenate([predictor.predict(batch[i:i + 512]).argmax(axis=1) for i in range(0, len(batch), 512)])
    return np.where(rejected, -1, digits)  # a refused upload is a wrong answer


def run(fn: Callable[[bytes], np.ndarray], uploads: Sequence[bytes]) -> tuple[np.ndarray, float]:
    """Preprocess every upload (a refused one becomes a NaN image); returns the images and ms per image."""
    images = np.full((len(uploads), 28, 28), np.nan, np.float32)
    start = time.perf_counter()
    for i, data in enumerate(uploads):
        try:
            images[i] = fn(data)
        except ImageRejected as exc:
            log.warning("upload %d refused: %s", i, exc)
    return images, (time.perf_counter() - start) * 1000 / len(uploads)


def report(capsys, line: str) -> None:
    """Show a figure in the test output even when pytest captures it."""
    log.info(line)
    with capsys.disabled():
        print(f"\n    {line}", end="")


def test_raw_mnist_uploads_keep_the_models_accuracy(predictor, mnist, capsys):
    x, y = mnist.x_test, mnist.y_test
    images, ms = run(preprocess, [encode_png(d) for d in x])
    accuracy = float(np.mean(predict(predictor, images) == y))
    direct = float(np.mean(predict(predictor, x.astype(np.float32) / 255) == y))
    first = float(np.mean(predict(predictor, images[:2000]) == y[:2000]))
    report(capsys, f"raw MNIST test set as PNG uploads: {accuracy:.4f} (model on the arrays: {direct:.4f}; "
                   f"first 2000: {first:.4f}) at {ms:.2f} ms/image")
    assert accuracy >= TARGET
    assert accuracy >= direct - 0.003


def test_user_style_uploads_reach_the_target(predictor, mnist, user_style, capsys):
    labels = [label for _, label, _ in user_style]
    kinds = [kind for _, _, kind in user_style]
    images, ms = run(preprocess, [data for data, _, _ in user_style])
    predicted = predict(predictor, images)
    scores = accuracy_by_kind(labels, kinds, predicted)
    clean = mnist.x_test[sample_indices(len(mnist.x_test), USER_STYLE_N, USER_STYLE_SEED)]
    ceiling = float(np.mean(predict(predictor, clean.astype(np.float32) / 255) == np.asarray(labels)))
    per_kind = ", ".join(f"{kind} {scores[kind]:.3f}" for kind in KINDS)
    report(capsys, f"user-style uploads ({USER_STYLE_N}, seed {USER_STYLE_SEED}): {scores['all']:.4f} "
                   f"(same digits as clean MNIST: {ceiling:.4f}) at {ms:.2f} ms/image; {per_kind}")
    assert scores["all"] >= TARGET
    assert scores["all"] >= ceiling - MAX_GAP
    weak = {kind: score for kind, score in scores.items() if score < KIND_FLOOR}
    assert not weak, f"kinds of upload far below target: {weak}"


def test_resize_only_baseline_fails_on_user_style_uploads(predictor, user_style, capsys):
    labels = [label for _, label, _ in user_style]
    kinds = [kind for _, _, kind in user_style]
    images, _ = run(resize_only, [data for data, _, _ in user_style])
    scores = accuracy_by_kind(labels, kinds, predict(predictor, images))
    report(capsys, f"resize-only baseline on the same uploads: {scores['all']:.4f}")
    assert scores["all"] < BASELINE_CEILING


def test_other_writers_uploads_stay_above_the_measured_floor(predictor, mnist, capsys):
    uploads = otherwriters.other_writers_set(mnist.x_test, mnist.y_test, OTHER_WRITERS_N, OTHER_WRITERS_SEED)
    labels = [label for _, label, _ in uploads]
    kinds = [kind for _, _, kind in uploads]
    images, ms = run(preprocess, [data for data, _, _ in uploads])
    scores = accuracy_by_kind(labels, kinds, predict(predictor, images))
    clean = mnist.x_test[otherwriters.other_writers_indices(len(mnist.x_test), OTHER_WRITERS_N, OTHER_WRITERS_SEED)]
    ceiling = float(np.mean(predict(predictor, clean.astype(np.float32) / 255) == np.asarray(labels)))
    per_kind = ", ".join(f"{kind} {scores[kind]:.3f}" for kind in otherwriters.KINDS)
    report(capsys, f"other-writers uploads ({OTHER_WRITERS_N}, seed {OTHER_WRITERS_SEED}): {scores['all']:.4f} "
                   f"(same digits as clean MNIST: {ceiling:.4f}) at {ms:.2f} ms/image; {per_kind}")
    assert scores["all"] >= OTHER_WRITERS_FLOOR


def test_pixelated_scans_read_as_well_as_the_same_scans_enlarged_smoothly(predictor, mnist, capsys):
    """Issue #21: the other writers' scans enlarged by repeating pixels read 6 points worse (0.905 against 0.968 on
    all 2,000) until preprocessing enlarged them smoothly itself (shared/pixelation.py)."""
    smooth = otherwriters.other_writers_set(mnist.x_test, mnist.y_test, OTHER_WRITERS_N, OTHER_WRITERS_SEED)
    blocky = otherwriters.pixelated_set(mnist.x_test, mnist.y_test, OTHER_WRITERS_N, OTHER_WRITERS_SEED)
    labels = np.asarray([label for _, label, _ in smooth])
    scores = [float(np.mean(predict(predictor, run(preprocess, [d for d, _, _ in uploads])[0]) == labels))
              for uploads in (smooth, blocky)]
    report(capsys, f"other-writers uploads ({OTHER_WRITERS_N}) enlarged smoothly: {scores[0]:.4f}, "
                   f"by repeating pixels: {scores[1]:.4f}")
    assert scores[1] >= scores[0] - PIXELATED_GAP
