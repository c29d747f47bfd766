"""Undo a pixelated enlargement: a small scan enlarged by repeating its pixels (nearest neighbour) into blocks.

A digit scanned at very low resolution (8-16 px) is often shown enlarged that way. Preprocessing would then read
the blocks' staircase edges as the digit's outline; the model knows such scans enlarged smoothly (training's
copies, the other-writers captures), and reads the blocky ones 6 points worse (evaluation/otherwriters.py's set
enlarged by nearest neighbour: 0.905 against 0.968). An image whose columns and rows change only on one regular
lattice, of at least 3 px a cell, is taken back to its cells' grid and enlarged smoothly to its own size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_CELLS = 4  # a lattice of fewer cells across is no scan of a digit
MIN_CELL = 3.0  # px: finer repetition changes little once the digit is fitted to MNIST's 20 px box
# Inside a cell, adjacent columns may differ by at most this fraction of the strongest change on the lattice
# (a lossy encoding's ringing); a photo or a smooth enlargement changes about as much everywhere.
_QUIET = 0.15
_MIN_STEP = 0.1  # the lattice must carry a change of at least this (fraction of full scale)
_BLUR_CELL = 6.0  # from this cell size on, a resampled upload may spread a cell's edge over two pixels
# A scan's curves change from cell to cell at many boundaries; a few hard edges (a bar, a sharp drawing's outline)
# may sit on some lattice by chance, and are left alone: blocks matter where a curve becomes a staircase.
MIN_CHANGES = 4


def cells_along(changes: np.ndarray) -> int | None:
    """The number of cells along an axis whose adjacent lines differ by ``changes`` (one per boundary), if it
    is a pixelated enlargement; None otherwise."""
    size = len(changes) + 1
    strongest = float(changes.max(initial=0.0))
    if strongest < _MIN_STEP:
        return None
    lines = np.flatnonzero(changes > _QUIET * strongest) + 1.0  # the first line of each change's new run
    cells = np.arange(MIN_CELLS, int(size / MIN_CELL) + 1, dtype=np.float64)[:, None]
    if len(lines) < MIN_CHANGES or not len(cells):
        return None
    cell = size / cells
    # Nearest-neighbour resampling starts cell k at line ceil(k * cell - 0.5); every change must be there
    # (or a line either side, where a larger cell's edge may have been spread by resampling the upload).
    k = np.clip(np.round(lines / cell), 1, cells - 1)
    off = np.abs(np.ceil(k * cell - 0.5) - lines)
    fits = (off <= np.where(cell >= _BLUR_CELL, 1.0, 0.0)).all(axis=1)
    return int(cells[np.argmax(fits), 0]) if fits.any() else None


def unpixelate(gray: np.ndarray) -> np.ndarray:
    """``gray`` (2-D float32 in [0, 1]) as it would look enlarged smoothly, where it was enlarged into blocks;
    otherwise ``gray`` itself."""
    across = cells_along(np.abs(np.diff(gray, axis=1)).max(axis=0))
    if across is None:
        return gray
    down = cells_along(np.abs(np.diff(gray, axis=0)).max(axis=1))
    if down is None:
        return gray
    image = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), "F")
    scan = image.resize((across, down), Image.Resampling.BOX)
    return np.asarray(scan.resize(image.size, Image.Resampling.BILINEAR), dtype=np.float32)
