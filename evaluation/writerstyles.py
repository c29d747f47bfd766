"""Two proxies for writers MNIST never saw: MNIST test digits in their styles, and fonts the model never saw.

Both go through the other-writers capture (evaluation/otherwriters.py: low-resolution scans, enlarged), the kind
of upload on which real other writers' digits were measured. Both are proxies, made here, not real writers:

* ``styled_set``: MNIST *test* digits, every 1, 4, 7 and 9 drawn in the style MNIST lacks (a flag and foot, a
  closed top, a crossbar, a curled tail) by the same edits that restyle training copies (training/styles.py),
  so it shows whether the model learned what it was shown, not whether the edits look like real hands. With
  ``fill``, the same digits scanned stretched to fill their box: the issue's real writers' errors (9s read as 3,
  1s as 7, 8 or 4) are this set's most common ones.
* ``font_set``: the digits of the fonts training/fonts.py keeps out of training (a fifth, by a hash of the name),
  each fitted like an MNIST digit: typefaces' 1s, 4s and 9s as writers of the world make them, in shapes the
  model never trained on.

Every upload is ``(encoded bytes, label, kind)``; the kinds are the other-writers capture's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.otherwriters import KINDS, make_other_writer
from training.fonts import FONT_DIGITS, as_mnist, load_font_digits
from training.styles import STYLE_EDITS

DEFAULT_STYLED_SEED = 1206
DEFAULT_FONT_SEED = 4812


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def styled_set(x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = DEFAULT_STYLED_SEED,
               fill: bool = False) -> list[tuple[bytes, int, str]]:
    """``n`` MNIST test digits (a seeded sample) as other writers' captures, every 1, 4, 7 and 9 restyled;
    ``fill``: scanned stretched to fill their box (evaluation/otherwriters.py's ``box_filled_set``)."""
    rng = np.random.default_rng([seed, 0])
    out: list[tuple[bytes, int, str]] = []
    for i, idx in enumerate(rng.permutation(len(x))[:n]):
        label = int(y[idx])
        digit_rng = np.random.default_rng([seed, 1, i])
        digit = x[idx].astype(np.float32) / 255.0
        if label in STYLE_EDITS:
            digit = STYLE_EDITS[label](digit, digit_rng)
        kind = KINDS[i % len(KINDS)]
        out.append((make_other_writer(_as_uint8(digit), digit_rng, kind, fill), label, kind))
    return out


def font_set(per_glyph: int = 4, seed: int = DEFAULT_FONT_SEED,
             path: Path = FONT_DIGITS) -> list[tuple[bytes, int, str]]:
    """``per_glyph`` captures of each digit of every font of the evaluation families (never trained on)."""
    glyphs, _, evaluation = load_font_digits(path)
    rng = np.random.default_rng([seed, 0])
    out: list[tuple[bytes, int, str]] = []
    for font in glyphs[evaluation]:
        for digit, glyph in enumerate(font):
            for _ in range(per_glyph):
                kind = KINDS[len(out) % len(KINDS)]
                out.append((make_other_writer(_as_uint8(as_mnist(glyph, rng)), rng, kind), digit, kind))
    return out
