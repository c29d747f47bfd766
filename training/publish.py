"""Put a trained model where the workers serve it from: a rollout, or a rollback to a model kept elsewhere.

    python -m training.publish models/archive/v2.h5 --to models/mnist_model.h5   (the workers' MODEL_PATH)

The model's ONNX form and metadata are written first and the .h5 last, each atomically, so a worker that sees
the new .h5 finds the rest made from it (worker/rollout.py). An ONNX form beside the source that does not
record the source's hash is derived again (TensorFlow needed); metadata that does not name it is completed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from shared.logs import configure_logging
from shared.model_files import atomic_path, onnx_beside, recorded_source, sha256_of

log = logging.getLogger(__name__)


def _metadata(source: Path, digest: str) -> dict[str, Any]:
    """The source's metadata, naming its .h5 (a model without any gets its hash for a version)."""
    meta = source.with_suffix(".json")
    data: dict[str, Any] = json.loads(meta.read_text()) if meta.exists() else {}
    if data.get("sha256") not in (None, digest):
        raise ValueError(f"{meta} describes another model than {source}")
    return {**data, "model_version": data.get("model_version") or digest[:16], "sha256": digest}


def publish(source: Path, target: Path) -> str:
    """Copy the model at ``source`` (.h5, with its ONNX form and .json beside it) to ``target``; its version."""
    digest = sha256_of(source)
    metadata = _metadata(source, digest)
    onnx = onnx_beside(source)
    if onnx.exists() and recorded_source(onnx.read_bytes()) == digest:
        with atomic_path(onnx_beside(target)) as tmp:
            shutil.copyfile(onnx, tmp)
    else:
        from training.onnx_export import export_onnx  # TensorFlow: only for a model that came without its form

        export_onnx(source, onnx_beside(target), digest)
    with atomic_path(target.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    with atomic_path(target) as tmp:  # last: the workers look at this file
        shutil.copyfile(source, tmp)
        if sha256_of(tmp) != digest:
            raise RuntimeError(f"{source} changed while it was being published")
    return str(metadata["model_version"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .h5 to serve (its .onnx and .json beside it)")
    parser.add_argument("--to", type=Path, required=True, help="where the workers load it (their MODEL_PATH)")
    args = parser.parse_args(argv)
    configure_logging()
    target: Path = args.to
    if args.model.resolve() == target.resolve():
        parser.error(f"{args.model} is already where the workers load it")
    version = publish(args.model, target)
    log.info("published %s as %s (model_version %s): workers swap to it within MODEL_RELOAD_SECONDS",
             args.model, target, version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
