"""Seeded generator of "other writers" uploads: MNIST test digits captured by a pipeline unlike MNIST's.

Issue #13: digits written by other people and captured another way (low-resolution scans, a few grey
levels, enlarged, so strokes are thick and blurry, with slants and proportions of their own) read much
worse than MNIST-like uploads. This module builds an evaluation set of that kind from the MNIST *test*
split, which no model here trains on. Each digit, with its own seeded numpy Generator, goes through:

1. **The writer's hand.** The digit's ink box is scaled up 4x (bicubic) so the later steps work on
   smooth strokes; its width is stretched against its height by a factor in 0.7-1.3 (the writer's
   proportions), and it is slanted by a horizontal shear of up to +-0.35 px per px, either way.
2. **The pen.** Strokes are thickened or thinned towards a drawn width, or left alone. The digit's stroke
   width is measured (2 x area / perimeter of its ink, as a fraction of its height: MNIST's median is
   0.12, 1st-99th percentile 0.07-0.24), and a grey dilation or erosion by a disc of the radius that
   brings it to the target is applied at 4x (a thick pen: 0.17-0.23 of the height, at least 1 px more;
   a thin one: 0.055-0.08, never thicker than it was, backed off while erosion would erase more than
   half the ink, so no stroke vanishes).
3. **The low-resolution scan.** The digit is padded to a square box with a small margin (0-12% of its
   long side per side, placed at random) and block-averaged (exact area means over whole blocks) down
   to a side drawn from 8..16 px: the digit is then about 6-16 px tall.
4. **Grey levels.** Paper and ink levels are drawn (paper 0.82-1.0, ink 0-0.25 of full scale), dark
   ink on light paper 80% of the time, light on dark otherwise, and quantised to 16 levels.
5. **Enlarged for display.** Scaled up smoothly (bilinear or bicubic) to a square side of 64-256 px,
   so the strokes are thick and blurry, and encoded as PNG, or 20% of the time as JPEG at quality 85-95.

Each upload is labelled with the kind of its dominant degradation (cycled in order, as in
evaluation/userstyle.py); every kind still goes through every step, only the ranges differ:

* ``lowres``: scanned at 8-9 px, hand and pen near MNIST's;
* ``slant``: sheared by 0.2-0.35 px/px, left or right;
* ``thick``: strokes 0.17-0.23 of the height (MNIST's median 0.12);
* ``thin``: strokes 0.055-0.08 of the height;
* ``narrow``/``wide``: width 0.7-0.85 / 1.15-1.3 of the height;
* ``mixed``: everything drawn at once from the full ranges (pen: as written, thick or thin).

The other kinds are scanned at 8-16 px, and (where the kind does not say otherwise) have mild
proportions (0.9-1.1) and slant (+-0.12) and the pen as written.

``box_filled_set`` is the same capture from a scanner that normalises each digit by stretching its ink box to
fill the scan before block-averaging it (the aspect ratio is lost: a plain 1 becomes a block as wide as it is
tall), in 1 bit half of the time. Some digit scanners and datasets normalise so; issue #21's real writers, read
mostly wrong as 1s taken for 8, 4 or 7, look like it. ``pixelated_set`` is the other-writers set itself enlarged
by repeating each scan pixel into a block (nearest neighbour), as small scans are often shown.

``other_writers_set(x, y, n, seed)`` is prefix-stable: its first m uploads are exactly
``other_writers_set(x, y, m, seed)`` (the digits are a seeded permutation's prefix and each is rendered
from its own stream), so a test can score a small fixed part of the benchmark's set.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from evaluation.userstyle import encode_png
from training.styles import stroke_width  # one measure of a pen, shared with training's edits

DEFAULT_SEED = 1130
DEFAULT_SIZE = 2000
DEFAULT_FILLED_SEED = 1207

# The kinds, in the order other_writers_set cycles through them.
KINDS: tuple[str, ...] = ("lowres", "slant", "thick", "thin", "narrow", "wide", "mixed")

UPSAMPLE = 4  # the hand and pen steps work at 4x MNIST's resolution
SCAN_SIDES = (8, 16)  # the low-resolution scan's side, inclusive
OUTPUT_SIDES = (64, 256)  # the enlarged upload's side, inclusive
LEVELS = 16  # grey levels of the scan
THICK = (0.17, 0.23)  # stroke width of a thick pen, as a fraction of the digit's height
THIN = (0.055, 0.08)  # ... of a thin one
MAX_THIN_LOSS = 0.5  # thinning never erases more than this fraction of the ink


def other_writers_indices(total: int, n: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Which of ``total`` digits other_writers_set(..., n, seed) renders, in order (a permutation's prefix)."""
    rng = np.random.default_rng([seed, 0])
    if n <= total:
        return rng.permutation(total)[:n]
    return np.concatenate([rng.permutation(total) for _ in range(-(-n // total))])[:n]


def other_writers_set(x: np.ndarray, y: np.ndarray, n: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                      fill: bool = False, pixelated: bool = False) -> list[tuple[bytes, int, str]]:
    """``n`` other-writers uploads (encoded bytes, label, kind) from a seeded sample of digits ``x``/``y``.
    ``fill``: scanned by a scanner that stretches each digit to fill its box (``box_filled_set``); ``pixelated``:
    enlarged by repeating the scan's pixels (``pixelated_set``)."""
    out: list[tuple[bytes, int, str]] = []
    for i, idx in enumerate(other_writers_indices(len(x), n, seed)):
        kind = KINDS[i % len(KINDS)]
        rng = np.random.default_rng([seed, 1, i])  # each upload from its own stream: prefix-stable sets
        out.append((make_other_writer(x[idx], rng, kind, fill, pixelated), int(y[idx]), kind))
    return out


def box_filled_set(x: np.ndarray, y: np.ndarray, n: int = DEFAULT_SIZE,
                   seed: int = DEFAULT_FILLED_SEED) -> list[tuple[bytes, int, str]]:
    """Other writers' uploads from a scanner that normalises each digit by stretching its ink box to fill the scan
    (the aspect ratio is lost: a plain 1 becomes a block as wide as it is tall), half of them in 1 bit, as some
    digit scanners and datasets do."""
    return other_writers_set(x, y, n, seed, fill=True)


def pixelated_set(x: np.ndarray, y: np.ndarray, n: int = DEFAULT_SIZE,
                  seed: int = DEFAULT_SEED) -> list[tuple[bytes, int, str]]:
    """The other-writers uploads (the same digits and scans) enlarged by repeating each scan pixel into a block
    (nearest neighbour), as small scans are often shown, instead of smoothly."""
    return other_writers_set(x, y, n, seed, pixelated=True)


def _params(kind: str, rng: np.random.Generator) -> dict[str, float | int]:
    """The capture's parameters for ``kind``: stretch, shear, stroke (target width / height; 0 as written), side."""
    sign = float(rng.choice([-1.0, 1.0]))
    p: dict[str, float | int] = {"stretch": rng.uniform(0.9, 1.1), "shear": rng.uniform(-0.12, 0.12),
                                 "stroke": 0.0, "side": int(rng.integers(SCAN_SIDES[0], SCAN_SIDES[1] + 1))}
    if kind == "lowres":
        p["side"] = int(rng.integers(SCAN_SIDES[0], 10))
    elif kind == "slant":
        p["shear"] = sign * rng.uniform(0.2, 0.35)
    elif kind == "thick":
        p["stroke"] = rng.uniform(*THICK)
    elif kind == "thin":
        p["stroke"] = -rng.uniform(*THIN)
    elif kind == "narrow":
        p["stretch"] = rng.uniform(0.7, 0.85)
    elif kind == "wide":
        p["stretch"] = rng.uniform(1.15, 1.3)
    elif kind == "mixed":
        p = {"stretch": rng.uniform(0.7, 1.3), "shear": rng.uniform(-0.35, 0.35),
             "stroke": float(rng.choice([0.0, rng.uniform(*THICK), -rng.uniform(*THIN)])),
             "side": int(rng.integers(SCAN_SIDES[0], SCAN_SIDES[1] + 1))}
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return p


def _hand(digit: np.ndarray, stretch: float, shear: float) -> np.ndarray:
    """The digit's ink box at 4x, its width stretched by ``stretch`` and slanted by ``shear`` px/px; ink in [0, 1]."""
    rows = np.flatnonzero(digit.max(axis=1))
    cols = np.flatnonzero(digit.max(axis=0))
    crop = Image.fromarray(np.ascontiguousarray(digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]))
    h = crop.height * UPSAMPLE
    w = max(UPSAMPLE, round(crop.width * UPSAMPLE * stretch))
    layer = crop.resize((w, h), Image.Resampling.BICUBIC)
    if shear:
        # Output x takes input x + shear * (y - h/2) - extra/2: the top leans right for shear > 0.
        extra = int(np.ceil(abs(shear) * h)) + 2
        data = (1.0, shear, -shear * h / 2 - extra / 2, 0.0, 1.0, 0.0)
        layer = layer.transform((w + extra, h), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius + radius  # a rounder disc than the strict one at small radii


def _pen(ink: np.ndarray, target: float) -> np.ndarray:
    """Strokes thickened (target > 0) or thinned (target < 0) towards ``|target|`` x the digit's height."""
    from scipy import ndimage

    if not target:
        return ink
    change = abs(target) * ink.shape[0] - stroke_width(ink)  # px of width to add (< 0: to remove)
    if target > 0:
        radius = max(1, round(change / 2))  # a disc of radius r adds 2r to the width
        return ndimage.grey_dilation(np.pad(ink, radius), footprint=_disc(radius))
    mass = float(ink.sum())
    for radius in range(round(-change / 2), 0, -1):  # back off while thinning would erase too much
        thinned = ndimage.grey_erosion(ink, footprint=_disc(radius))
        if float(thinned.sum()) >= (1.0 - MAX_THIN_LOSS) * mass:
            return thinned
    return ink


def _scan(ink: np.ndarray, side: int, rng: np.random.Generator, fill: bool = False) -> np.ndarray:
    """Pad the ink to a square with a small random margin and block-average it to ``side`` x ``side``; ``fill``:
    stretch it to a square first (the scanner fills its box, whatever the digit's proportions)."""
    long = max(ink.shape)
    if fill:
        ink = np.asarray(Image.fromarray(ink, "F").resize((long, long), Image.Resampling.BILINEAR))
    box = long + 2 * int(round(rng.uniform(0.0, 0.12) * long))
    block = max(-(-long // side), round(box / side))  # whole blocks (exact area means) of about that box
    box = block * side
    top = int(rng.integers(0, box - ink.shape[0] + 1))
    left = int(rng.integers(0, box - ink.shape[1] + 1))
    square = np.zeros((box, box), np.float32)
    square[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return square.reshape(side, block, side, block).mean(axis=(1, 3))


def make_other_writer(digit: np.ndarray, rng: np.random.Generator, kind: str, fill: bool = False,
                      pixelated: bool = False) -> bytes:
    """Render one 28x28 uint8 MNIST digit (white on black) as an encoded other-writers upload of ``kind``;
    ``fill``: by a scanner that stretches the digit to fill its box, in 1 bit half of the time; ``pixelated``:
    enlarged by repeating its pixels."""
    p = _params(kind, rng)
    ink = _pen(_hand(digit, float(p["stretch"]), float(p["shear"])), float(p["stroke"]))
    coverage = np.clip(_scan(ink, int(p["side"]), rng, fill), 0.0, 1.0)
    if fill and rng.random() < 0.5:  # a 1-bit scan (only drawn for filled scans: the other sets stay as they were)
        coverage = (coverage >= 0.5).astype(np.float32)
    paper, pen = rng.uniform(0.82, 1.0), rng.uniform(0.0, 0.25)
    if rng.random() < 0.2:  # light ink on a dark ground (a negative, a chalkboard, an inverted scan)
        paper, pen = 1.0 - paper, 1.0 - pen
    gray = paper + (pen - paper) * coverage
    gray = np.round(gray * (LEVELS - 1)) / (LEVELS - 1)  # 16 grey levels
    scan = Image.fromarray(np.round(gray * 255).astype(np.uint8), "L")
    out_side = int(rng.integers(OUTPUT_SIDES[0], OUTPUT_SIDES[1] + 1))
    smooth = Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.BICUBIC
    if pixelated:  # drawn all the same: the rest of the upload is the one the smooth set has
        smooth = Image.Resampling.NEAREST
    shown = scan.resize((out_side, out_side), smooth)
    if rng.random() < 0.2:
        buf = io.BytesIO()
        shown.save(buf, format="JPEG", quality=int(rng.integers(85, 96)))
        return buf.getvalue()
    return encode_png(np.asarray(shown))


def contact_sheet(uploads: list[bytes], columns: int = 10, cell: int = 96) -> Image.Image:
    """The uploads decoded and shrunk to ``cell`` px on a grid (for looking at a sample by eye)."""
    rows = -(-len(uploads) // columns)
    sheet = Image.new("L", (columns * (cell + 4), rows * (cell + 4)), 128)
    for i, data in enumerate(uploads):
        with Image.open(io.BytesIO(data)) as img:
            tile = img.convert("L").resize((cell, cell), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((i % columns) * (cell + 4) + 2, (i // columns) * (cell + 4) + 2))
    return sheet
