"""Turn decoded uploads into MNIST-style 28x28 digits: the worker's preprocessing.

The MNIST recipe: background, polarity, contrast, noise, crop, fit to 20 px, centre of mass to
the centre of 28x28. The bytes are decoded and validated by shared/imaging.py first, and reduced to
at most WORK_SIDE px (shared/imaging.py). OpenCV (blobs, grey dilation) is imported inside the functions
that need it: the web never loads it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared.background import fit_background, ink_map, noise_sigma, reduce_to
from shared.imaging import ImageRejected, load_grayscale
from shared.limits import DEFAULT_LIMITS, ImageLimits
from shared.pixelation import unpixelate
from shared.ranks import kth_largest, kth_smallest, median

# The background is fitted on an even smaller copy: it is smooth by definition.
_BG_SIDE = 32

# Ink must stand out from the background by this much (fraction of full scale) to be a digit.
MIN_INK_CONTRAST = 0.1
_NOISE_SIGMAS = 4.0  # ink must be this many noise standard deviations above the background
_LEVEL_PIXELS = 24  # the ink's level: the value of its this-many strongest pixels
_MIN_SMALL_CONTRAST = 0.025  # ink contrast that must survive averaging onto the 32 px copy
# Large crops are re-sharpened before the box filter: ink below 0.5 - this fades to none, above
# 0.5 + this is solid (MNIST was made from binary scans; this undoes blur and soft focus).
_EDGE_RAMP = 0.25
# Stroke widths in pixels of the 20 px box: MNIST's are 2.4 median, 1.4 at the 1st percentile.
_MIN_STROKE = 1.4
_TARGET_STROKE = 2.2
# Blurred strokes fade unevenly (a thin pen scanned at low resolution): before re-sharpening, each is
# measured against the strongest ink within this fraction of the crop's long side (about a stroke's width
# either side at MNIST's scale), but never against less than this fraction of the digit's own level (noise).
_PEAK_WINDOW = 0.12
_PEAK_FLOOR = 0.3
_MIN_SOFT_THRESHOLD = 0.04  # fraction of the ink level always treated as background
# A connected blob is a speck (dropped) when it is this small relative to the largest blob...
_SPECK_FRACTION = 0.05
# ...unless it lies this close (fraction of the main blob's long side) to the main blob, e.g. a
# broken stroke, in which case it is kept when at least _FRAGMENT_FRACTION of the main blob.
_NEAR_FRACTION = 0.15
_FRAGMENT_FRACTION = 0.005
# A blob lying mostly within this band along the image's edge (fraction of the short side) is a
# line (frame, ruled margin, scanner edge), never part of the digit.
_EDGE_BAND = 0.03

# An MNIST-form input: a 2 px frame darker than this around ink brighter than that.
_FRAME, _FRAME_DARK, _FRAME_INK = 2, 0.05, 0.5
DIGIT_BOX = 20  # MNIST: the digit's long side is fitted to 20 px...
SIZE = 28  # ...and pasted into 28x28 with its centre of mass at the centre
# Where MNIST puts the centre of mass (row, col), in pixel-index coordinates: its digits average
# (13.99, 14.01), each within half a pixel (whole-pixel shifts).
MNIST_CENTRE = (14.0, 14.0)

# Anti-aliasing filter for fitting the digit into its 20 px box (PIL's filters all area-average
# when reducing; BOX is plain area averaging, the closest to how MNIST was made; OpenCV's INTER_AREA
# differs from it by up to 0.4 at fractional scales, and the model was trained on this one).
_DOWNSCALE_FILTER = Image.Resampling.BOX



def preprocess(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Upload bytes to an MNIST-style (28, 28) float32 digit in [0, 1]; ImageRejected if unusable."""
    return preprocess_gray(load_grayscale(data, limits))


def _border_pixels(gray: np.ndarray) -> np.ndarray:
    """Pixels of two rings: the image's edge and one a little inside it.

    The outer ring alone can be mostly a frame or margin line; the inner one alone can be cut
    by the digit in a tight crop. Together their median is paper in both cases.
    """
    h, w = gray.shape
    rings = []
    for d in sorted({0, min(max(1, round(_EDGE_BAND * 2 * min(h, w))), (min(h, w) - 1) // 2)}):
        rings += [gray[d, d:w - d], gray[h - 1 - d, d:w - d], gray[d:h - d, d], gray[d:h - d, w - 1 - d]]
    return np.concatenate(rings)


def is_mnist_form(gray: np.ndarray) -> bool:
    """Already an MNIST digit: 28x28, bright ink on a black frame (MNIST keeps the ink off the edges)."""
    if gray.shape != (SIZE, SIZE):
        return False
    frame = np.concatenate([gray[:_FRAME].ravel(), gray[-_FRAME:].ravel(),
                            gray[_FRAME:-_FRAME, :_FRAME].ravel(), gray[_FRAME:-_FRAME, -_FRAME:].ravel()])
    return float(frame.max()) < _FRAME_DARK and float(gray.max()) > _FRAME_INK


def preprocess_gray(gray: np.ndarray) -> np.ndarray:
    """Grey image (2-D, [0, 1], 0 = black) to an MNIST-style (28, 28) float32 digit in [0, 1]."""
    gray = np.asarray(gray)
    gray = gray * np.float32(1 / 255) if gray.dtype == np.uint8 else gray.astype(np.float32, copy=False)
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D grey image, got shape {gray.shape}")
    if is_mnist_form(gray):
        return gray.copy()  # already what the recipe below would make: redoing it only costs time
    return _fit_and_centre(_digit_crop(_ink_of(unpixelate(gray))))


def _ink_of(gray: np.ndarray) -> np.ndarray:
    """Steps 1-4: the ink, bright on black, normalised to [0, 1] with faint noise dropped; no_ink if none."""
    # 1. Polarity: the ink is whichever side deviates most from the paper (the border's level),
    # judged on robust extremes (the few dozenth darkest and brightest pixels, not single spikes).
    k = min(_LEVEL_PIXELS, gray.size // 2)
    darkest, brightest = kth_smallest(gray, k + 1), kth_largest(gray, k + 1)
    paper = median(_border_pixels(gray))
    dark_ink = paper - darkest > brightest - paper
    small = reduce_to(gray, _BG_SIDE)
    # 2. Background: a smooth surface fitted on the small copy (lighting varies slowly).
    background = fit_background(small, paper, dark_ink)
    ink = ink_map(gray, background, dark_ink)

    # 3. Contrast: the ink's level is that of its strongest few dozen pixels (a robust maximum:
    # a hairline stroke has few pixels, single noise spikes are fewer).
    level = kth_largest(ink, min(ink.size, _LEVEL_PIXELS))
    sigma = noise_sigma(ink)
    # No ink: too faint, lost in the noise, or gone on the small copy, whose averaging wipes
    # out noise however strong but keeps a real stroke, even a hairline, visible.
    small_level = float(ink_map(small, background, dark_ink).max())
    if level < max(MIN_INK_CONTRAST, _NOISE_SIGMAS * sigma) or small_level < _MIN_SMALL_CONTRAST:
        raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
    # 4. Normalise the ink to [0, 1] and drop faint noise (soft threshold keeps anti-aliasing).
    thresh = min(max(_NOISE_SIGMAS * sigma / level, _MIN_SOFT_THRESHOLD), 0.5)
    ink *= np.float32(1.0 / (level * (1.0 - thresh)))
    ink -= np.float32(thresh / (1.0 - thresh))
    np.clip(ink, 0.0, 1.0, out=ink)
    return ink


def _digit_crop(ink: np.ndarray) -> np.ndarray:
    """Steps 5-6: the digit's own strokes, cropped (edge lines and specks dropped, blur re-sharpened)."""
    import cv2  # lazily: only the worker (and training) preprocess; the web never loads OpenCV

    # 5. Keep the digit: drop lines along the image's edge, then specks (8-connected blobs).
    _clear_edge_lines(ink)
    # Grana's block-based labelling: a third faster than the default on one thread, the same labels.
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        (ink > 0).view(np.uint8), 8, cv2.CV_32S, cv2.CCL_BBDT)
    if count <= 1:
        raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
    keep = _select_components(labels, stats, ink.shape)
    # The kept blobs' joint bounding box from their stats; only the pixels inside it are looked up.
    left, top, width, height = (stats[keep, k] for k in range(4))
    top, bottom, left, right = top.min(), (top + height).max(), left.min(), (left + width).max()
    crop = ink[top:bottom, left:right] * keep[labels[top:bottom, left:right]]
    if DIGIT_BOX / max(crop.shape) < 0.5:
        # 6. Well above MNIST's resolution: re-sharpen stroke edges (blur, soft focus) the way
        # MNIST's binary NIST scans were, so the box filter below makes MNIST's anti-aliasing.
        crop = np.clip((_even_strokes(crop) - (0.5 - _EDGE_RAMP)) * np.float32(0.5 / _EDGE_RAMP), 0.0, 1.0)
        rows = np.flatnonzero(crop.any(axis=1))
        cols = np.flatnonzero(crop.any(axis=0))
        if rows.size == 0:
            raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
        crop = _thicken_thin_strokes(crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return crop


def _even_strokes(crop: np.ndarray) -> np.ndarray:
    """Each stretch of stroke measured against its own peak, not the digit's strongest: a faint one is kept whole."""
    size = max(3, round(max(crop.shape) * _PEAK_WINDOW) | 1)
    peak = _max_filter(crop, size)
    return crop / np.maximum(peak, _PEAK_FLOOR)


def _clear_edge_lines(ink: np.ndarray) -> None:
    """Blank rows/columns at the image's edge that are mostly ink: frames, margins, scanner edges.

    Done before labelling because a digit that touches such a line would otherwise become one
    blob with it. A digit touching the edge covers only a short stretch of the edge row.
    """
    h, w = ink.shape
    band = max(2, round(_EDGE_BAND * min(h, w)))
    for lines in (ink[:band + 1], ink[::-1][:band + 1], ink.T[:band + 1], ink.T[::-1][:band + 1]):  # views
        run = 0  # rows from the edge inward that are mostly ink
        while run < len(lines) and np.count_nonzero(lines[run]) >= 0.5 * lines[run].size:
            run += 1
        if 0 < run <= band:  # a thin line; a thicker run is something else (a tight crop's bar)
            lines[:run] = 0.0


def _select_components(labels: np.ndarray, stats: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A lookup table (index = label) of the connected components that make up the digit.

    ``labels`` and ``stats`` (left, top, width, height, area per label; 0 the background) are OpenCV's.
    """
    import cv2

    count = len(stats) - 1
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    areas[0] = 0
    h, w = shape
    touches = np.zeros(count + 1, bool)
    touches[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    touches[0] = False
    candidates = areas.copy()
    if touches.any():
        # Lines along the edge (a frame, a ruled margin, a scanner's edge): blobs lying mostly
        # within a thin band along the border. A digit that merely touches the edge does not.
        band = max(2, round(_EDGE_BAND * min(h, w)))
        edge = np.ones(shape, bool)
        edge[band:h - band, band:w - band] = False
        in_band = np.bincount(labels[edge], minlength=count + 1)
        lines = touches & (in_band >= 0.5 * areas)
        if (candidates[~lines] > 0).any():
            candidates[lines] = 0
    main = int(np.argmax(candidates))
    main_area = candidates[main]
    keep = candidates >= _SPECK_FRACTION * main_area
    # Small blobs next to the main one are broken strokes, not specks.
    left, top, width, height = (stats[:, k].astype(np.int64) for k in range(4))
    reach = _NEAR_FRACTION * max(height[main], width[main])
    for i in np.flatnonzero((candidates >= _FRAGMENT_FRACTION * main_area) & ~keep):
        gap_y = max(top[main] - (top[i] + height[i]), top[i] - (top[main] + height[main]), 0)
        gap_x = max(left[main] - (left[i] + width[i]), left[i] - (left[main] + width[main]), 0)
        if max(gap_y, gap_x) <= reach:
            keep[i] = True
    keep[0] = False
    return keep


def _thicken_thin_strokes(crop: np.ndarray) -> np.ndarray:
    """Widen hairline strokes (a thin pen on a large canvas) to a typical MNIST stroke width.

    The box filter averages a hairline away to a faint 1 px trace that the model, trained on
    pen strokes about 2.4 px wide in the 20 px box, misreads; grey dilation restores the width.
    """
    ink = crop >= 0.5
    area = np.count_nonzero(ink)
    # Boundary pixels: ink with a 4-neighbour outside the ink. For a stroke of width w and
    # length L, area = w*L and the boundary has about 2*L pixels.
    padded = np.pad(ink, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & ink
    boundary = area - np.count_nonzero(interior)
    if area == 0 or boundary == 0:
        return crop
    box_scale = DIGIT_BOX / max(crop.shape)
    width = 2.0 * area / boundary * box_scale  # in pixels of the 20 px box
    if width >= _MIN_STROKE:
        return crop
    radius = round((_TARGET_STROKE - width) / 2 / box_scale)
    if radius < 1:
        return crop
    # A square footprint is separable (cheap at any radius); the box filter rounds the corners.
    return _max_filter(np.pad(crop, radius), 2 * radius + 1)


def _max_filter(image: np.ndarray, size: int) -> np.ndarray:
    """Each pixel the largest within a ``size`` square around it (grey dilation; outside the image ignored)."""
    import cv2

    return cv2.dilate(image, np.ones((size, size), np.uint8))


def _fit_and_centre(crop: np.ndarray) -> np.ndarray:
    """Fit the crop's long side to 20 px (anti-aliased), paste in 28x28 with its centre of mass centred."""
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = _DOWNSCALE_FILTER if scale < 1 else Image.Resampling.BICUBIC
    digit = np.array(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    np.clip(digit, 0.0, None, out=digit)
    peak = float(digit.max())
    if peak <= 0:
        raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
    # Strokes thinner than a box pixel come out faint: restore MNIST's saturated stroke cores.
    digit *= np.float32(1.0 / peak)

    dh, dw = digit.shape
    total = float(digit.sum())
    com_y = float(digit.sum(axis=1) @ np.arange(dh)) / total
    com_x = float(digit.sum(axis=0) @ np.arange(dw)) / total
    # Integer shift (no resampling blur), clamped so the whole digit stays inside the frame.
    top = min(max(round(MNIST_CENTRE[0] - com_y), 0), SIZE - dh)
    left = min(max(round(MNIST_CENTRE[1] - com_x), 0), SIZE - dw)
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top:top + dh, left:left + dw] = np.minimum(digit, 1.0)
    return out
