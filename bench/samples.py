"""The benchmarks' uploads: MNIST test digits as PNGs, or rendered as photo-style uploads (generated, never shipped)."""

from __future__ import annotations

import io
from pathlib import Path

from bench.load import Sample
from training.mnist_data import load_idx_dir


def load_samples(mnist_dir: Path, count: int) -> list[Sample]:
    """The first `count` MNIST test digits as PNG uploads, with their labels."""
    from PIL import Image

    mnist = load_idx_dir(mnist_dir)
    samples = []
    for image, label in zip(mnist.x_test[:count], mnist.y_test[:count], strict=True):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        samples.append(Sample(buf.getvalue(), int(label)))
    return samples


def load_photo_samples(mnist_dir: Path, count: int, seed: int) -> list[Sample]:
    """`count` user-style uploads (PNG and JPEG photos, scans, drawings) of MNIST test digits, with labels."""
    from evaluation.userstyle import user_style_set

    mnist = load_idx_dir(mnist_dir)
    # bench.load's multipart says image/png for every file; that is fine: the web sniffs the bytes.
    return [Sample(data, label) for data, label, _kind in user_style_set(mnist.x_test, mnist.y_test, count, seed)]


