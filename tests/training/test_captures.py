"""Degraded copies for training: deterministic for a seed, labels kept with their digits, read as workers read."""

from __future__ import annotations

import numpy as np

from shared.preprocessing import is_mnist_form
from tests.helpers import slanted_stroke
from training import captures


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Strokes of different slants, as stand-in digits, and made-up labels."""
    return np.stack([slanted_stroke(s) for s in np.linspace(-0.4, 0.4, n)]), np.arange(n) % 10


def test_a_degraded_copy_is_a_digit_in_range_with_its_ink_level_kept() -> None:
    rng = np.random.default_rng(0)
    for image in _digits(12)[0]:
        copy = captures.degrade(image, rng)
        assert copy.shape == (28, 28) and copy.dtype == np.float32
        assert copy.min() >= 0 and copy.max() == 1.0


def test_copies_are_served_like_uploads_and_follow_their_labels() -> None:
    x, y = _digits(40)
    copies, labels = captures.served_copies(x, y, seed=3)
    assert 0 < len(copies) <= 40 and len(labels) == len(copies)
    assert all(is_mnist_form(copy) for copy in copies)  # what the workers' preprocessing makes
    assert set(labels.tolist()) <= set(y.tolist())


def test_the_copies_are_the_same_for_a_seed_and_differ_for_another() -> None:
    x, y = _digits(20)
    first, again, other = (captures.served_copies(x, y, seed)[0] for seed in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_filled_scan_stretches_a_narrow_digit_to_fill_mnists_box() -> None:
    one = np.zeros((28, 28), np.float32)
    one[4:24, 13:16] = 1.0  # a plain 1: 20 px tall, 3 wide
    for levels in (2, 16):
        scan = captures._filled_scan(one, 12, levels)
        rows, cols = np.flatnonzero(scan.max(axis=1) > 0.5), np.flatnonzero(scan.max(axis=0) > 0.5)
        assert (rows[0], rows[-1], cols[0], cols[-1]) == (4, 23, 4, 23)  # as wide as it is tall: proportions lost
        assert scan.shape == (28, 28) and 0.99 <= scan.max() <= 1.0
