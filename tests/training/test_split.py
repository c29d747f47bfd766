"""The held-out validation split: drawn from the training images only, by a fixed seed, the same for every run."""

from __future__ import annotations

import numpy as np

from training.fit import VALIDATION_FRACTION, split_validation


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1) * np.ones((1, 28, 28), np.float32)
    return x, np.arange(n) % 10


def test_a_twelfth_is_held_out_and_nothing_is_in_both_parts() -> None:
    x, y = _images(60_000)
    x_train, y_train, x_val, y_val = split_validation(x, y)
    assert (len(x_train), len(x_val)) == (55_000, 5_000) and round(60_000 * VALIDATION_FRACTION) == 5_000
    train_ids, val_ids = set(x_train[:, 0, 0].tolist()), set(x_val[:, 0, 0].tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 60_000
    # Labels stay with their images.
    assert (y_train == x_train[:, 0, 0].astype(int) % 10).all() and (y_val == x_val[:, 0, 0].astype(int) % 10).all()


def test_the_split_is_fixed_and_spread_over_the_whole_split() -> None:
    x, y = _images(6_000)
    first, again = split_validation(x, y)[2], split_validation(x, y)[2]
    np.testing.assert_array_equal(first, again)
    held = np.sort(first[:, 0, 0])
    assert held[0] < 600 and held[-1] > 5_400  # random, not the last images (MNIST's are in writer order)
    assert not np.array_equal(held, split_validation(x, y, seed=1)[2][:, 0, 0])


def test_the_training_part_keeps_its_order() -> None:
    x, y = _images(1_200)
    x_train = split_validation(x, y)[0][:, 0, 0]
    assert (np.diff(x_train) > 0).all()
