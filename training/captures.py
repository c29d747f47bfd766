"""Augmentation for digits captured unlike MNIST's: other writers' proportions and stroke widths, low-resolution
scans with few grey levels (some stretched to fill their box), enlarged so that strokes come out thick and blurry.

Each training digit gets one degraded copy, drawn by a seeded generator, which is then enlarged like an
upload and put through the workers' own preprocessing (shared/preprocessing.py): the model learns such
captures as it will be served them, re-sharpened and refitted, not as raw blur. Slant needs no
augmentation: deskewing removes it from training and served digits alike. The model's layers, optimiser
and epochs stay as they are. The recipe is written from what such captures do, not fitted to any
evaluation set; the copies are made in a few processes, deterministically for a seed.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from PIL import Image

from shared.imaging import ImageRejected
from shared.preprocessing import preprocess_gray
from training.styles import STYLE_EDITS, elastic

# The steps, for the metadata: what training saw besides MNIST's own digits.
RECIPE = ("one degraded copy of every training digit: width x0.65-1.4 (the writer's proportions); "
          "strokes thicker (2x2 max) or thinner (2x2 min) on a third each; on 10%, a scan that stretches the "
          "digit's ink box to fill 10-16 px (aspect lost; 1 bit or 16 grey levels, half each); on 80%, a "
          "low-resolution capture (the 28 px image box-averaged to 9-20 px, so a 20 px digit to 6-14 px; 16 grey "
          "levels; enlarged back bilinearly); then enlarged to 84 px and put through the workers' preprocessing")
STYLES_RECIPE = ("before degrading, on 35% of the copies of 1s, 4s, 7s and 9s: a flag and foot, a closed top, a "
                 "crossbar, a curled tail (training/styles.py); on half of all copies, an elastic distortion "
                 "(alpha 8-34, sigma 4)")
_WIDTHS = (0.65, 1.4)  # width against height, as writers' proportions differ from MNIST's
_FILLED_SHARE = 0.1  # scanned by a scanner that stretches the digit to fill its box (evaluation's box-filled set)
_FILLED_SIDES = (10, 16)
_LOW_RESOLUTION_SHARE = 0.8  # scanned keeping the digit's proportions
_SCAN_SIDES = (9, 20)  # the 28 px image scanned at this many px (inclusive): the 20 px digit at 6-14 px
_LEVELS = 16
_UPLOAD_SIDE = 84  # well above MNIST's 28 px: preprocessing treats the copy as a capture (re-sharpens it)
_STYLE_SHARE = 0.35  # of the copies of 1s, 4s, 7s and 9s: flagged, closed, crossed, curled
_ELASTIC_SHARE = 0.5
_ELASTIC_ALPHA = (8.0, 34.0)  # Simard et al.'s alpha (34) at most, milder on most
_ELASTIC_SIGMA = 4.0
_CHUNKS = 16  # fixed, so the copies are the same whatever the number of processes
_MAX_PROCESSES = 4


def _stretch_width(image: np.ndarray, factor: float) -> np.ndarray:
    """The digit made narrower or wider about its centre of mass, each row resampled linearly."""
    total = image.sum()
    if total <= 0:
        return image
    xs = np.arange(image.shape[1], dtype=np.float32)
    cx = float((image.sum(axis=0) * xs).sum() / total)
    source = cx + (xs - cx) / factor
    return np.stack([np.interp(source, xs, row, left=0.0, right=0.0) for row in image]).astype(np.float32)


def _stroke(image: np.ndarray, choice: float) -> np.ndarray:
    """Thicker strokes (2x2 max) on a third, thinner (2x2 min) on a third, the rest as they are."""
    padded = np.pad(image, ((0, 1), (0, 1)))
    windows = np.stack([padded[:-1, :-1], padded[1:, :-1], padded[:-1, 1:], padded[1:, 1:]])
    if choice < 1 / 3:
        return windows.max(axis=0)
    if choice < 2 / 3:
        return windows.min(axis=0)
    return image


def _low_resolution(image: np.ndarray, side: int) -> np.ndarray:
    """A scan at `side` px (box-averaged), quantised to 16 grey levels, enlarged back with smoothing."""
    size = image.shape[::-1]
    small = Image.fromarray((image * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BOX)
    levels = np.round(np.asarray(small, np.float32) / 255 * (_LEVELS - 1)) / (_LEVELS - 1)
    back = Image.fromarray((levels * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(back, np.float32) / 255


def _filled_scan(image: np.ndarray, side: int, levels: int) -> np.ndarray:
    """The digit's ink box stretched to fill a `side` px scan (its proportions lost), quantised to `levels`, enlarged
    back into MNIST's 20 px box."""
    ink = image >= 0.5 * float(image.max())  # the box of the ink a scanner sees at its threshold, not of faint smudges
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return image
    crop = np.ascontiguousarray(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], dtype=np.float32)
    small = np.asarray(Image.fromarray(crop, "F").resize((side, side), Image.Resampling.BOX))
    small = np.round(np.clip(small / max(float(small.max()), 1e-6), 0, 1) * (levels - 1)) / (levels - 1)
    out = np.zeros_like(image, dtype=np.float32)
    out[4:24, 4:24] = np.asarray(Image.fromarray(small.astype(np.float32), "F").resize((20, 20),
                                                                                         Image.Resampling.BILINEAR))
    return out


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One degraded copy of a 28x28 digit in [0, 1], its ink level brought back to 1."""
    out = _stretch_width(image, float(rng.uniform(*_WIDTHS)))
    out = _stroke(out, float(rng.random()))
    scan = rng.random()
    if scan < _FILLED_SHARE:
        levels = 2 if rng.random() < 0.5 else _LEVELS
        out = _filled_scan(out, int(rng.integers(_FILLED_SIDES[0], _FILLED_SIDES[1] + 1)), levels)
    elif scan < _FILLED_SHARE + _LOW_RESOLUTION_SHARE:
        out = _low_resolution(out, int(rng.integers(_SCAN_SIDES[0], _SCAN_SIDES[1] + 1)))
    # The rest (10%) keep MNIST's resolution.
    peak = float(out.max())
    return (out / peak if peak > 0 else out).astype(np.float32)


def as_served(image: np.ndarray) -> np.ndarray | None:
    """A 28x28 digit enlarged like an upload and read by the workers' preprocessing; None if they would refuse it."""
    upload = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    try:
        return preprocess_gray(np.asarray(upload.resize((_UPLOAD_SIDE,) * 2, Image.Resampling.BILINEAR)))
    except ImageRejected:
        return None


def restyle(image: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """On 35% of the 1s, 4s, 7s and 9s, the style MNIST lacks (training/styles.py); then, on half of all digits, an
    elastic distortion."""
    edit = STYLE_EDITS.get(label)
    if edit is not None and rng.random() < _STYLE_SHARE:
        image = edit(image, rng)
    if rng.random() < _ELASTIC_SHARE:
        image = elastic(image, rng, alpha=float(rng.uniform(*_ELASTIC_ALPHA)), sigma=_ELASTIC_SIGMA)
    return image


def _copies(job: tuple[np.ndarray, np.ndarray, int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Served degraded copies of a chunk of digits, and the indices (in the chunk) of those kept."""
    images, labels, seed, styles = job
    rng = np.random.default_rng(seed)
    served, kept = [], []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        if styles:
            image = restyle(image, int(label), rng)
        copy = as_served(degrade(image, rng))
        if copy is not None:
            served.append(copy)
            kept.append(i)
    return np.asarray(served, dtype=np.float32).reshape(-1, 28, 28), np.asarray(kept, dtype=np.int64)


def served_copies(x: np.ndarray, y: np.ndarray, seed: int, styles: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A served degraded copy (N', 28, 28) of each digit (N, 28, 28) in [0, 1] that preprocessing accepts, and
    their labels. ``styles``: each copy gets other writers' styles and an elastic distortion first (``restyle``)."""
    chunks = [c for c in np.array_split(np.arange(len(x)), _CHUNKS) if len(c)]
    jobs = [(x[c], y[c], seed * 1_000 + i, styles) for i, c in enumerate(chunks)]
    processes = min(_MAX_PROCESSES, len(os.sched_getaffinity(0)), len(jobs)) or 1
    # spawn: the training process may already hold TensorFlow's threads, which a fork would not carry over.
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_copies, jobs))
    labels = [y[c][kept] for c, (_, kept) in zip(chunks, results, strict=True)]
    return np.concatenate([images for images, _ in results]), np.concatenate(labels)
