"""Derive the ONNX form of a trained .h5, which CPU workers run on ONNX Runtime (worker/model.py).

Training calls it for every model it saves; run it by hand for a .h5 that came without one:
``python -m training.onnx_export models/mnist_model.h5``. The ONNX file records the .h5's SHA-256, and a
worker serves it only for that .h5.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from shared.config import quiet_tensorflow_logs
from shared.logs import configure_logging
from shared.model_files import SOURCE_SHA256, atomic_path, onnx_beside, sha256_of

log = logging.getLogger(__name__)


def export_onnx(model_path: Path, output: Path, digest: str | None = None) -> None:
    """Write the ONNX form of the .h5 at ``model_path`` atomically at ``output``, recording the .h5's hash."""
    quiet_tensorflow_logs()
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its INFO lines narrate each optimisation pass
    import keras
    import onnx

    model = keras.models.load_model(model_path, compile=False)
    model(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras exports only a model that has been called
    with tempfile.TemporaryDirectory() as work:
        raw = Path(work) / "model.onnx"
        # Keras' own exporter (tf2onnx under it): the batch dimension stays open, the layers stay channels-last.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Keras' patch of tf2onnx probes np.object
            model.export(str(raw), format="onnx", verbose=False)
        proto = onnx.load(raw)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SOURCE_SHA256, digest or sha256_of(model_path)
    with atomic_path(output) as tmp:
        onnx.save(proto, tmp)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.onnx_export", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the trained .h5")
    parser.add_argument("--output", type=Path, default=None, help="where to write it (default: beside the .h5)")
    args = parser.parse_args(argv)
    configure_logging()
    output = args.output or onnx_beside(args.model)
    export_onnx(args.model, output)
    log.info("wrote %s, the ONNX form of %s", output, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
