"""Train a digit CNN on MNIST and save it as ``models/mnist_model.h5`` plus a ``.json`` metadata file.

The seed's entry point, kept under its name for compose, Kubernetes and README; the work is in the
``training`` package (serving never imports it):

* ``seed`` (default): the seed project's one-conv-layer CNN, about 98% on the MNIST test split;
* ``strong``: two Conv-BN-ReLU x2 blocks trained with augmentation, about 99.4%.

Validation comes from a held-out part of the training split; the test split gives the final figure and
the ``--min-accuracy`` gate, once.

Usage: ``python -m worker.create_and_train_model [--data DIR] [--architecture strong] [--force] ...``
(``--help`` for all options).
"""

from __future__ import annotations

from training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
