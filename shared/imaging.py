"""Decode and validate uploaded images: the web's check of every upload, and the worker's decoding.

* the web tier calls :func:`inspect_image` on every upload to refuse bad input early with a
  clear message (format, declared dimensions, truncation, blank images), before storing it;
* the worker calls :func:`load_grayscale` on the stored bytes (decode, composite on white, grey),
  then the MNIST recipe of shared/preprocessing.py.

Only numpy and PIL are imported here (never scipy, never TensorFlow).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import cast

import numpy as np
from PIL import Image, ImageFile, ImageOps

from shared.limits import DEFAULT_LIMITS, ImageLimits

log = logging.getLogger(__name__)

# Formats accepted for upload (PIL's names). MPO is what PIL calls the JPEGs many phones write
# (a JPEG with a second, preview image appended), so it counts as JPEG.
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP", "TIFF"})
_FORMAT_ALIASES = {"MPO": "JPEG"}


# Working resolution: the digit ends up 20 px tall, so analysing a larger picture buys nothing
# but time. Images are box-reduced (area averaging) until their long side is at most this.
WORK_SIDE = 384
# inspect_image's early "blank" test is deliberately laxer, so the web never refuses an image that
# the worker's preprocessing (shared/preprocessing.py) would accept: grey levels (box-reduced)
# spanning less than this fraction of the brightest level.
_BLANK_SPAN = 0.04


class ImageRejected(ValueError):
    """An upload that cannot be used: ``code`` for machines, ``str(exc)`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message



@dataclass(frozen=True)
class ImageInfo:
    """What inspect_image learnt about an acceptable upload (dimensions as declared in the file)."""

    format: str
    width: int
    height: int
    mode: str
    frames: int



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


def inspect_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> ImageInfo:
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


def load_grayscale(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
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
