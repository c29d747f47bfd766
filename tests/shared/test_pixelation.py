"""Pixelated enlargements (a small scan's pixels repeated into blocks) are found and enlarged smoothly instead."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from evaluation.userstyle import encode_png
from shared import preprocessing
from shared.pixelation import cells_along, unpixelate
from shared.preprocessing import preprocess


def _scan(rng: np.random.Generator, side: int) -> Image.Image:
    """A random two-level scan of ``side`` x ``side`` cells: dark ink on light paper."""
    return Image.fromarray(np.where(rng.random((side, side)) < 0.35, 0.1, 0.9).astype(np.float32), "F")


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize(("cells", "side"), [(8, 64), (8, 256), (9, 100), (11, 200), (16, 97), (16, 384), (6, 18)])
def test_a_nearest_neighbour_enlargement_is_found_at_its_scan_resolution(cells, side):
    big = _array(_scan(np.random.default_rng(cells * side), cells).resize((side, side), Image.Resampling.NEAREST))
    assert cells_along(np.abs(np.diff(big, axis=1)).max(axis=0)) == cells
    assert cells_along(np.abs(np.diff(big, axis=0)).max(axis=1)) == cells


@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS])
def test_a_smooth_enlargement_is_left_as_it_is(resample):
    gray = _array(_scan(np.random.default_rng(3), 10).resize((160, 160), resample))
    assert unpixelate(gray) is gray


def test_a_sharp_drawing_and_a_plain_page_are_left_as_they_are():
    """Sharp edges at no regular spacing (a pen drawing at full resolution) and no edges at all."""
    drawing = np.full((300, 240), 0.95, np.float32)
    for top, left, height, width in [(40, 117, 220, 9), (40, 81, 14, 45), (250, 70, 11, 110)]:
        drawing[top:top + height, left:left + width] = 0.05  # a 1 with a flag and a foot
    assert unpixelate(drawing) is drawing
    page = np.full((64, 64), 0.8, np.float32)
    assert unpixelate(page) is page


def test_a_few_hard_edges_on_a_lattice_by_chance_are_left_alone():
    """A bar's two edges per axis sit on some lattice of large cells; blurring it at that scale would cost the
    digit, and blocks matter only where curves become staircases."""
    bar = np.full((280, 280), 0.95, np.float32)
    bar[40:240, 120:150] = 0.05  # edges at 40/240 and 120/150: cells of 40 px, or 20, or 10 fit them
    assert unpixelate(bar) is bar


def test_unpixelating_gives_back_the_smooth_enlargement():
    scan = _scan(np.random.default_rng(5), 12)
    blocky = _array(scan.resize((192, 192), Image.Resampling.NEAREST))
    smooth = _array(scan.resize((192, 192), Image.Resampling.BILINEAR))
    assert np.abs(unpixelate(blocky) - smooth).max() < 1e-5


def test_a_pixelated_jpeg_is_found_through_its_ringing():
    blocky = _scan(np.random.default_rng(7), 10).resize((180, 180), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    Image.fromarray(np.round(_array(blocky) * 255).astype(np.uint8), "L").save(buf, format="JPEG", quality=90)
    gray = np.asarray(Image.open(buf), np.float32) / 255
    assert cells_along(np.abs(np.diff(gray, axis=1)).max(axis=0)) == 10


def test_a_pixelated_digit_is_read_like_the_same_scan_enlarged_smoothly(mnist, monkeypatch):
    """MNIST test digits scanned at 10 px and enlarged both ways come out of preprocessing alike; without
    unpixelating, the blocks' staircase edges make them differ several times as much."""
    uploads = []
    for digit in mnist.x_test[:40]:
        scan = Image.fromarray(255 - digit).resize((10, 10), Image.Resampling.BOX)
        uploads.append([encode_png(np.asarray(scan.resize((200, 200), r)))
                        for r in (Image.Resampling.NEAREST, Image.Resampling.BILINEAR)])
    smooth = [preprocess(s) for _, s in uploads]
    gap = np.mean([np.abs(preprocess(b) - s).mean() for (b, _), s in zip(uploads, smooth, strict=True)])
    monkeypatch.setattr(preprocessing, "unpixelate", lambda gray: gray)
    raw_gap = np.mean([np.abs(preprocess(b) - s).mean() for (b, _), s in zip(uploads, smooth, strict=True)])
    assert gap < 0.01
    assert raw_gap > 3 * gap
