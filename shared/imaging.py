"""Decode and validate uploaded images, and turn them into MNIST-style 28x28 digits.

Two callers with different budgets:

* the web tier calls :func:`inspect_image` on every upload to refuse bad input early with a
  clear message (format, declared dimensions, truncation, blank images), before storing it;
* the worker calls :func:`preprocess` on the stored bytes: decode, composite on white, grey,
  then the MNIST recipe (background, polarity, contrast, noise, crop, fit to 20 px, centre of
  mass to the centre of 28x28).

Only numpy and PIL are imported here; scipy is imported inside the preprocessing functions so
the web's validation path never pays for it (and TensorFlow is never involved).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger(__name__)

# Formats accepted for upload (PIL's names). MPO is what PIL calls the JPEGs many phones write
# (a JPEG with a second, preview image appended), so it counts as JPEG.
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF"})
_FORMAT_ALIASES = {"MPO": "JPEG"}

MIN_SIDE = 8  # px: below this there is no room for a digit
MAX_SIDE = 12_000  # px: larger than any phone camera
MAX_PIXELS = 40_000_000  # 40 MP: about 160 MB decoded as RGBA, the most one upload may cost

# Working resolution: the digit ends up 20 px tall, so analysing a larger picture buys nothing
# but time. Images are box-reduced (area averaging) until their long side is at most this.
WORK_SIDE = 384
# The background is fitted on an even smaller copy: it is smooth by definition.
_BG_SIDE = 32
_BG_ITERATIONS = 8

# Ink must stand out from the background by this much (fraction of full scale) to be a digit.
MIN_INK_CONTRAST = 0.1
# inspect_image's early "blank" test is deliberately laxer, so the web never refuses an image
# that preprocess would accept: grey levels (box-reduced) spanning less than this fraction of
# the brightest level.
_BLANK_SPAN = 0.04
_NOISE_SIGMAS = 4.0  # ink must be this many noise standard deviations above the background
_LEVEL_PIXELS = 24  # the ink's level: the value of its this-many strongest pixels
_MIN_SMALL_CONTRAST = 0.025  # ink contrast that must survive averaging onto the 32 px copy
# Large crops are re-sharpened before the box filter: ink below 0.5 - this fades to none, above
# 0.5 + this is solid (MNIST was made from binary scans; this undoes blur and soft focus).
_EDGE_RAMP = 0.25
# Stroke widths in pixels of the 20 px box: MNIST's are 2.4 median, 1.4 at the 1st percentile.
_MIN_STROKE = 1.4
_TARGET_STROKE = 2.2
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
# when reducing; BOX is plain area averaging, the closest to how MNIST was made).
_DOWNSCALE_FILTER = Image.Resampling.BOX


class ImageRejected(ValueError):
    """An upload that cannot be used: ``code`` for machines, ``str(exc)`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on an upload's declared dimensions, checked before any pixel is decoded."""

    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    min_side: int = MIN_SIDE


@dataclass(frozen=True)
class ImageInfo:
    """What inspect_image learnt about an acceptable upload (dimensions as declared in the file)."""

    format: str
    width: int
    height: int
    mode: str
    frames: int


_DEFAULT_LIMITS = ImageLimits()


def _looks_like_image(data: bytes) -> bool:
    """Whether ``data`` starts with the signature of one of the allowed formats."""
    if data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")):
        return True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    # BMP's "BM" alone is too weak (text can start with it): its reserved header bytes are zero.
    return data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00"


def _sniff_non_image(data: bytes) -> str | None:
    """A description of well-known non-image content (documents, markup, text), else None."""
    if _looks_like_image(data):
        return None  # an image's own metadata may well contain "<svg" or plain text
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").lstrip()
    lower = head.lower()
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if b"<svg" in lower:
        return "an SVG drawing (vector images are not supported)"
    if lower.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if lower.startswith(b"<"):
        return "an XML/markup document"
    # Text: valid UTF-8 (allowing a multi-byte character cut at the sample's end), all printable.
    sample = data[:1024]
    for candidate in (sample, sample[:-3]):
        try:
            text = candidate.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(ch.isprintable() or ch in "\r\n\t\f" for ch in text):
            return "a text file"
        break
    return None


def _damaged() -> ImageRejected:
    return ImageRejected("truncated", "the image data is truncated or corrupt")


def _open(data: bytes, limits: ImageLimits, draft_side: int | None) -> tuple[Image.Image, ImageInfo]:
    """Identify, check the declared size, and decode the first frame; ImageRejected on any failure.

    ``draft_side``: let JPEG decode directly at a reduced scale (DCT scaling) no smaller than this,
    which is several times faster and still reads (so checks) the whole compressed stream.
    """
    img = _identify(data)
    fmt = img.format or "unknown"
    # The declared size, from the header, before a single pixel is decoded.
    width, height = img.size
    mode = img.mode
    _check_declared_size(img, limits)
    frames = _decode_first_frame(img, fmt, draft_side)
    info = ImageInfo(format=_FORMAT_ALIASES.get(fmt, fmt), width=width, height=height, mode=mode, frames=frames)
    return img, info


def _identify(data: bytes) -> Image.Image:
    """The image PIL recognises in the bytes (nothing decoded yet), in a format we take; else ImageRejected."""
    if not data:
        raise ImageRejected("empty", "the upload is empty (0 bytes)")
    what = _sniff_non_image(data)
    if what is not None:
        raise ImageRejected("not_an_image", f"this is {what}, not an image")

    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses, from the header alone, images over twice its own pixel limit (and warns
        # over the limit; caught here when the application turns that warning into an error).
        raise ImageRejected("too_large", "the image's declared dimensions are far too large") from exc
    except Exception as exc:  # PIL's plugins raise many exception types on malformed data
        if _looks_like_image(data):
            raise _damaged() from exc
        raise ImageRejected("not_an_image", "this file is not an image we can read") from exc

    fmt = img.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        img.close()
        allowed = ", ".join(sorted(ALLOWED_FORMATS - set(_FORMAT_ALIASES)))
        raise ImageRejected("unsupported_format", f"{fmt} images are not supported; use {allowed}")
    return img


def _check_declared_size(img: Image.Image, limits: ImageLimits) -> None:
    """Refuse (and close) an image whose header declares a size outside the limits."""
    width, height = img.size
    if width < limits.min_side or height < limits.min_side:
        img.close()
        raise ImageRejected(
            "too_small", f"the image is {width}x{height} px; each side must be at least {limits.min_side} px"
        )
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        img.close()
        raise ImageRejected(
            "too_large",
            f"the image is {width}x{height} px; the limit is {limits.max_side} px a side and "
            f"{limits.max_pixels / 1e6:g} megapixels",
        )


def _decode_first_frame(img: Image.Image, fmt: str, draft_side: int | None) -> int:
    """Decode the first frame (a JPEG at a reduced scale if asked); its frame count. Damaged data: ImageRejected."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in this process asked PIL to accept cut-off files; uploads must not be.
        log.warning("PIL's LOAD_TRUNCATED_IMAGES was on; turning it off so truncated uploads are refused")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    (width, height), mode = img.size, img.mode  # as declared, before counting frames seeks
    try:
        frames = int(getattr(img, "n_frames", 1))  # counting may seek: go back to the first frame
        if img.tell() != 0:
            img.seek(0)
        if draft_side is not None and fmt in ("JPEG", "MPO"):
            long_side = max(width, height)
            want = (max(1, width * draft_side // long_side), max(1, height * draft_side // long_side))
            img.draft("L" if mode in ("L", "RGB") else mode, want)
        img.load()
    except Exception as exc:  # any decoder failure means damaged data
        img.close()
        raise _damaged() from exc
    return frames


def _to_gray(img: Image.Image, max_side: int | None) -> Image.Image:
    """The decoded frame as grey ('L', or 'F' in [0, 1] for 16/32-bit), alpha on white, box-reduced."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels are paper: composite on white (their RGB is often black underneath).
        rgba = img.convert("RGBA")
        gray = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")
    elif mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit grey: keep the full precision as float instead of clipping to 8 bits.
        arr = np.asarray(img).astype(np.float32)
        top = float(arr.max()) if arr.size else 1.0
        if mode.startswith("I;16") or (mode == "I" and top > 255):
            arr /= 65535.0
        else:  # 'I' holding 8-bit values, or 'F' in whatever range it came in
            arr /= 255.0 if mode == "I" else max(top, 1.0)
        gray = Image.fromarray(np.clip(arr, 0.0, 1.0), mode="F")
    elif mode == "L":
        gray = img
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        gray = img.convert("RGB").convert("L")
    else:  # RGB, P, 1, ...
        gray = img.convert("L")
    if max_side is not None:
        factor = math.ceil(max(gray.size) / max_side)
        if factor > 1:
            gray = gray.reduce(factor)  # box filter: exact area averaging, and fast
    return gray


def _as_array(gray: Image.Image) -> np.ndarray:
    arr = np.asarray(gray, dtype=np.float32)
    return arr if gray.mode == "F" else arr * np.float32(1 / 255)


def inspect_image(data: bytes, limits: ImageLimits = _DEFAULT_LIMITS) -> ImageInfo:
    """Validate an upload cheaply (format, size, decodability, not blank); ImageRejected if unusable."""
    img, info = _open(data, limits, draft_side=64)
    try:
        # Blank test on a small box-averaged copy: averaging removes noise but keeps any digit.
        gray = _to_gray(img, max_side=256)
        lo, hi = cast(tuple[float, float], gray.getextrema())  # one band: _to_gray gives L or F
    except Exception as exc:  # a conversion failure is a damaged image too
        raise _damaged() from exc
    finally:
        img.close()
    if gray.mode == "L":
        lo, hi = lo / 255.0, hi / 255.0
    # Relative to the brightest level too: dark ink on dimly lit paper still counts. Laxer than
    # preprocess (MIN_INK_CONTRAST), so the web never refuses what the worker would accept.
    if hi - lo < _BLANK_SPAN * max(hi, 0.25):
        raise ImageRejected("no_ink", "the image is blank: no digit to read")
    return info


def load_grayscale(data: bytes, limits: ImageLimits = _DEFAULT_LIMITS) -> np.ndarray:
    """Decode the first frame to grey float32 in [0, 1] (0 = black), upright, alpha on white, reduced."""
    img, _ = _open(data, limits, draft_side=WORK_SIDE)
    try:
        try:
            # Phones store photos sideways plus an orientation tag.
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a broken EXIF block must not cost the upload: use it as stored
            log.info("ignoring unreadable EXIF orientation", exc_info=True)
        return _as_array(_to_gray(img, max_side=WORK_SIDE))
    except Exception as exc:  # a conversion failure is a damaged image too
        raise _damaged() from exc
    finally:
        img.close()


def preprocess(data: bytes, limits: ImageLimits = _DEFAULT_LIMITS) -> np.ndarray:
    """Upload bytes to an MNIST-style (28, 28) float32 digit in [0, 1]; ImageRejected if unusable."""
    return preprocess_gray(load_grayscale(data, limits))


def _reduce(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Box-average a 2-D array so its long side is at most ``max_side`` (crop the remainder)."""
    factor = math.ceil(max(arr.shape) / max_side)
    if factor <= 1:
        return arr
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    if h == 0 or w == 0:
        return arr
    return arr[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


@dataclass(frozen=True)
class _Background:
    """A smooth background surface: quadratic coefficients, clipped to the range seen on paper."""

    coef: np.ndarray
    low: float
    high: float

    def at(self, shape: tuple[int, ...]) -> np.ndarray:
        """The surface sampled on a grid of ``shape`` spanning the same image."""
        h, w = shape
        y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        c0, cx, cy, cxx, cxy, cyy = (np.float32(c) for c in self.coef)
        surface = (c0 + x * (cx + cxx * x)) + y * (cy + cyy * y + cxy * x)
        # Where the paper is hidden (a big digit), the quadratic extrapolates: never beyond
        # what the paper itself showed.
        return np.clip(surface, self.low, self.high)


def _fit_background(small: np.ndarray, paper: float, dark_ink: bool) -> _Background:
    """Fit a quadratic surface to the background (paper, or MNIST's black) of ``small``.

    Lighting across a photographed sheet varies smoothly (a gradient, vignetting), so a
    low-order surface fits the paper. ``paper`` (the border's level) is the starting guess;
    each round refits on the pixels the surface explains, never on ink (one-sided trimming:
    pixels more ink-like than the surface by more than the noise allows), so the surface
    spreads from the border across the sheet even when the digit covers much of it.
    """
    h, w = small.shape
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    design = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], axis=-1).reshape(-1, 6)
    sign = np.float32(-1.0 if dark_ink else 1.0)
    inkness = sign * (small.reshape(-1) - np.float32(paper))  # ink positive, paper about 0
    tolerance = max(4.0 * _noise_sigma(small), 0.03)
    coef = np.zeros(6, np.float32)
    keep = inkness <= tolerance
    for _ in range(_BG_ITERATIONS):
        if np.count_nonzero(keep) < 12:
            break
        a = design[keep]
        # Normal equations (6x6): much cheaper than lstsq's SVD, and well conditioned on [-1, 1].
        try:
            coef = np.linalg.solve(a.T @ a, a.T @ inkness[keep]).astype(np.float32)
        except np.linalg.LinAlgError:
            break
        fit = np.clip(design @ coef, inkness[keep].min(), inkness[keep].max())
        new_keep = inkness - fit <= tolerance
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    kept = inkness[keep] if keep.any() else np.zeros(1, np.float32)
    # Back from "inkness" to grey levels: background = paper + sign * surface.
    gray_coef = sign * coef
    gray_coef[0] += paper
    bounds = (paper + sign * float(kept.min()), paper + sign * float(kept.max()))
    return _Background(gray_coef, float(min(bounds)), float(max(bounds)))


def _ink_map(gray: np.ndarray, background: _Background, dark_ink: bool) -> np.ndarray:
    """Ink strength (background 0, ink positive) from grey levels and the fitted background."""
    bg = background.at(gray.shape)
    if dark_ink:
        # Ink on lit paper: light is multiplicative, so dividing by the paper's brightness
        # flattens uneven lighting and gives ink the same contrast in shade as in light.
        return 1.0 - gray / np.maximum(bg, 0.05)
    return gray - bg  # light ink on a dark ground (MNIST, chalk): nothing to divide by


def _noise_sigma(ink: np.ndarray) -> float:
    """Pixel noise (standard deviation) from neighbour differences, blind to the content.

    Differences between adjacent pixels are pure noise except across stroke edges (a minority),
    so their median is a robust estimate even when ink covers half the image.
    """
    sample = ink[::2] if ink.shape[0] > 64 else ink  # every other row is plenty
    diffs = np.abs(np.diff(sample, axis=1))
    if diffs.size == 0:  # a one-pixel-wide picture has no neighbours to compare: no measurable noise
        return 0.0
    return float(np.median(diffs)) / (0.6745 * math.sqrt(2.0))


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
    return _fit_and_centre(_digit_crop(_ink_of(gray)))


def _ink_of(gray: np.ndarray) -> np.ndarray:
    """Steps 1-4: the ink, bright on black, normalised to [0, 1] with faint noise dropped; no_ink if none."""
    # 1. Polarity: the ink is whichever side deviates most from the paper (the border's level),
    # judged on robust extremes (the few dozenth darkest and brightest pixels, not single spikes).
    flat = gray.reshape(-1)
    k = min(_LEVEL_PIXELS, flat.size // 2)
    ranked = np.partition(flat, (k, flat.size - 1 - k))
    darkest, brightest = float(ranked[k]), float(ranked[flat.size - 1 - k])
    paper = float(np.median(_border_pixels(gray)))
    dark_ink = paper - darkest > brightest - paper
    small = _reduce(gray, _BG_SIDE)
    # 2. Background: a smooth surface fitted on the small copy (lighting varies slowly).
    background = _fit_background(small, paper, dark_ink)
    ink = _ink_map(gray, background, dark_ink)

    # 3. Contrast: the ink's level is that of its strongest few dozen pixels (a robust maximum:
    # a hairline stroke has few pixels, single noise spikes are fewer).
    flat = ink.reshape(-1)
    k = min(flat.size, _LEVEL_PIXELS)
    level = float(np.partition(flat, flat.size - k)[flat.size - k])
    sigma = _noise_sigma(ink)
    # No ink: too faint, lost in the noise, or gone on the small copy, whose averaging wipes
    # out noise however strong but keeps a real stroke, even a hairline, visible.
    small_level = float(_ink_map(small, background, dark_ink).max())
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
    from scipy import ndimage  # lazily: the web imports this module and never needs scipy

    # 5. Keep the digit: drop lines along the image's edge, then specks.
    _clear_edge_lines(ink)
    labels, count = ndimage.label(ink > 0, structure=np.ones((3, 3), bool))
    if count == 0:
        raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
    keep = _select_components(labels, count, ink.shape)
    mask = keep[labels]
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = ink[top:bottom, left:right] * mask[top:bottom, left:right]
    if DIGIT_BOX / max(crop.shape) < 0.5:
        # 6. Well above MNIST's resolution: re-sharpen stroke edges (blur, soft focus) the way
        # MNIST's binary NIST scans were, so the box filter below makes MNIST's anti-aliasing.
        crop = np.clip((crop - (0.5 - _EDGE_RAMP)) * np.float32(0.5 / _EDGE_RAMP), 0.0, 1.0)
        rows = np.flatnonzero(crop.any(axis=1))
        cols = np.flatnonzero(crop.any(axis=0))
        if rows.size == 0:
            raise ImageRejected("no_ink", "no digit found: the image has no visible ink")
        crop = _thicken_thin_strokes(crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return crop


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


def _select_components(labels: np.ndarray, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """A lookup table (index = label) of the connected components that make up the digit."""
    from scipy import ndimage

    areas = np.bincount(labels.ravel(), minlength=count + 1).astype(np.float64)
    areas[0] = 0
    boxes = ndimage.find_objects(labels)
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
    mbox = boxes[main - 1]
    reach = _NEAR_FRACTION * max(mbox[0].stop - mbox[0].start, mbox[1].stop - mbox[1].start)
    for i in np.flatnonzero((candidates >= _FRAGMENT_FRACTION * main_area) & ~keep):
        box = boxes[i - 1]
        gap_y = max(mbox[0].start - box[0].stop, box[0].start - mbox[0].stop, 0)
        gap_x = max(mbox[1].start - box[1].stop, box[1].start - mbox[1].stop, 0)
        if max(gap_y, gap_x) <= reach:
            keep[i] = True
    keep[0] = False
    return keep


def _thicken_thin_strokes(crop: np.ndarray) -> np.ndarray:
    """Widen hairline strokes (a thin pen on a large canvas) to a typical MNIST stroke width.

    The box filter averages a hairline away to a faint 1 px trace that the model, trained on
    pen strokes about 2.4 px wide in the 20 px box, misreads; grey dilation restores the width.
    """
    from scipy import ndimage

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
    return ndimage.maximum_filter(np.pad(crop, radius), size=2 * radius + 1)


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
