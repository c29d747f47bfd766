"""Digits rendered from fonts: a classic source of synthetic digits in styles MNIST's writers seldom used.

Typefaces write a 1 with a flag (and, with serifs, a foot), a 4 closed at the top and a 9 whose tail curves, and
handwriting fonts do so in a hand. ``python -m training.fonts`` renders 0-9 from every font file under the given
folders into ``training/data/font_digits.npz`` (committed, so that training needs no fonts installed): one
32x32 greyscale glyph per font and digit, the digit's ink box fitted into 28 px and centred. Fonts whose digits
are missing, blank or all alike (symbol and icon fonts) are left out. Each font is assigned to training or to
evaluation by a hash of its name, so that the evaluation's fonts are ones the model never saw
(evaluation/writerstyles.py); the file records which.

The fonts come from Debian's packages (training/data/font_packages.txt: text faces and handwriting ones); their
licences (OFL, GPL with the font exception, and the like) allow rendering them.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.config import REPO_ROOT

log = logging.getLogger(__name__)

FONT_DIGITS = REPO_ROOT / "training" / "data" / "font_digits.npz"
GLYPH_SIDE = 32  # stored glyph size
_FIT = 28  # the ink box's long side within it
_RENDER_SIZE = 96  # points at which each digit is drawn before fitting
PER_FAMILY = 8  # copies of each digit of each training family
RECIPE = ("copies of each digit of each training font family (training/fonts.py; font_copies in all): turned up to "
          "8 deg, bolder on a quarter, lighter on some, fitted like MNIST's, then restyled and degraded like the "
          "copies of MNIST's digits")
EVALUATION_SHARE = 0.2  # of font families, by a hash of the family's name: never trained on
# Fonts whose "digits" are pictures or symbols (Zapf Dingbats' and Symbol's clones).
EXCLUDED = frozenset({"D050000L.otf", "StandardSymbolsPS.otf"})


def is_evaluation_font(family: str) -> bool:
    """Whether the family is kept for evaluation (about a fifth, by a hash of the first word of its name): all of
    a design's weights, slopes and cuts ("Open Sans", "Open Sans Condensed") fall on the same side, so the
    evaluation's shapes are unseen ones."""
    digest = hashlib.sha256(family.split()[0].encode()).digest()
    return digest[0] < 256 * EVALUATION_SHARE


def render_digit(font: ImageFont.FreeTypeFont, digit: int) -> np.ndarray | None:
    """The digit drawn in ``font``, its ink box fitted into 28 px of a 32 px square, white on black; None if blank."""
    canvas = Image.new("L", (_RENDER_SIZE * 2, _RENDER_SIZE * 2), 0)
    ImageDraw.Draw(canvas).text((_RENDER_SIZE // 2, _RENDER_SIZE // 4), str(digit), fill=255, font=font)
    box = canvas.getbbox()
    if box is None:
        return None
    ink = canvas.crop(box)
    scale = _FIT / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.Resampling.LANCZOS)
    out = Image.new("L", (GLYPH_SIDE, GLYPH_SIDE), 0)
    out.paste(ink, ((GLYPH_SIDE - ink.width) // 2, (GLYPH_SIDE - ink.height) // 2))
    glyph = np.asarray(out, np.float32)
    return np.round(glyph * (255 / glyph.max())).astype(np.uint8)  # a hairline face's ink brought to full


def render_font(path: Path) -> tuple[str, np.ndarray] | None:
    """(family, the ten digits (10, 32, 32)) of one font file, or None when it has no usable digits."""
    if path.name in EXCLUDED:
        return None
    try:
        font = ImageFont.truetype(str(path), _RENDER_SIZE)
    except OSError:
        return None
    glyphs = [render_digit(font, d) for d in range(10)]
    if any(g is None for g in glyphs):
        return None
    stack = np.stack(glyphs)  # type: ignore[arg-type]
    flat = stack.reshape(10, -1).astype(np.float32)
    if min(np.abs(flat[i] - flat[j]).mean() for i in range(10) for j in range(i + 1, 10)) < 2.0:
        return None  # the same box for every digit: no digits in this font
    return str(font.getname()[0]), stack


def font_files(folders: list[Path]) -> list[Path]:
    """Every .ttf/.otf under the folders, once per file name, sorted by name."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.suffix.lower() in (".ttf", ".otf") and path.name not in found:
                found[path.name] = path
    return [found[name] for name in sorted(found)]


def render_all(folders: list[Path], out: Path) -> int:
    """Render every usable font under the folders into ``out``; the number of fonts kept."""
    glyphs, names, families = [], [], []
    for path in font_files(folders):
        rendered = render_font(path)
        if rendered is None:
            log.info("skipped %s: no usable digits", path.name)
            continue
        families.append(rendered[0])
        glyphs.append(rendered[1])
        names.append(path.name)
    evaluation = np.array([is_evaluation_font(f) for f in families])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, glyphs=np.stack(glyphs), fonts=np.array(names), families=np.array(families),
                        evaluation=evaluation)
    log.info("%d fonts of %d families (%d families kept for evaluation) into %s", len(names), len(set(families)),
             len(set(np.array(families)[evaluation])), out)
    return len(names)


def load_font_digits(path: Path = FONT_DIGITS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(glyphs (F, 10, 32, 32) uint8, family of each font (F,), evaluation mask (F,)) from the committed file."""
    with np.load(path) as data:
        return data["glyphs"], data["families"], data["evaluation"]


def as_mnist(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A glyph as an MNIST digit (28x28 float in [0, 1]): turned a little, its pen made bolder or lighter on some,
    its ink box fitted into 20 px and its centre of mass put at the centre, as MNIST's were."""
    from scipy import ndimage

    ink = ndimage.rotate(glyph.astype(np.float32) / 255.0, float(rng.uniform(-8, 8)), reshape=True, order=1)
    pen = rng.random()
    if pen < 0.25:
        ink = ndimage.grey_dilation(ink, size=(2, 2))
    elif pen < 0.4:
        ink = ndimage.grey_erosion(ink, size=(2, 2))
    rows, cols = np.nonzero(ink > 0.1)
    if not len(rows):
        return np.zeros((28, 28), np.float32)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = 20.0 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), np.float32)
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top:top + small.shape[0], left:left + small.shape[1]] = np.clip(small, 0.0, 1.0)
    cy, cx = ndimage.center_of_mass(out)
    return np.clip(ndimage.shift(out, (13.5 - cy, 13.5 - cx), order=1), 0.0, 1.0).astype(np.float32)


def font_copies(seed: int, per_family: int = PER_FAMILY, path: Path = FONT_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Served copies (N, 28, 28) of the training families' digits and their labels: ``per_family`` of each digit
    of each family (its fonts taken in turn, so a family of 20 weights counts as much as a single hand), each an
    MNIST form of the glyph, then restyled and degraded like the copies of MNIST's digits (training/captures.py)."""
    from training.captures import served_copies

    glyphs, families, evaluation = load_font_digits(path)
    rng = np.random.default_rng([seed, 32])
    forms, labels = [], []
    for family in sorted(set(families[~evaluation])):
        members = np.flatnonzero((families == family) & ~evaluation)
        for digit in range(10):
            for i in range(per_family):
                forms.append(as_mnist(glyphs[members[i % len(members)], digit], rng))
                labels.append(digit)
    return served_copies(np.asarray(forms, np.float32), np.asarray(labels, np.int64), seed + 7)


def main(argv: list[str] | None = None) -> int:
    """Command line: render the fonts under the folders (default /usr/share/fonts) into the committed file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("/usr/share/fonts")])
    parser.add_argument("--out", type=Path, default=FONT_DIGITS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return 0 if render_all(args.folders, args.out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
