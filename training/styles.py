"""Handwriting styles MNIST's writers seldom used, drawn onto MNIST training digits, and elastic distortions.

MNIST's writers (US Census staff and students) wrote 1 as a bare stroke, 4 open at the top, 7 without a bar and
9 with a straight stem. Much of the world writes a 1 with a long flag and often a foot, a 4 closed at the top, a
7 with a crossbar and a 9 whose tail curves. Each edit here draws that stroke onto a digit of that class, at the
digit's own stroke width, and keeps its label: a reader still says 1, 4, 7 or 9. Where the stroke goes is found
from the digit's ink (its top, its stem, its tail), never from any evaluation set.

``elastic`` is Simard et al.'s (2003) elastic distortion: a random displacement field smoothed by a Gaussian,
the wobble of a hand rather than a rigid transform.

Every function takes and returns one 28x28 float digit in [0, 1] (white ink on black) and draws from ``rng``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SCALE = 4  # strokes are drawn at 4x MNIST's resolution, then averaged down: anti-aliased like MNIST's own
Point = tuple[float, float]
Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # a digit and a generator -> the digit restyled


def stroke_width(ink: np.ndarray) -> float:
    """Mean stroke width of ``ink`` in px: 2 x area / perimeter of its mask (a long stroke of width w: 2wL / 2L)."""
    from scipy import ndimage

    mask = ink > 0.5
    perimeter = np.count_nonzero(mask & ~ndimage.binary_erosion(mask))
    return 2.0 * np.count_nonzero(mask) / max(int(perimeter), 1)


def elastic(image: np.ndarray, rng: np.random.Generator, alpha: float = 34.0, sigma: float = 4.0) -> np.ndarray:
    """Simard's elastic distortion: each pixel moved by a uniform random field smoothed with ``sigma``, x ``alpha``."""
    from scipy import ndimage

    shape = image.shape
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant") * alpha
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant") * alpha
    ys, xs = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    moved = ndimage.map_coordinates(image, [ys + dy, xs + dx], order=1, mode="constant")
    return np.clip(moved, 0.0, 1.0).astype(np.float32)


def _draw(image: np.ndarray, strokes: list[list[Point]], width: float) -> np.ndarray:
    """``image`` with polylines (in 28 px coordinates) drawn over it at ``width`` px, anti-aliased."""
    layer = Image.new("L", (image.shape[1] * SCALE, image.shape[0] * SCALE), 0)
    pen = ImageDraw.Draw(layer)
    w = max(SCALE, round(width * SCALE))
    for line in strokes:
        points = [(x * SCALE, y * SCALE) for x, y in line]
        pen.line(points, fill=255, width=w, joint="curve")
        for x, y in (points[0], points[-1]):  # round caps, as a pen leaves them
            pen.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    small = layer.resize(image.shape[::-1], Image.Resampling.BOX)
    return np.maximum(image, np.asarray(small, np.float32) / 255.0)


class Ink(NamedTuple):
    """Where a digit's ink is, in 28 px units: what every edit finds its stroke's place from."""

    rows: np.ndarray
    cols: np.ndarray
    height: float
    width: float  # stroke width


def _geometry(image: np.ndarray) -> Ink | None:
    """The digit's ink (rows, cols, height, stroke width); None for a blank image."""
    rows, cols = np.nonzero(image > 0.4)
    if len(rows) < 4:
        return None
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE),
                                                   Image.Resampling.BILINEAR))
    width = float(np.clip(stroke_width(big) / SCALE, 1.2, 4.0))
    return Ink(rows, cols, float(rows.max() - rows.min() + 1), width)


def _on_ink(edit: Callable[[np.ndarray, Ink, np.random.Generator], np.ndarray]) -> Edit:
    """The edit given the digit's ink; a blank image is returned as it is."""

    @functools.wraps(edit)
    def run(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        found = _geometry(image)
        return image if found is None else edit(image, found, rng)

    return run


@_on_ink
def flag_one(image: np.ndarray, ink: Ink, rng: np.random.Generator) -> np.ndarray:
    """A 1 with a long flag from its top, down to the left, and (on most) a foot across its base."""
    rows, cols, height, width = ink
    top, bottom = rows.min(), rows.max()
    top_x, bottom_x = float(cols[rows == top].mean()), float(cols[rows == bottom].mean())
    length = height * rng.uniform(0.2, 0.45)
    angle = np.radians(rng.uniform(25, 60))  # below the horizontal
    strokes = [[(top_x, top), (top_x - length * np.cos(angle), top + length * np.sin(angle))]]
    if rng.random() < 0.6:
        half = height * rng.uniform(0.15, 0.3)
        strokes.append([(bottom_x - half, bottom), (bottom_x + half, bottom)])
    return _draw(image, strokes, width * rng.uniform(0.8, 1.1))


@_on_ink
def close_four(image: np.ndarray, ink: Ink, rng: np.random.Generator) -> np.ndarray:
    """A 4 closed at the top: its left arm redrawn as a diagonal from the stem's top down to the crossbar's end."""
    rows, cols, height, width = ink
    top = rows.min()
    band = [r for r in range(int(top + 0.4 * height), int(top + 0.8 * height) + 1) if (rows == r).any()]
    if not band:
        return image
    bar = max(band, key=lambda r: int(np.count_nonzero(rows == r)))  # the row with the most ink: the crossbar
    below = cols[rows > bar + width]
    if rows.max() - bar < 0.15 * height or not len(below):
        return image  # no stem below the crossbar to speak of: not a 4 this edit can read
    stem_x = float(np.bincount(below).argmax())  # only the stem goes on below the crossbar
    near_stem = np.abs(cols - stem_x) <= width
    stem_top = float(rows[near_stem].min())
    bar_left = float(cols[np.abs(rows - bar) <= 1].min())
    if stem_x - bar_left < 0.35 * np.ptp(cols) or stem_top > bar - 0.25 * height:
        return image
    out = image.copy()
    out[: int(bar - width), : int(stem_x - width)] = 0.0  # the old open arm
    strokes = [[(stem_x, stem_top), (bar_left, float(bar))]]
    bar_right = float(cols[np.abs(rows - bar) <= 1].max())
    if bar_right < stem_x + 1.5 * width:
        # A closed 4 is told from a 9 by its crossbar going on past the stem; MNIST's open 4s often stop there.
        strokes.append([(stem_x, float(bar)), (stem_x + (stem_x - bar_left) * rng.uniform(0.3, 0.5), float(bar))])
    return _draw(out, strokes, width * rng.uniform(0.8, 1.1))


@_on_ink
def cross_seven(image: np.ndarray, ink: Ink, rng: np.random.Generator) -> np.ndarray:
    """A 7 with a bar across its stem, about half-way down."""
    rows, cols, height, width = ink
    row = int(round(rows.min() + height * rng.uniform(0.45, 0.62)))
    at_row = cols[rows == row]
    if not len(at_row):
        return image
    stem_x = float(at_row.mean())
    half = (cols.max() - cols.min() + 1) * rng.uniform(0.2, 0.35)
    shift = half * rng.uniform(-0.2, 0.2)
    tilt = height * rng.uniform(-0.04, 0.04)
    bar = [(stem_x - half + shift, row + tilt), (stem_x + half + shift, row - tilt)]
    return _draw(image, [bar], width * rng.uniform(0.8, 1.1))


@_on_ink
def curl_nine(image: np.ndarray, ink: Ink, rng: np.random.Generator) -> np.ndarray:
    """A 9 whose tail curves: from the tail's end, a hook round to the left and up."""
    rows, cols, height, width = ink
    bottom = rows.max()
    end = (float(cols[rows == bottom].mean()), float(bottom))
    reach = height * rng.uniform(0.15, 0.3)
    rise = height * rng.uniform(0.02, 0.15)
    control = (end[0] - reach * 0.4, end[1] + height * rng.uniform(0.04, 0.1))
    finish = (end[0] - reach, end[1] - rise)
    ts = np.linspace(0.0, 1.0, 8)
    curve = [((1 - t) ** 2 * end[0] + 2 * (1 - t) * t * control[0] + t * t * finish[0],
              (1 - t) ** 2 * end[1] + 2 * (1 - t) * t * control[1] + t * t * finish[1]) for t in ts]
    return _draw(image, [curve], width * rng.uniform(0.8, 1.1))


# Digit -> the edit that draws the style MNIST lacks for it.
STYLE_EDITS: dict[int, Edit] = {
    1: flag_one, 4: close_four, 7: cross_seven, 9: curl_nine,
}
