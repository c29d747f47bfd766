"""The paper under a photographed digit: a smooth background surface, the ink against it, and the noise.

Lighting across a sheet varies smoothly (a gradient, vignetting), so a low-order surface fitted on a small
copy of the picture stands for the paper; the ink is what departs from it by more than the noise allows.
Used by shared/preprocessing.py; OpenCV is imported inside the function that needs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from shared.ranks import median

_BG_ITERATIONS = 8  # rounds of refitting on the pixels the surface explains


def reduce_to(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Box-average a 2-D array so its long side is at most ``max_side`` (crop the remainder)."""
    factor = math.ceil(max(arr.shape) / max_side)
    if factor <= 1:
        return arr
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    if h == 0 or w == 0:
        return arr
    import cv2

    # OpenCV's area resampling at a whole factor is the block mean, several times faster than numpy's.
    block = np.ascontiguousarray(arr[:h, :w], dtype=np.float32)
    return cv2.resize(block, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Background:
    """A smooth background surface: quadratic coefficients, clipped to the range seen on paper."""

    coef: np.ndarray
    low: float
    high: float

    def at(self, shape: tuple[int, ...], floor: float | None = None) -> np.ndarray:
        """The surface sampled on a grid of ``shape`` spanning the same image (never below ``floor`` if given)."""
        y, x = _axis(shape[0]), _axis(shape[1])
        c0, cx, cy, cxx, cxy, cyy = (np.float32(c) for c in self.coef)
        # Separable terms as outer sums, the cross term added in place: three passes over the image, not six.
        surface = np.add.outer(y * (cy + cyy * y), c0 + x * (cx + cxx * x))
        surface += np.multiply.outer(cxy * y, x)
        # Where the paper is hidden (a big digit), the quadratic extrapolates: never beyond
        # what the paper itself showed.
        low, high = (self.low, self.high) if floor is None else (max(self.low, floor), max(self.high, floor))
        return np.clip(surface, low, high, out=surface)


@functools.lru_cache(maxsize=1024)
def _axis(n: int) -> np.ndarray:
    """``n`` points spanning [-1, 1] (read-only: shared by every image of that size)."""
    axis = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    axis.flags.writeable = False
    return axis


@functools.lru_cache(maxsize=256)  # at most 24 KB each: the small copies' shapes are at most 32x32
def _design(shape: tuple[int, ...]) -> np.ndarray:
    """The quadratic surface's design matrix (pixels x 6) over a grid of ``shape`` (read-only, shared)."""
    y, x = _axis(shape[0])[:, None], _axis(shape[1])
    design = np.empty((*shape, 6), np.float32)
    design[..., 0], design[..., 1], design[..., 2] = 1.0, x, y
    design[..., 3], design[..., 4], design[..., 5] = x * x, y * x, y * y
    design = design.reshape(-1, 6)
    design.flags.writeable = False
    return design


@functools.lru_cache(maxsize=256)  # at most 144 KB each
def _products(shape: tuple[int, ...]) -> np.ndarray:
    """Each pixel's outer product of its design row (pixels x 36): the normal matrix of any subset is one sum."""
    design = _design(shape)
    products = (design[:, :, None] * design[:, None, :]).reshape(len(design), 36)
    products.flags.writeable = False
    return products


def fit_background(small: np.ndarray, paper: float, dark_ink: bool) -> Background:
    """Fit a quadratic surface to the background (paper, or MNIST's black) of ``small``.

    Lighting across a photographed sheet varies smoothly (a gradient, vignetting), so a
    low-order surface fits the paper. ``paper`` (the border's level) is the starting guess;
    each round refits on the pixels the surface explains, never on ink (one-sided trimming:
    pixels more ink-like than the surface by more than the noise allows), so the surface
    spreads from the border across the sheet even when the digit covers much of it.
    """
    design, products = _design(small.shape), _products(small.shape)
    sign = np.float32(-1.0 if dark_ink else 1.0)
    inkness = sign * (small.reshape(-1) - np.float32(paper))  # ink positive, paper about 0
    tolerance = max(4.0 * noise_sigma(small), 0.03)
    coef = np.zeros(6, np.float32)
    keep = inkness <= tolerance
    for _ in range(_BG_ITERATIONS):
        if np.count_nonzero(keep) < 12:
            break
        weights = keep.astype(np.float32)  # the kept pixels 1, the others 0: sums over them, no gather
        kept = inkness[keep]
        # Normal equations (6x6): much cheaper than lstsq's SVD, and well conditioned on [-1, 1].
        try:
            coef = np.linalg.solve((weights @ products).reshape(6, 6), (weights * inkness) @ design).astype(np.float32)
        except np.linalg.LinAlgError:
            break
        fit = np.clip(design @ coef, kept.min(), kept.max())
        new_keep = inkness - fit <= tolerance
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    kept = inkness[keep] if keep.any() else np.zeros(1, np.float32)
    # Back from "inkness" to grey levels: background = paper + sign * surface.
    gray_coef = sign * coef
    gray_coef[0] += paper
    bounds = (paper + sign * float(kept.min()), paper + sign * float(kept.max()))
    return Background(gray_coef, float(min(bounds)), float(max(bounds)))


def ink_map(gray: np.ndarray, background: Background, dark_ink: bool) -> np.ndarray:
    """Ink strength (background 0, ink positive) from grey levels and the fitted background (a new array)."""
    if dark_ink:
        # Ink on lit paper: light is multiplicative, so dividing by the paper's brightness
        # flattens uneven lighting and gives ink the same contrast in shade as in light.
        ink = background.at(gray.shape, floor=0.05)
        np.divide(gray, ink, out=ink)
        return np.subtract(np.float32(1.0), ink, out=ink)
    # Light ink on a dark ground (MNIST, chalk): nothing to divide by.
    ink = background.at(gray.shape)
    return np.subtract(gray, ink, out=ink)


def noise_sigma(ink: np.ndarray) -> float:
    """Pixel noise (standard deviation) from neighbour differences, blind to the content.

    Differences between adjacent pixels are pure noise except across stroke edges (a minority),
    so their median is a robust estimate even when ink covers half the image.
    """
    sample = ink[::2] if ink.shape[0] > 64 else ink  # every other row is plenty
    diffs = np.abs(np.diff(sample, axis=1))
    if diffs.size == 0:  # a one-pixel-wide picture has no neighbours to compare: no measurable noise
        return 0.0
    return median(diffs) / (0.6745 * math.sqrt(2.0))
