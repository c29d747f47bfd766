"""Other writers' styles drawn onto digits, and elastic distortions: each edit adds its stroke where it belongs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training import styles


def _drawn(*lines: list[tuple[float, float]], width: int = 2) -> np.ndarray:
    """A 28x28 digit in [0, 1] drawn with polylines (28 px coordinates) at 4x, then averaged down."""
    layer = Image.new("L", (112, 112), 0)
    pen = ImageDraw.Draw(layer)
    for line in lines:
        pen.line([(x * 4, y * 4) for x, y in line], fill=255, width=width * 4, joint="curve")
    return np.asarray(layer.resize((28, 28), Image.Resampling.BOX), np.float32) / 255


ONE = _drawn([(14, 4), (14, 24)])
OPEN_FOUR = _drawn([(9, 4), (9, 16), (20, 16)], [(17, 6), (17, 24)])
SEVEN = _drawn([(8, 4), (20, 4), (12, 24)])
NINE = _drawn([(18, 9), (14, 5), (10, 9), (14, 13), (18, 9), (17, 24)])


def _ink(image: np.ndarray, rows: slice, cols: slice) -> float:
    return float(image[rows, cols].sum())


def test_a_flagged_one_gets_ink_left_of_its_top_and_keeps_its_stem() -> None:
    out = styles.flag_one(ONE, np.random.default_rng(1))
    assert out.shape == (28, 28) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert _ink(out, slice(4, 16), slice(0, 12)) > _ink(ONE, slice(4, 16), slice(0, 12)) + 2  # the flag
    assert np.all(out >= ONE - 1e-6)  # drawn over, nothing erased


def test_a_closed_four_joins_its_stem_top_to_its_crossbar_and_drops_the_open_arm() -> None:
    out = styles.close_four(OPEN_FOUR, np.random.default_rng(2))
    assert not np.array_equal(out, OPEN_FOUR)
    assert _ink(out, slice(0, 8), slice(5, 11)) < _ink(OPEN_FOUR, slice(0, 8), slice(5, 11))  # arm's top gone
    assert _ink(out, slice(9, 13), slice(11, 16)) > _ink(OPEN_FOUR, slice(9, 13), slice(11, 16)) + 1  # diagonal


def test_a_closed_four_whose_crossbar_stopped_at_the_stem_gets_it_carried_past_the_stem() -> None:
    stopped = _drawn([(9, 4), (9, 16), (17, 16)], [(17, 6), (17, 24)])
    right_of_stem = (slice(14, 19), slice(19, 28))
    out = styles.close_four(stopped, np.random.default_rng(2))
    assert _ink(out, *right_of_stem) > _ink(stopped, *right_of_stem) + 1  # unlike a 9's loop, a 4's bar goes on
    # A crossbar that already goes on past the stem is left as it was there.
    crossed = styles.close_four(OPEN_FOUR, np.random.default_rng(2))
    assert _ink(crossed, slice(14, 19), slice(22, 28)) == pytest.approx(_ink(OPEN_FOUR, slice(14, 19), slice(22, 28)))


def test_a_crossed_seven_gets_a_bar_half_way_down_its_stem() -> None:
    out = styles.cross_seven(SEVEN, np.random.default_rng(3))
    band = slice(11, 19)
    assert _ink(out, band, slice(0, 28)) > _ink(SEVEN, band, slice(0, 28)) + 3
    assert _ink(out, slice(0, 8), slice(0, 28)) == pytest.approx(_ink(SEVEN, slice(0, 8), slice(0, 28)), abs=0.5)


def test_a_curled_nine_gets_a_hook_left_of_its_tail() -> None:
    out = styles.curl_nine(NINE, np.random.default_rng(4))
    assert _ink(out, slice(19, 28), slice(0, 16)) > _ink(NINE, slice(19, 28), slice(0, 16)) + 1


@pytest.mark.parametrize("digit", sorted(styles.STYLE_EDITS))
def test_every_edit_is_the_same_for_a_seed_and_leaves_a_blank_image_alone(digit: int) -> None:
    edit = styles.STYLE_EDITS[digit]
    image = {1: ONE, 4: OPEN_FOUR, 7: SEVEN, 9: NINE}[digit]
    np.testing.assert_array_equal(edit(image, np.random.default_rng(9)), edit(image, np.random.default_rng(9)))
    blank = np.zeros((28, 28), np.float32)
    np.testing.assert_array_equal(edit(blank, np.random.default_rng(9)), blank)


def test_an_elastic_distortion_moves_ink_but_keeps_most_of_it_in_range() -> None:
    out = styles.elastic(NINE, np.random.default_rng(5), alpha=34, sigma=4)
    assert out.shape == NINE.shape and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, NINE)
    assert 0.7 < out.sum() / NINE.sum() < 1.3
