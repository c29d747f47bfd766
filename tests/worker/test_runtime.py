"""worker/runtime.py: what a worker process builds from its settings (no services needed)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import Settings
from shared.imaging import ImageRejected
from tests.helpers import png_bytes
from worker.runtime import preprocessor

OFFLINE = {"redis_url": "redis://127.0.0.1:1/0", "database_url": "sqlite://"}


def _digit(side: int) -> bytes:
    image = np.full((side, side), 255, np.uint8)
    image[side // 4: 3 * side // 4, side // 2 - side // 20: side // 2 + side // 20] = 0  # a 1
    return png_bytes(image)


def test_the_worker_decodes_under_the_configured_image_limits():
    assert preprocessor(Settings(**OFFLINE))(_digit(200)).shape == (28, 28)
    with pytest.raises(ImageRejected) as small:
        preprocessor(Settings(**OFFLINE, min_image_side=300))(_digit(200))
    assert small.value.code == "too_small"
    with pytest.raises(ImageRejected) as large:
        preprocessor(Settings(**OFFLINE, max_image_pixels=10_000))(_digit(200))
    assert large.value.code == "too_large"
