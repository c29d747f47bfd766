"""Deskewing by image moments, the classic MNIST normalisation: each digit sheared upright about its centre of mass.

MNIST's own normalisation fits a digit's size and centres its mass, but leaves each writer's slant in; other
people's digits differ from MNIST's most in exactly that. A model trained on deskewed digits (its metadata
says ``"deskew": true``, see training/) is served deskewed digits too (worker/model.py), so the two agree.
"""

from __future__ import annotations

import numpy as np

_MIN_VARIANCE = 1e-3  # a digit (or blank) with no vertical extent has no slant to measure


def _slants(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image's slant (how far its ink's x moves per row, by regression on y) and its centre row."""
    total = x.sum(axis=(1, 2), keepdims=True)
    weight = np.where(total > 0, total, 1.0)
    cy = (x * ys).sum(axis=(1, 2), keepdims=True) / weight
    cx = (x * xs).sum(axis=(1, 2), keepdims=True) / weight
    var_y = (x * (ys - cy) ** 2).sum(axis=(1, 2), keepdims=True) / weight
    cov = (x * (ys - cy) * (xs - cx)).sum(axis=(1, 2), keepdims=True) / weight
    return np.where(var_y > _MIN_VARIANCE, cov / np.maximum(var_y, _MIN_VARIANCE), 0.0), cy


def deskew(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float images in [0, 1], each sheared so that its ink's principal axis is vertical."""
    x = np.asarray(images, dtype=np.float32)
    _, _, width = x.shape
    ys = np.arange(x.shape[1], dtype=np.float32)[None, :, None]
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    alpha, cy = _slants(x, ys, xs)
    # A shear moves whole rows: each output row is its input row shifted by the slant times its distance from
    # the centre row, read by linear interpolation between the two nearest pixels (zeros beyond the edges).
    shift = alpha * (ys - cy)
    whole = np.floor(shift)
    frac = (shift - whole).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (width, width + 1)))
    left = np.clip(xs + whole, -width, 2 * width - 1).astype(np.int64) + width
    out = (np.take_along_axis(padded, left, axis=2) * (1 - frac)
           + np.take_along_axis(padded, left + 1, axis=2) * frac)
    return out.astype(np.float32)
