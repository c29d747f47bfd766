"""Exact order statistics of large arrays (a median, the k-th largest) without sorting or partitioning all of them.

np.partition costs about 3 ns per element on this machine's cores, and a photo's preprocessing asks for five
order statistics of 70,000-150,000 values each. A strided sample bounds the wanted value; only the few values
inside the bounds are partitioned (the idea of Floyd and Rivest's selection). The answers are the exact values
np.partition would give: the sample only narrows where to look, and every candidate is counted.
"""

from __future__ import annotations

import numpy as np

# Below this many values a plain partition is as fast as the sampling.
_DIRECT = 4096
# Sample size as a multiple of how many values the bound must hold: larger is tighter, smaller is cheaper.
_OVERSAMPLE = 64
# The sample's bounds for a median lie this many standard deviations of a sampled rank either side.
_SPREAD = 4.0


def kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest value (k = 1: the maximum), as np.partition(values, size - k)[size - k] gives it."""
    flat = values.reshape(-1)
    if not 1 <= k <= flat.size:
        raise ValueError(f"k must be in [1, {flat.size}], got {k}")
    step = flat.size // (_OVERSAMPLE * k)
    if flat.size <= _DIRECT or step < 2:
        return float(np.partition(flat, flat.size - k)[flat.size - k])
    sample = flat[::step]
    # At least k values of the whole are >= the sample's k-th largest: the answer is the bound or above it.
    bound = np.partition(sample, sample.size - k)[sample.size - k]
    above = flat[flat > bound]
    if above.size < k:  # fewer than k above the bound, at least k at or above it: the bound is the answer
        return float(bound)
    return float(np.partition(above, above.size - k)[above.size - k])


def kth_smallest(values: np.ndarray, k: int) -> float:
    """The k-th smallest value (k = 1: the minimum), as np.partition(values, k - 1)[k - 1] gives it."""
    flat = values.reshape(-1)
    if not 1 <= k <= flat.size:
        raise ValueError(f"k must be in [1, {flat.size}], got {k}")
    step = flat.size // (_OVERSAMPLE * k)
    if flat.size <= _DIRECT or step < 2:
        return float(np.partition(flat, k - 1)[k - 1])
    sample = flat[::step]
    bound = np.partition(sample, k - 1)[k - 1]
    below = flat[flat < bound]
    if below.size < k:  # saturated pixels (paper, black ink) often share the bound: then it is the answer
        return float(bound)
    return float(np.partition(below, k - 1)[k - 1])


def median(values: np.ndarray) -> float:
    """np.median of finite values: the middle value, or the mean of the middle two."""
    flat = values.reshape(-1)
    half = flat.size // 2
    if flat.size % 2:
        return _ranks(flat, half, half)[0]
    low, high = _ranks(flat, half - 1, half)
    return (low + high) / 2


def _ranks(flat: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """The values of 0-based ranks ``first`` and ``last`` (first <= last, close together) in sorted order."""
    if flat.size <= _DIRECT:
        ranked = np.partition(flat, (first, last))
        return float(ranked[first]), float(ranked[last])
    step = max(1, flat.size // (_OVERSAMPLE * 64))
    sample = np.sort(flat[::step])
    # Where the ranks fall in the sample, and a window around them wide enough to hold them almost always.
    margin = _SPREAD * np.sqrt(sample.size) / 2 + 1
    lo = sample[max(0, int(first / flat.size * sample.size - margin))]
    hi = sample[min(sample.size - 1, int(last / flat.size * sample.size + margin) + 1)]
    below = int(np.count_nonzero(flat < lo))
    window = flat[(flat >= lo) & (flat <= hi)]
    if not below <= first <= last < below + window.size:
        window, below = flat, 0  # the sample misled us (rare): the plain way, still exact
    ranked = np.partition(window, (first - below, last - below))
    return float(ranked[first - below]), float(ranked[last - below])
