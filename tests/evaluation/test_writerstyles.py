"""evaluation/writerstyles.py: the styled-writers and held-out-font proxies, and the per-digit scores of every set.

Fast and without services: the styled set's digits are synthetic strokes (the generator treats MNIST's alike).
"""

from __future__ import annotations

import numpy as np

from bench.compare_models import per_class
from evaluation import writerstyles
from evaluation.otherwriters import KINDS
from tests.evaluation.test_otherwriters import X, Y
from training.fonts import load_font_digits


def test_the_styled_set_is_the_same_for_a_seed_keeps_labels_and_restyles_only_1_4_7_and_9():
    first = writerstyles.styled_set(X, Y, 12, seed=3)
    assert first == writerstyles.styled_set(X, Y, 12, seed=3)
    assert first != writerstyles.styled_set(X, Y, 12, seed=4)
    assert sorted(label for _, label, _ in first) == sorted(Y.tolist())
    assert [kind for _, _, kind in first] == [KINDS[i % len(KINDS)] for i in range(12)]


def test_the_styled_set_box_filled_is_the_same_digits_scanned_another_way():
    plain, filled = writerstyles.styled_set(X, Y, 12, seed=3), writerstyles.styled_set(X, Y, 12, seed=3, fill=True)
    assert [upload[1:] for upload in filled] == [upload[1:] for upload in plain]  # same labels and kinds, in order
    assert all(a[0] != b[0] for a, b in zip(filled, plain, strict=True))
    assert filled == writerstyles.styled_set(X, Y, 12, seed=3, fill=True)


def test_the_font_set_draws_every_digit_of_every_held_out_font_and_none_other():
    _, families, evaluation = load_font_digits()
    uploads = writerstyles.font_set(per_glyph=1)
    assert len(uploads) == 10 * int(evaluation.sum())
    assert [label for _, label, _ in uploads[:10]] == list(range(10))
    assert all(data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb") for data, _, _ in uploads)


def test_per_class_scores_each_digit_and_all():
    labels = np.array([0, 0, 1, 1, 1, 7])
    predicted = np.array([0, 3, 1, 1, 4, 7])
    scores = per_class(labels, predicted)
    assert scores == {"0": 0.5, "1": 2 / 3, "7": 1.0, "all": 4 / 6}
