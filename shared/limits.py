"""The bounds on an upload's image: written once here, configurable through Settings, honoured by web and worker.

No imports beyond the standard library: shared/config.py takes its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SIDE = 8  # px: below this there is no room for a digit
MAX_SIDE = 12_000  # px: larger than any phone camera
MAX_PIXELS = 40_000_000  # 40 MP: about 160 MB decoded as RGBA, the most one upload may cost


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on an upload's declared dimensions, checked before any pixel is decoded."""

    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    min_side: int = MIN_SIDE


DEFAULT_LIMITS = ImageLimits()
