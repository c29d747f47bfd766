"""Exact order statistics (shared/ranks.py): the same values as np.partition, on the data photos make."""

from __future__ import annotations

import numpy as np
import pytest

from shared import ranks


def _arrays() -> list[tuple[str, np.ndarray]]:
    """Small and large arrays, continuous, with many ties, and saturated (paper at 1.0, ink at 0.0)."""
    rng = np.random.default_rng(7)
    out = []
    for size in (1, 2, 11, 1000, 4097, 73_001, 147_456):
        normal = rng.normal(size=size).astype(np.float32)
        levels = np.round(rng.random(size) * 255).astype(np.float32) / 255  # a uint8 photo's grey levels
        saturated = normal.copy()
        saturated[: size * 9 // 10] = 1.0
        saturated[size * 9 // 10: size * 19 // 20] = 0.0
        rng.shuffle(saturated)
        out += [(f"normal-{size}", normal), (f"levels-{size}", levels), (f"saturated-{size}", saturated)]
    return out


@pytest.mark.parametrize(("name", "values"), _arrays())
def test_the_kth_values_are_numpys(name: str, values: np.ndarray) -> None:
    n = values.size
    for k in sorted({1, min(n, 2), min(n, 25), min(n, 300), n}):
        assert ranks.kth_largest(values, k) == float(np.partition(values, n - k)[n - k]), (name, k)
        assert ranks.kth_smallest(values, k) == float(np.partition(values, k - 1)[k - 1]), (name, k)


@pytest.mark.parametrize(("name", "values"), _arrays())
def test_the_median_is_the_middle_value_or_the_mean_of_the_middle_two(name: str, values: np.ndarray) -> None:
    ordered = np.sort(values)
    half = values.size // 2
    expected = float(ordered[half]) if values.size % 2 else (float(ordered[half - 1]) + float(ordered[half])) / 2
    assert ranks.median(values) == expected, name
    assert ranks.median(values) == pytest.approx(float(np.median(values.astype(np.float64))))


def test_a_sample_that_misleads_still_gives_the_exact_median() -> None:
    # Large values exactly where the strided sample looks (every 36th of 147,456, and of any stride dividing 36),
    # zeros and small values elsewhere: the sample's window misses the median, and the plain partition answers.
    values = np.arange(147_456, dtype=np.float32) % 1000
    values[::36] = 1e6 + np.arange(values[::36].size, dtype=np.float32)
    assert ranks.median(values) == float(np.median(values))


@pytest.mark.parametrize("k", [0, 6])
def test_a_rank_outside_the_array_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match="k must be in"):
        ranks.kth_largest(np.zeros(5, np.float32), k)
