"""shared.imaging on real, crafted files: every rejection code, every accepted encoding, the MNIST recipe."""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageFilter

from shared import imaging, preprocessing
from shared.config import REPO_ROOT
from shared.imaging import ImageInfo, ImageRejected, inspect_image, load_grayscale
from shared.limits import ImageLimits
from shared.preprocessing import preprocess

# --- building blocks --------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """``img`` encoded as ``fmt`` bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _drawn(size: tuple[int, int], paper: int, ink: int, shape: str) -> Image.Image:
    # Drawn large then reduced with area averaging: anti-aliased like a scan, the same shape at any size.
    w, h = size
    big = Image.new("L", (w * 4, h * 4), paper)
    draw = ImageDraw.Draw(big)
    if shape == "seven":
        draw.line([(0.8 * w, 0.8 * h), (3.2 * w, 0.8 * h), (1.7 * w, 3.4 * h)], fill=ink,
                  width=max(2, round(0.32 * h)), joint="curve")
    else:
        draw.rectangle([1.8 * w, 0.6 * h, 2.2 * w, 3.4 * h], fill=ink)
    return big.resize(size, Image.Resampling.BOX)


def seven(size: tuple[int, int] = (120, 160), paper: int = 235, ink: int = 25) -> Image.Image:
    """A pen-drawn "7": dark ink on light paper, asymmetric (so rotations and flips show)."""
    return _drawn(size, paper, ink, "seven")


def bar(size: tuple[int, int] = (120, 160), paper: int = 235, ink: int = 25) -> Image.Image:
    """A different mark (a "1"-like vertical bar), to tell frames apart."""
    return _drawn(size, paper, ink, "bar")


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images."""
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def shifted_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over shifts of up to one pixel (MNIST's own centring rounds to whole pixels)."""
    return max(corr(np.roll(a, (dy, dx), axis=(0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (8-bit grey) without the pixels to back it up."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def rejection(data: bytes, fn=inspect_image, **kwargs) -> ImageRejected:
    """The ImageRejected that ``fn(data)`` raises."""
    with pytest.raises(ImageRejected) as info:
        fn(data, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The "7" as the worker sees it from a plain PNG: what every other encoding must match."""
    return preprocess(encode(seven(), "PNG"))


def assert_mnist_like(out: np.ndarray) -> None:
    """Shape, type and range of a preprocessed digit, its 20 px box and its centre of mass."""
    assert out.shape == (28, 28)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == pytest.approx(1.0, abs=1e-6)
    rows = np.flatnonzero(out.max(axis=1) > 0.05)
    cols = np.flatnonzero(out.max(axis=0) > 0.05)
    long_side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    assert 19 <= long_side <= 21
    grid = np.arange(28)
    com = (float(out.sum(axis=1) @ grid) / out.sum(), float(out.sum(axis=0) @ grid) / out.sum())
    assert com == pytest.approx((14.0, 14.0), abs=1.0)


# --- rejections -------------------------------------------------------------------------------


def test_rejection_is_a_value_error_with_code_and_message():
    exc = rejection(b"")
    assert isinstance(exc, ValueError)
    assert exc.code == "empty"
    assert "empty" in str(exc)


@pytest.mark.parametrize("fn", [inspect_image, preprocess])
def test_zero_bytes_is_empty(fn):
    assert rejection(b"", fn).code == "empty"


@pytest.mark.parametrize("data", [
    b"hello, I am not an image\n" * 10,
    "Grüße, ceci n'est pas une image ✓\n".encode(),
    b"<!DOCTYPE html>\n<html><head><title>x</title></head><body><img src='7.png'></body></html>",
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
    b'<text x="6" y="22" font-size="24">7</text></svg>',
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
], ids=["text", "utf8-text", "html", "svg", "pdf", "random-bytes"])
def test_non_images_are_not_an_image(data):
    assert rejection(data).code == "not_an_image"
    assert rejection(data, preprocess).code == "not_an_image"


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "TGA"])
def test_other_image_formats_are_unsupported(fmt):
    exc = rejection(encode(seven().convert("RGB"), fmt))
    assert exc.code == "unsupported_format"
    assert fmt in str(exc) and "PNG" in str(exc)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_images_are_truncated(fmt):
    # Noise compresses badly, so half the file is half the pixels.
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    assert inspect_image(data).format == fmt
    assert rejection(data[: len(data) // 2]).code == "truncated"
    assert rejection(data[: len(data) // 2], preprocess).code == "truncated"


def test_png_cut_inside_its_header_is_truncated():
    assert rejection(encode(seven(), "PNG")[:30]).code == "truncated"


def test_truncation_is_caught_even_if_pil_was_told_to_accept_it(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(seven(), "JPEG")
    assert rejection(data[: len(data) // 2]).code == "truncated"


@pytest.mark.parametrize("fn", [inspect_image, preprocess])
@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (13_000, 20), (7_000, 7_000)],
                         ids=["bomb-10G", "bomb-400M", "side", "pixels"])
def test_declared_dimensions_over_the_limit_are_too_large(fn, size):
    data = png_header_only(*size)  # ~60 bytes: the header is all that may be read
    assert len(data) < 100
    assert rejection(data, fn).code == "too_large"


def test_limits_are_the_callers():
    data = encode(seven((200, 200)), "PNG")
    assert rejection(data, limits=ImageLimits(max_pixels=10_000)).code == "too_large"
    assert rejection(data, limits=ImageLimits(max_side=150)).code == "too_large"
    assert rejection(data, limits=ImageLimits(min_side=300)).code == "too_small"
    assert inspect_image(data, ImageLimits()).width == 200


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_tiny_images_are_too_small(size):
    data = encode(Image.new("L", size, 0), "PNG")
    assert rejection(data).code == "too_small"
    assert rejection(data, preprocess).code == "too_small"


@pytest.mark.parametrize("img", [
    Image.new("L", (300, 200), 255),
    Image.new("L", (300, 200), 128),
    Image.new("L", (300, 200), 0),
    Image.new("RGB", (300, 200), (40, 90, 200)),
    Image.new("RGBA", (300, 200), (0, 0, 0, 0)),  # fully transparent: white paper once composited
], ids=["white", "grey", "black", "blue", "transparent"])
def test_uniform_images_are_no_ink(img):
    data = encode(img, "PNG")
    assert rejection(data).code == "no_ink"
    assert rejection(data, preprocess).code == "no_ink"


def test_blank_noisy_photo_of_paper_is_no_ink_for_the_worker():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:300, 0:400]
    paper = 200 + 30 * xx / 400 + rng.normal(0, 6, (300, 400))  # uneven light, sensor noise
    data = encode(Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)), "JPEG", quality=60)
    assert rejection(data, preprocess).code == "no_ink"


def test_nothing_but_image_rejected_escapes_on_damaged_files():
    rng = np.random.default_rng(3)
    sources = [encode(seven(), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]
    for i in range(150):
        data = bytearray(sources[i % len(sources)])
        for pos in rng.integers(0, len(data), int(rng.integers(1, 6))):
            data[pos] = int(rng.integers(0, 256))
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        for fn in (inspect_image, preprocess):
            with contextlib.suppress(ImageRejected):  # anything else fails the test
                fn(bytes(data))


# --- accepted encodings -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_each_allowed_format_is_read(fmt, reference):
    data = encode(seven(), fmt)
    mode = {"GIF": "P", "WEBP": "RGB"}.get(fmt, "L")  # formats without a grey mode
    assert inspect_image(data) == ImageInfo(format=fmt, width=120, height=160, mode=mode, frames=1)
    out = preprocess(data)
    assert_mnist_like(out)
    assert corr(out, reference) > 0.95


def test_animated_gif_uses_its_first_frame(reference):
    frames = [seven().convert("P"), bar().convert("P")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    assert inspect_image(data).frames == 2
    out = preprocess(data)
    assert corr(out, reference) > 0.95
    assert corr(out, preprocess(encode(bar(), "PNG"))) < 0.5


def test_16_bit_grey_is_scaled_not_clipped(reference):
    arr16 = (np.asarray(seven(), np.float64) / 255 * 65535).astype(np.uint16)
    data = encode(Image.fromarray(arr16), "PNG")
    assert inspect_image(data).mode == "I;16"
    gray = load_grayscale(data)
    assert gray.max() == pytest.approx(235 / 255, abs=1e-3)  # clipping to 8 bits would give 1.0
    assert corr(preprocess(data), reference) > 0.95


def test_cmyk_jpeg(reference):
    data = encode(seven().convert("RGB").convert("CMYK"), "JPEG", quality=95)
    assert inspect_image(data).mode == "CMYK"
    assert corr(preprocess(data), reference) > 0.95


def test_palette_png(reference):
    data = encode(seven().convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")
    assert inspect_image(data).mode == "P"
    assert corr(preprocess(data), reference) > 0.95


def test_colour_photo_style_rgb(reference):
    rgb = Image.merge("RGB", [seven(paper=250, ink=60), seven(paper=235, ink=50), seven(paper=200, ink=120)])
    assert corr(preprocess(encode(rgb, "JPEG", quality=85)), reference) > 0.95


def test_transparent_png_is_composited_on_white(reference):
    # A drawing app's export: black everywhere, the digit only in the alpha channel.
    alpha = 255 - np.asarray(seven(paper=255, ink=0))
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., 3] = alpha
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    assert inspect_image(data).mode == "RGBA"
    assert corr(preprocess(data), reference) > 0.95
    la = Image.fromarray(rgba, "RGBA").convert("LA")
    assert corr(preprocess(encode(la, "PNG")), reference) > 0.95


def test_palette_transparency_is_composited_on_white(reference):
    img = seven(paper=255, ink=0).convert("P")
    data = encode(img, "GIF", transparency=255)  # the white paper index is transparent
    assert corr(preprocess(data), reference) > 0.95


@pytest.mark.parametrize(("orientation", "stored_as"), [
    (6, Image.Transpose.ROTATE_90),  # 6: display rotated 90 degrees clockwise
    (8, Image.Transpose.ROTATE_270),  # 8: display rotated 90 degrees counter-clockwise
    (3, Image.Transpose.ROTATE_180),
])
def test_exif_orientation_is_applied(orientation, stored_as):
    upright = preprocess(encode(seven(), "JPEG", quality=95))
    exif = Image.Exif()
    exif[0x0112] = orientation
    sideways = seven().transpose(stored_as)
    data = encode(sideways, "JPEG", quality=95, exif=exif.tobytes())
    assert inspect_image(data).width == sideways.width  # dimensions as stored in the file
    assert corr(preprocess(data), upright) > 0.97
    assert corr(preprocess(encode(sideways, "JPEG", quality=95)), upright) < 0.7  # the test means something


def test_large_photo_is_reduced_early():
    big = seven((3000, 4000))
    gray = load_grayscale(encode(big, "JPEG", quality=90))
    assert max(gray.shape) <= imaging.WORK_SIDE
    assert_mnist_like(preprocess(encode(big, "PNG")))


# --- the MNIST recipe -------------------------------------------------------------------------


def test_output_is_mnist_shaped(reference):
    assert_mnist_like(reference)
    for size in [(40, 300), (300, 40), (28, 28), (600, 450)]:  # thin, wide, MNIST-sized, photo-sized
        assert_mnist_like(preprocess(encode(seven(size), "PNG")))


def test_digit_position_and_size_do_not_matter(reference):
    for box, paste in [((60, 80), (10, 10)), ((240, 320), (350, 250)), ((30, 40), (500, 20))]:
        page = Image.new("L", (640, 600), 235)
        page.paste(seven(box), paste)
        assert shifted_corr(preprocess(encode(page, "PNG")), reference) > 0.9


def test_uneven_lighting_and_specks_are_ignored(reference):
    arr = np.asarray(seven((300, 400)), np.float64)
    yy, xx = np.mgrid[0:400, 0:300]
    arr *= 1.0 - 0.45 * (xx / 300 + yy / 400) / 2  # a lighting gradient across the sheet
    arr[:, :2] = 30  # a scanner's dark edge
    arr[380:386, 20:26] = 30  # a speck
    arr += np.random.default_rng(4).normal(0, 8, arr.shape)  # sensor noise
    data = encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), "JPEG", quality=60)
    out = preprocess(data)
    assert_mnist_like(out)
    assert corr(out, reference) > 0.9


def test_hairline_strokes_are_thickened(reference):
    w, h = 600, 800
    img = Image.new("L", (w, h), 235)
    ImageDraw.Draw(img).line([(0.2 * w, 0.2 * h), (0.8 * w, 0.2 * h), (0.42 * w, 0.85 * h)], fill=25, width=3)
    out = preprocess(encode(img, "PNG"))
    assert (out > 0.5).sum() > 0.7 * (reference > 0.5).sum()  # as much ink as a pen stroke
    assert shifted_corr(out, reference) > 0.8


def test_mnist_digits_pass_through_essentially_unchanged(mnist):
    digits = mnist.x_test[:50]
    outs = [preprocess(encode(Image.fromarray(d), "PNG")) for d in digits]
    scores = [shifted_corr(out, d) for out, d in zip(outs, digits, strict=True)]
    assert min(scores) > 0.9
    assert np.mean(scores) > 0.98
    # The same digits drawn dark on light (as people write) give the same result.
    inverted = [preprocess(encode(Image.fromarray(255 - d), "PNG")) for d in digits[:10]]
    assert all(corr(a, b) > 0.99 for a, b in zip(inverted, outs[:10], strict=True))


def test_preprocess_gray_takes_arrays():
    gray = np.asarray(seven(), np.uint8)
    out8 = preprocessing.preprocess_gray(gray)
    out_float = preprocessing.preprocess_gray(gray.astype(np.float32) / 255)
    np.testing.assert_allclose(out8, out_float, atol=1e-5)
    with pytest.raises(ValueError):
        preprocessing.preprocess_gray(np.zeros((28, 28, 3), np.float32))


def test_web_validation_path_does_not_import_opencv_or_tensorflow():
    probe = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from shared.imaging import inspect_image\n"
        "buf = io.BytesIO(); Image.new('L', (64, 64), 200).crop((0, 0, 64, 64)).save(buf, 'PNG')\n"
        "img = Image.new('L', (64, 64), 230); img.paste(20, (20, 10, 30, 50)); buf = io.BytesIO()\n"
        "img.save(buf, 'PNG'); inspect_image(buf.getvalue())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'cv2', 'scipy', 'tensorflow', 'keras', "
        "'onnxruntime'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_mnist_form_digit_is_used_as_it_is(mnist):
    digit = next(d for d in mnist.x_test if preprocessing.is_mnist_form(d / 255.0))
    out = preprocess(encode(Image.fromarray(digit), "PNG"))
    np.testing.assert_allclose(out, digit / 255.0, atol=1e-6)


def test_a_28px_drawing_of_dark_ink_on_paper_still_goes_through_the_recipe(mnist):
    paper_digit = 255 - mnist.x_test[0]  # the same digit as a person would draw it: dark on white
    assert not preprocessing.is_mnist_form(paper_digit / 255.0)
    out = preprocess(encode(Image.fromarray(paper_digit), "PNG"))
    assert_mnist_like(out)
    assert corr(out, mnist.x_test[0] / 255.0) > 0.8


def test_a_faint_stretch_of_a_blurred_stroke_is_kept_whole():
    # An enlarged low-resolution capture: one stroke dark, the other faint, both blurred. Measured against the
    # digit's darkest ink, the faint one would fall under the re-sharpening threshold and vanish.
    img = Image.new("L", (240, 240), 235)
    draw = ImageDraw.Draw(img)
    draw.line([(80, 40), (80, 190)], fill=20, width=12)  # the dark, upright stroke
    draw.line([(80, 190), (190, 190)], fill=175, width=12)  # the faint foot of an L
    out = preprocess(encode(img.filter(ImageFilter.GaussianBlur(5)), "PNG"))
    rows, cols = np.nonzero(out > 0.5)
    assert cols.max() - cols.min() > 0.6 * (rows.max() - rows.min())  # the foot is there: an L, not an I
