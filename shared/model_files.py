"""The files a trained model is served from: the .h5 training writes, and the ONNX form derived from it.

The .h5 is the model; `<model>.onnx` beside it is what workers run, and it records the SHA-256 of the .h5 it
was made from, so a worker can tell a stale or foreign ONNX file from the right one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The ONNX file's metadata entry (metadata_props) naming the .h5 it was derived from.
SOURCE_SHA256 = "source_sha256"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_onnx(onnx: bytes, options: Any = None) -> Any | None:
    """An ONNX Runtime CPU session over these bytes (``options``: its SessionOptions), None if they are no model."""
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # a foreign file is an answer here (None), not an error to log
    try:
        return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises its own exception types for a truncated or foreign file
        return None


def source_of(session: Any | None) -> str | None:
    """The .h5 hash an opened ONNX form records (metadata_props), None if it records none."""
    return None if session is None else session.get_modelmeta().custom_metadata_map.get(SOURCE_SHA256)


def recorded_source(onnx: bytes) -> str | None:
    """The .h5 hash an ONNX form records, None if it records none or cannot be read."""
    return source_of(open_onnx(onnx))


def onnx_beside(model_path: Path) -> Path:
    """Where training writes the ONNX form of a .h5: the same name, .onnx."""
    return model_path.with_suffix(".onnx")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it over ``target`` in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is an atomic rename: readers see the old file or the new one.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers must be able to read it
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
