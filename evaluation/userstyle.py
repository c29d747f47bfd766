"""Seeded generator of "user-style" uploads (photos, scans, drawings) made from MNIST digits.

Each MNIST digit is scaled up smoothly to pen-stroke size and rendered the way people actually
upload digits: dark ink on light paper, off-centre on a few-hundred-pixel canvas, with uneven
lighting, blur, JPEG artefacts, sensor noise, colour casts, transparency, specks and tilt.
Used by the accuracy tests and by the benchmarks; deterministic for a given seed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# The kinds, in the order user_style_set cycles through them.
KINDS: tuple[str, ...] = (
    "paper",      # dark ink on light paper, scaled up, off-centre, PNG
    "gradient",   # grey paper lit unevenly (a lighting gradient across the sheet)
    "blur",       # out of focus
    "jpeg",       # JPEG at quality 30-80
    "noise",      # sensor noise
    "colour",     # RGB photo: coloured ink (blue/black pen) on tinted paper
    "alpha",      # RGBA PNG: ink opaque, background fully transparent (and black underneath)
    "specks",     # a thin border line along an edge plus a speck or two
    "rotated",    # tilted by up to +-10 degrees
    "photo",      # all of it at once, milder: gradient, tint, blur, noise, tilt, JPEG
    "cropped",    # cropped tight: the digit fills the picture, touching or nearly touching its edges
)


def mnist_dir(repo_root: Path) -> Path:
    """Where the offline MNIST copy lives: ``shared/data/mnist`` beside the repository checkout."""
    return repo_root.resolve().parent / "shared" / "data" / "mnist"


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    if fmt == "PNG":
        params.setdefault("compress_level", 1)  # fast; the pixels are the same at any level
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _scaled_digit(digit: np.ndarray, height: int, angle: float) -> np.ndarray:
    """The digit's ink cropped to its box and scaled up smoothly to ``height`` px, then tilted."""
    rows = np.flatnonzero(digit.max(axis=1))
    cols = np.flatnonzero(digit.max(axis=0))
    crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = height / crop.shape[0]
    size = (max(2, round(crop.shape[1] * scale)), max(2, round(crop.shape[0] * scale)))
    # Bicubic upscaling turns MNIST's anti-aliased pixels into smooth pen-like strokes.
    layer = Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC)
    if angle:
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _ink_layer(digit: np.ndarray, rng: np.random.Generator, canvas: tuple[int, int],
               height_frac: tuple[float, float], angle: float) -> np.ndarray:
    """Ink coverage in [0, 1] on a canvas (H, W): the digit scaled up smoothly and placed off-centre."""
    h_canvas, w_canvas = canvas
    ink = _scaled_digit(digit, int(min(canvas) * rng.uniform(*height_frac)), angle)
    ink = ink[:h_canvas, :w_canvas]  # a tilted tall digit may just exceed a small canvas
    out = np.zeros(canvas, np.float32)
    top = int(rng.integers(0, h_canvas - ink.shape[0] + 1))
    left = int(rng.integers(0, w_canvas - ink.shape[1] + 1))
    out[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    return out


def _cropped_layer(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tight crop: the digit fills the picture, with at most 10% of its height as margin per side."""
    ink = _scaled_digit(digit, int(rng.integers(80, 401)), 0.0)
    # Margins relative to the digit's height (as someone cropping by eye leaves them), so a
    # narrow "1" is not cropped any tighter than a "0".
    top, bottom, left, right = (int(rng.uniform(0.0, 0.1) * ink.shape[0]) for _ in range(4))
    return np.pad(ink, ((top, bottom), (left, right)))


def _lighting(rng: np.random.Generator, canvas: tuple[int, int], strength: float) -> np.ndarray:
    """A multiplicative illumination field: a linear gradient in a random direction plus vignetting."""
    h, w = canvas
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * xx + np.sin(theta) * yy  # in [-0.7, 0.7]
    vignette = xx**2 + yy**2  # in [0, 0.5]
    field = 1.0 - strength * (ramp + 0.5) - 0.3 * strength * vignette
    return np.clip(field, 0.2, 1.0)


def _blur(gray: np.ndarray, radius: float) -> np.ndarray:
    # PIL's GaussianBlur works on 8-bit images; blurring the 0-255 rendering loses nothing visible.
    as8 = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8))
    return np.asarray(as8.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def make_user_style(digit: np.ndarray, rng: np.random.Generator, kind: str) -> bytes:
    """Render one 28x28 uint8 MNIST digit (white on black) as an encoded user-style upload of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    ink = _ink_for(digit, rng, kind)
    gray, ink_r = _photographed(ink, rng, kind)
    return _encoded(gray, ink, ink_r, rng, kind)


def _ink_for(digit: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """The digit's ink on a canvas of its own size, turned or cropped as `kind` says."""
    angle = 0.0
    if kind == "rotated":
        angle = float(rng.uniform(4, 10) * rng.choice([-1, 1]))
    elif kind == "photo":
        angle = float(rng.uniform(-6, 6))
    if kind == "cropped":
        return _cropped_layer(digit, rng)
    return _ink_layer(digit, rng, (int(rng.integers(200, 601)), int(rng.integers(200, 601))), (0.3, 0.85), angle)


def _photographed(ink: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, float]:
    """Grey levels of ink on paper under `kind`'s light, specks and blur; and the ink's reflectance."""
    # Reflectance model: paper reflects a lot, ink little; lighting multiplies both (as in a photo).
    paper = rng.uniform(0.8, 0.97)
    ink_r = rng.uniform(0.03, 0.3)
    if kind in ("gradient", "photo"):
        paper = rng.uniform(0.65, 0.9)
    reflect = paper - (paper - ink_r) * ink
    light: np.ndarray | np.floating = np.float32(1.0)
    if kind == "gradient":
        light = _lighting(rng, ink.shape, rng.uniform(0.3, 0.5))
    elif kind == "photo":
        light = _lighting(rng, ink.shape, rng.uniform(0.15, 0.35))
    gray = 255.0 * reflect * light
    if kind == "specks":
        gray = _add_border_and_specks(gray, ink, rng, ink_r * 255)
    if kind in ("blur", "photo"):
        # Relative to stroke size: strokes are ~2.5 MNIST pixels, i.e. ~2.5 * scale canvas pixels.
        scale = max(1.0, float(ink.any(axis=1).sum()) / 20.0)
        radius = scale * (rng.uniform(0.3, 0.7) if kind == "blur" else rng.uniform(0.1, 0.3))
        gray = _blur(gray, radius)
    return gray, float(ink_r)


def _encoded(gray: np.ndarray, ink: np.ndarray, ink_r: float, rng: np.random.Generator, kind: str) -> bytes:
    """The picture as the file `kind` arrives in: colour JPEG, noisy or alpha PNG, grey JPEG or PNG."""
    if kind in ("colour", "photo"):
        rgb = _colourise(gray, ink, rng)
        if kind == "photo":
            rgb = rgb + rng.normal(0, rng.uniform(2, 6), rgb.shape)
            rgb8 = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
            return _encode(rgb8, "JPEG", quality=int(rng.integers(50, 86)))
        rgb8 = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
        return _encode(rgb8, "JPEG", quality=90)
    if kind == "noise":
        gray = gray + rng.normal(0, rng.uniform(6, 16), gray.shape)
    if kind == "alpha":
        # What a drawing app exports: ink pixels opaque, everything else transparent *black*, so a
        # reader that drops alpha instead of compositing on white sees black ink on black.
        h, w = ink.shape
        rgba = np.zeros((h, w, 4), np.uint8)
        pen = rng.integers(0, 60, 3)
        rgba[..., :3] = pen
        rgba[..., 3] = np.clip(ink * 255.0 * rng.uniform(0.85, 1.0), 0, 255).astype(np.uint8)
        return _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    gray8 = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L")
    if kind == "jpeg":
        return _encode(gray8, "JPEG", quality=int(rng.integers(30, 81)))
    return _encode(gray8, "PNG")


def _add_border_and_specks(gray: np.ndarray, ink: np.ndarray, rng: np.random.Generator,
                           dark: float) -> np.ndarray:
    """A thin dark line along one or two edges (a scan's edge, a ruled margin) plus 1-2 ink specks."""
    out = gray.copy()
    h, w = out.shape
    for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
        t = int(rng.integers(1, 4))
        if side == 0:
            out[:t, :] = dark
        elif side == 1:
            out[-t:, :] = dark
        elif side == 2:
            out[:, :t] = dark
        else:
            out[:, -t:] = dark
    rows, cols = np.nonzero(ink > 0.05)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    yy, xx = np.mgrid[0:h, 0:w]
    wanted, placed = int(rng.integers(1, 3)), 0
    for _ in range(50):  # find spots clear of the digit (a speck touching a stroke is part of it)
        if placed == wanted:
            break
        r = float(rng.uniform(1.5, 4.0))
        cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
        margin = 15 + r
        if top - margin < cy < bottom + margin and left - margin < cx < right + margin:
            continue
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = dark
        placed += 1
    return out


def _colourise(gray: np.ndarray, ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB from grey: a tinted paper (warm lamp / cool daylight) and a black or blue pen."""
    tint = np.array(rng.choice([[1.0, 0.93, 0.8], [0.85, 0.92, 1.0], [1.0, 1.0, 0.9], [0.95, 1.0, 0.95]]),
                    np.float32)
    pen = np.array(rng.choice([[0.3, 0.35, 1.0], [1.0, 1.0, 1.0], [0.25, 0.3, 0.9]]), np.float32)
    rgb = gray[..., None] * tint
    # Where the ink is, pull the colour toward the pen's hue (a blue pen darkens red/green more).
    darkening = (1.0 - pen)[None, None, :] * ink[..., None] * 0.6
    return rgb * (1.0 - darkening)


def sample_indices(total: int, n: int, seed: int = 0) -> np.ndarray:
    """Which of ``total`` digits user_style_set(..., n, seed) renders, in order (to compare with raw MNIST)."""
    return np.random.default_rng(seed).choice(total, size=n, replace=n > total)


def user_style_set(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> list[tuple[bytes, int, str]]:
    """``n`` user-style uploads (encoded bytes, label, kind) from a seeded sample of digits ``x``/``y``."""
    picks = sample_indices(len(x), n, seed)
    rng = np.random.default_rng([seed, 1])  # rendering draws from its own stream
    out: list[tuple[bytes, int, str]] = []
    for i, idx in enumerate(picks):
        kind = KINDS[i % len(KINDS)]
        out.append((make_user_style(x[idx], rng, kind), int(y[idx]), kind))
    return out


def resize_only(data: bytes) -> np.ndarray:
    """The naive baseline: decode, grey, squash to 28x28, scale to [0, 1] (no inversion, no centring)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L").resize((28, 28)), dtype=np.float32) / 255.0


def accuracy_by_kind(labels: list[int], kinds: list[str], predicted: np.ndarray) -> dict[str, float]:
    """Accuracy per kind (of any set's kinds, in order of appearance) plus ``"all"``: the figures reported."""
    labels_arr, kinds_arr = np.asarray(labels), np.asarray(kinds)
    out = {k: float(np.mean(predicted[kinds_arr == k] == labels_arr[kinds_arr == k])) for k in dict.fromkeys(kinds)}
    out["all"] = float(np.mean(predicted == labels_arr))
    return out


def encode_png(digit: np.ndarray) -> bytes:
    """A raw 28x28 uint8 MNIST digit as PNG bytes (what a faithful MNIST-style upload is)."""
    return _encode(Image.fromarray(np.asarray(digit, np.uint8), "L"), "PNG")

