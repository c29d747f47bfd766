"""Digits rendered from fonts: the committed glyphs, their split by design, and the copies trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ImageFont

from training import fonts


def test_the_committed_glyphs_hold_ten_digits_per_font_and_split_whole_designs() -> None:
    glyphs, families, evaluation = fonts.load_font_digits()
    assert glyphs.shape[1:] == (10, fonts.GLYPH_SIDE, fonts.GLYPH_SIDE) and glyphs.dtype == np.uint8
    assert len(families) == len(evaluation) == len(glyphs) >= 100
    assert all(glyphs[i, d].max() > 128 for i in range(len(glyphs)) for d in range(10))
    sides: dict[str, set[bool]] = {}
    for family, held in zip(families, evaluation, strict=True):
        sides.setdefault(str(family).split()[0], set()).add(bool(held))
    assert all(len(side) == 1 for side in sides.values())  # no design on both sides
    held_out = sum(True in side for side in sides.values()) / len(sides)
    assert 0.1 < held_out < 0.35


def test_a_font_renders_each_digit_fitted_and_a_file_that_is_no_font_renders_nothing(tmp_path: Path) -> None:
    font = ImageFont.load_default(fonts._RENDER_SIZE)
    seven = fonts.render_digit(font, 7)
    assert seven is not None and seven.shape == (fonts.GLYPH_SIDE, fonts.GLYPH_SIDE)
    rows, cols = np.nonzero(seven)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 == fonts._FIT
    (tmp_path / "not-a-font.ttf").write_bytes(b"nothing")
    assert fonts.render_font(tmp_path / "not-a-font.ttf") is None


def test_a_glyph_becomes_an_mnist_digit_centred_by_its_mass() -> None:
    glyphs, _, _ = fonts.load_font_digits()
    digit = fonts.as_mnist(glyphs[0, 4], np.random.default_rng(0))
    assert digit.shape == (28, 28) and digit.min() >= 0 and digit.max() <= 1
    rows, cols = np.nonzero(digit > 0.1)
    assert max(np.ptp(rows), np.ptp(cols)) <= 22
    ys, xs = np.mgrid[:28, :28]
    centre = ((digit * ys).sum() / digit.sum(), (digit * xs).sum() / digit.sum())
    assert np.allclose(centre, 13.5, atol=1.0)


def test_copies_come_from_the_training_families_only_and_are_served_like_uploads(tmp_path: Path) -> None:
    font = ImageFont.load_default(fonts._RENDER_SIZE)
    drawn = np.stack([fonts.render_digit(font, d) for d in range(10)])
    path = tmp_path / "glyphs.npz"
    np.savez_compressed(path, glyphs=np.stack([drawn, np.zeros_like(drawn)]), fonts=np.array(["a.ttf", "b.ttf"]),
                        families=np.array(["Trained", "Held"]), evaluation=np.array([False, True]))

    x, y = fonts.font_copies(seed=1, per_family=2, path=path)

    assert len(x) == len(y) == 20  # two of each digit, all from the trained family (the held one is blank)
    assert sorted(y.tolist()) == sorted(list(range(10)) * 2)
    assert x.shape == (20, 28, 28) and x.min() >= 0 and x.max() <= 1  # the workers' 28x28 digits, ink 0-1
    assert all(copy.max() > 0.5 for copy in x)
