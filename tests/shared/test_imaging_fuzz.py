"""Fuzzing the decoder and the preprocessing (hypothesis, bounded): any bytes give an image or ImageRejected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.imaging import ImageRejected, inspect_image
from shared.preprocessing import preprocess, preprocess_gray
from tests.shared.test_imaging import encode, seven

SEEDS = [encode(seven(), "PNG"), encode(seven().convert("RGB"), "JPEG"), encode(seven().convert("P"), "GIF"),
         encode(seven(), "BMP"), encode(seven().convert("RGB"), "WEBP")]
# A numpy warning (empty slice, division by zero) is a bug the fuzzer found, not noise.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes) -> None:
    """The contract: a valid MNIST-style array, or ImageRejected; never another exception."""
    try:
        inspect_image(data)
        out = preprocess(data)
    except ImageRejected as exc:
        assert exc.code and str(exc)
        return
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
       st.one_of(st.none(), st.integers(8, 4000)))
def test_damaged_real_images(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _check(bytes(data[:cut] if cut else data))


@FUZZ
@given(st.integers(2, 96), st.integers(2, 96), st.integers(0, 2**32 - 1), st.sampled_from(["noise", "blob", "flat"]))
def test_any_grey_picture(height: int, width: int, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        gray = rng.random((height, width), dtype=np.float32)
    elif kind == "flat":
        gray = np.full((height, width), rng.random(), np.float32)
    else:
        gray = np.ones((height, width), np.float32)
        y, x = rng.integers(0, height), rng.integers(0, width)
        gray[max(0, y - 3):y + 3, max(0, x - 3):x + 3] = rng.random()
    try:
        out = preprocess_gray(gray)
    except ImageRejected:
        return
    assert out.shape == (28, 28) and np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_the_seeds_themselves_are_read():
    for data in SEEDS:
        assert preprocess(data).max() > 0.5
