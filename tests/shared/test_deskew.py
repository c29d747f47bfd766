"""Deskewing by moments: a slanted digit comes out upright, an upright one and a blank one as they were."""

from __future__ import annotations

import numpy as np

from shared.deskew import deskew
from tests.helpers import slanted_stroke as _bar


def _ink_columns(image: np.ndarray) -> set[int]:
    return {int(np.nonzero(image[row] > 0.5)[0].min()) for row in range(5, 23)}


def test_a_slanted_stroke_comes_out_upright_with_its_ink() -> None:
    slanted = _bar(0.5)
    assert len(_ink_columns(slanted)) > 5
    upright = deskew(slanted[None])[0]
    assert len(_ink_columns(upright)) == 1
    assert abs(upright.sum() - slanted.sum()) < 0.5  # a shear moves ink, it neither adds nor removes it


def test_the_shear_turns_about_the_centre_of_mass() -> None:
    slanted = _bar(-0.4)
    ys, xs = np.mgrid[:28, :28]
    upright = deskew(slanted[None])[0]
    for image in (slanted, upright):
        assert abs((image * ys).sum() / image.sum() - (slanted * ys).sum() / slanted.sum()) < 0.05
    assert abs((upright * xs).sum() / upright.sum() - (slanted * xs).sum() / slanted.sum()) < 0.3


def test_upright_and_blank_images_are_left_as_they_are() -> None:
    upright, blank = _bar(0.0), np.zeros((28, 28), np.float32)
    np.testing.assert_allclose(deskew(np.stack([upright, blank])), np.stack([upright, blank]), atol=1e-6)


def test_a_batch_is_deskewed_image_by_image() -> None:
    images = np.stack([_bar(0.5), _bar(-0.3), _bar(0.0)])
    one_by_one = np.concatenate([deskew(image[None]) for image in images])
    np.testing.assert_allclose(deskew(images), one_by_one, atol=1e-6)
    assert deskew(images).dtype == np.float32 and deskew(images).min() >= 0 and deskew(images).max() <= 1
