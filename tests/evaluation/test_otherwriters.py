"""evaluation/otherwriters.py, the other-writers evaluation set: deterministic, labelled right, shaped as designed.

Fast and without services: the digits are synthetic strokes, not MNIST (the generator treats both alike).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from evaluation import otherwriters
from evaluation.otherwriters import KINDS, OUTPUT_SIDES, make_other_writer, other_writers_indices, other_writers_set
from evaluation.userstyle import accuracy_by_kind


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Twelve 28x28 uint8 "digits" (white strokes on black, anti-aliased) with labels 0-9, 0, 1."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    shapes = []
    for i in range(12):
        ring = np.abs(np.hypot((yy - 14) / (9 - i % 3), (xx - 14) / (5 + i % 4)) - 1.0) * 5
        bar = np.abs(xx - 14 - (yy - 14) * 0.1 * (i % 5)) / (1 + i % 3)
        dist = ring if i % 2 == 0 else np.minimum(bar + (np.abs(yy - 14) > 9) * 9, ring + 4)
        shapes.append(np.clip(255 * (1.5 - dist), 0, 255).astype(np.uint8))
    return np.stack(shapes), np.array([*range(10), 0, 1])


X, Y = _digits()


def _decode(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        return img.format, np.asarray(img.convert("L"), np.float32) / 255


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    first = other_writers_set(X, Y, 14, seed=5)
    assert first == other_writers_set(X, Y, 14, seed=5)
    assert [data for data, _, _ in first] != [data for data, _, _ in other_writers_set(X, Y, 14, seed=6)]


def test_a_smaller_set_is_the_first_part_of_a_larger_one():
    assert other_writers_set(X, Y, 9, seed=3) == other_writers_set(X, Y, 30, seed=3)[:9]


def test_labels_are_the_source_digits_labels_and_kinds_cycle():
    uploads = other_writers_set(X, Y, 30, seed=1)
    picks = other_writers_indices(len(X), 30, seed=1)
    assert [label for _, label, _ in uploads] == [int(Y[i]) for i in picks]
    assert [kind for _, _, kind in uploads] == [KINDS[i % len(KINDS)] for i in range(30)]


def test_indices_are_a_permutation_then_repeat():
    picks = other_writers_indices(12, 30, seed=2)
    assert sorted(picks[:12]) == list(range(12))
    assert list(other_writers_indices(12, 5, seed=2)) == list(picks[:5])


def test_uploads_decode_as_square_png_or_jpeg_of_the_promised_sides_in_both_polarities():
    formats, dark_ink, spans = set(), [], []
    for data, _, _ in other_writers_set(X, Y, 70, seed=otherwriters.DEFAULT_SEED):
        fmt, gray = _decode(data)
        formats.add(fmt)
        assert gray.shape[0] == gray.shape[1]
        assert OUTPUT_SIDES[0] <= gray.shape[0] <= OUTPUT_SIDES[1]
        border = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))
        dark_ink.append(border > 0.5)
        ink = np.abs(gray - border) > 0.3 * np.abs(gray - border).max()
        span = max(np.ptp(np.flatnonzero(ink.any(axis=1))), np.ptp(np.flatnonzero(ink.any(axis=0)))) + 1
        spans.append(span / gray.shape[0])
    assert formats == {"PNG", "JPEG"}
    # The digit nearly fills the scanned box (margins of 0-12% a side; faint tips fall below the cut here).
    assert min(spans) >= 0.5 and np.median(spans) >= 0.8
    assert 0.6 < np.mean(dark_ink) < 0.95  # mostly dark ink on light paper, sometimes the other way


def test_the_scan_is_a_block_average_to_the_drawn_side():
    rng = np.random.default_rng(0)
    ink = np.zeros((80, 50), np.float32)
    ink[10:70, 20:30] = 1.0
    for side in (8, 12, 16):
        scan = otherwriters._scan(ink, side, rng)
        assert scan.shape == (side, side)
        assert scan.max() <= 1.0
        block = ((80 + 2 * round(0.12 * 80)) // side + 1) ** 2  # at most this many pixels per block
        assert scan.sum() * block >= ink.sum() * 0.99  # area means: no ink lost, none made


def test_thick_and_thin_pens_change_the_stroke_width_the_way_they_say():
    ink = otherwriters._hand(X[0], 1.0, 0.0)
    width = otherwriters.stroke_width(ink)
    thick = otherwriters._pen(ink, 0.2)
    thin = otherwriters._pen(ink, -0.06)
    assert otherwriters.stroke_width(thick) > width * 1.3
    assert otherwriters.stroke_width(thin) < width * 0.85
    assert thin.sum() >= (1 - otherwriters.MAX_THIN_LOSS) * ink.sum()  # thinned, never erased


def _mean_column(ink: np.ndarray) -> float:
    return float(np.average(np.arange(ink.shape[1]), weights=ink.sum(axis=0)))


def test_slant_and_stretch_change_the_shape():
    upright = otherwriters._hand(X[1], 1.0, 0.0)
    assert otherwriters._hand(X[1], 0.7, 0.0).shape[1] < upright.shape[1] < otherwriters._hand(X[1], 1.3, 0.0).shape[1]
    for shear in (0.3, -0.3):
        slanted = otherwriters._hand(X[1], 1.0, shear)
        quarter = slanted.shape[0] // 4
        lean = _mean_column(slanted[:quarter]) - _mean_column(slanted[-quarter:])
        assert lean * np.sign(shear) > 5  # the top leans right for a positive shear, left for a negative one


def test_a_box_filled_scan_stretches_a_narrow_digit_to_a_square():
    ink = np.ones((80, 20), np.float32)  # the ink box of a plain 1, four times as tall as it is wide
    scan = otherwriters._scan(ink, 12, np.random.default_rng(0), fill=True)
    rows, cols = np.flatnonzero(scan.max(axis=1) > 0.5), np.flatnonzero(scan.max(axis=0) > 0.5)
    assert 0.8 <= len(rows) / len(cols) <= 1.25  # as wide as it is tall: its proportions are lost
    plain = otherwriters._scan(ink, 12, np.random.default_rng(0))
    assert np.count_nonzero(plain.max(axis=0) > 0.5) < len(cols) / 2


def test_the_box_filled_set_is_the_other_writers_set_filled_and_leaves_that_set_as_it_was():
    filled = otherwriters.box_filled_set(X, Y, 14, seed=5)
    plain = other_writers_set(X, Y, 14, seed=5)
    assert filled == otherwriters.box_filled_set(X, Y, 14, seed=5)
    assert [upload[1:] for upload in filled] == [upload[1:] for upload in plain]  # same digits, labels, kinds
    assert all(a[0] != b[0] for a, b in zip(filled, plain, strict=True))
    assert plain == other_writers_set(X, Y, 14, seed=5, fill=False)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        make_other_writer(X[0], np.random.default_rng(0), "smudged")


def test_accuracy_by_kind_reports_each_kind_and_all():
    scores = accuracy_by_kind([1, 2, 3, 4], ["thin", "thin", "wide", "mixed"], np.array([1, 0, 3, 0]))
    assert scores == {"thin": 0.5, "wide": 1.0, "mixed": 0.0, "all": 0.5}
