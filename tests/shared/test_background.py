"""The paper's surface, the ink against it and the noise (shared/background.py)."""

from __future__ import annotations

import numpy as np
import pytest

from shared import background


@pytest.mark.parametrize("shape", [(157, 384), (384, 300), (33, 65), (100, 7), (20, 30)])
def test_the_small_copy_is_the_block_mean(shape: tuple[int, int]) -> None:
    values = np.random.default_rng(shape[0]).random(shape).astype(np.float32)
    factor = -(-max(shape) // 32)
    h, w = shape[0] // factor * factor, shape[1] // factor * factor
    expected = values[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(background.reduce_to(values, 32), expected, atol=1e-6)


def test_a_lighting_gradient_is_fitted_and_the_ink_stands_out() -> None:
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    paper = (0.9 - 0.15 * xx * yy).astype(np.float32)  # darker towards one corner
    page = paper.copy()
    page[10:22, 14:17] = 0.1  # a dark stroke
    fitted = background.fit_background(page, paper=0.9, dark_ink=True)
    ink = background.ink_map(page, fitted, dark_ink=True)
    assert float(np.abs(ink[paper == page]).max()) < 0.05  # the paper, shade and all, is no ink
    assert float(ink[10:22, 14:17].min()) > 0.7
