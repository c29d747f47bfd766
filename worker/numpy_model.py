"""A Keras Sequential `.h5` run with numpy: the worker's CPU inference without TensorFlow.

Why: `import tensorflow` alone is about 540 MB of a worker's resident memory and several seconds of its
start, for a model whose batched call is one 3x3 convolution, a max-pool and a dense layer. Reading the
same `.h5` with h5py and running those layers as matrix products gives the same probabilities (within
1e-6, tests/worker/test_numpy_model.py) in a worker of under 200 MB. Only the built-in layers below are
supported, channels-last, valid padding, unit strides; anything else raises Unsupported and the worker
uses TensorFlow instead (worker/model.py), as it does on a GPU and for models too big for numpy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

Array = np.ndarray


class Unsupported(Exception):
    """The model has a layer or an option this engine does not run."""


class Layer(Protocol):
    """One layer: its output for a batch, and its output shape and multiply-adds per image for an input shape."""

    def __call__(self, x: Array) -> Array: ...

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]: ...


def _activation(name: str | None) -> Callable[[Array], Array]:
    if name in (None, "linear"):
        return lambda x: x
    if name == "relu":
        return lambda x: np.maximum(x, 0, out=x)
    if name == "softmax":
        return _softmax
    raise Unsupported(f"activation {name!r}")


def _softmax(x: Array) -> Array:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


@dataclass(frozen=True)
class Conv2D:
    """A valid, unit-stride convolution as one matrix product over the image's patches (im2col)."""

    kernel: Array  # (kh * kw * channels_in, channels_out)
    size: tuple[int, int]
    bias: Array | None
    activation: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        n, h, w, c = x.shape
        kh, kw = self.size
        oh, ow = h - kh + 1, w - kw + 1
        patches = np.empty((n, oh, ow, kh, kw, c), np.float32)
        for dy in range(kh):
            for dx in range(kw):
                patches[:, :, :, dy, dx, :] = x[:, dy:dy + oh, dx:dx + ow, :]
        y = patches.reshape(n * oh * ow, kh * kw * c) @ self.kernel
        if self.bias is not None:
            y += self.bias
        return self.activation(y).reshape(n, oh, ow, -1)

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        h, w, _ = shape
        oh, ow = h - self.size[0] + 1, w - self.size[1] + 1
        return (oh, ow, self.kernel.shape[1]), oh * ow * self.kernel.size


@dataclass(frozen=True)
class MaxPool2D:
    """Non-overlapping max-pooling (strides equal to the pool), the remainder rows and columns dropped."""

    pool: tuple[int, int]

    def __call__(self, x: Array) -> Array:
        ph, pw = self.pool
        h2, w2 = x.shape[1] // ph, x.shape[2] // pw
        out: Array | None = None
        for dy in range(ph):
            for dx in range(pw):
                part = x[:, dy:dy + h2 * ph:ph, dx:dx + w2 * pw:pw]
                out = part.copy() if out is None else np.maximum(out, part, out=out)
        assert out is not None
        return out

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        h, w, c = shape
        return (h // self.pool[0], w // self.pool[1], c), 0


@dataclass(frozen=True)
class Affine:
    """Batch normalisation at inference time: a scale and an offset per channel."""

    scale: Array
    offset: Array

    def __call__(self, x: Array) -> Array:
        return x * self.scale + self.offset

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return shape, 0


@dataclass(frozen=True)
class Activation:
    """An activation layer of its own."""

    function: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        return self.function(x)

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return shape, 0


@dataclass(frozen=True)
class Flatten:
    """Channels-last flattening, in the order Keras uses."""

    def __call__(self, x: Array) -> Array:
        return x.reshape(x.shape[0], -1)

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return (int(np.prod(shape)),), 0


@dataclass(frozen=True)
class Dense:
    """A fully connected layer."""

    kernel: Array
    bias: Array | None
    activation: Callable[[Array], Array]

    def __call__(self, x: Array) -> Array:
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return self.activation(y)

    def shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return (self.kernel.shape[1],), self.kernel.size


def _conv(config: dict[str, Any], weights: list[Array]) -> Layer:
    if (tuple(config["strides"]), config["padding"], tuple(config.get("dilation_rate", (1, 1))),
            config.get("groups", 1)) != ((1, 1), "valid", (1, 1), 1):
        raise Unsupported("Conv2D other than valid, unit-stride, undilated, ungrouped")
    kernel = weights[0]
    kh, kw, c_in, c_out = kernel.shape
    return Conv2D(np.ascontiguousarray(kernel.reshape(kh * kw * c_in, c_out)), (kh, kw),
                  weights[1] if config["use_bias"] else None, _activation(config["activation"]))


def _pool(config: dict[str, Any], _weights: list[Array]) -> Layer:
    pool = tuple(config["pool_size"])
    if tuple(config.get("strides") or pool) != pool or config["padding"] != "valid":
        raise Unsupported("MaxPooling2D with overlapping windows or padding")
    return MaxPool2D((int(pool[0]), int(pool[1])))


def _batch_norm(config: dict[str, Any], weights: list[Array]) -> Layer:
    if config.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise Unsupported("BatchNormalization over another axis than the channels")
    queue = list(weights)
    gamma = queue.pop(0) if config.get("scale", True) else np.float32(1)
    beta = queue.pop(0) if config.get("center", True) else np.float32(0)
    mean, variance = queue
    scale = (gamma / np.sqrt(variance + config["epsilon"])).astype(np.float32)
    return Affine(scale, (beta - mean * scale).astype(np.float32))


def _dense(config: dict[str, Any], weights: list[Array]) -> Layer:
    return Dense(weights[0], weights[1] if config["use_bias"] else None, _activation(config["activation"]))


BUILDERS: dict[str, Callable[[dict[str, Any], list[Array]], Layer]] = {
    "Conv2D": _conv,
    "MaxPooling2D": _pool,
    "BatchNormalization": _batch_norm,
    "Dense": _dense,
    "Flatten": lambda _config, _weights: Flatten(),
    "Activation": lambda config, _weights: Activation(_activation(config["activation"])),
    "ReLU": lambda _config, _weights: Activation(_activation("relu")),
}
SKIPPED = {"InputLayer", "Dropout"}  # nothing to do at inference time


class NumpyModel:
    """A supported Keras Sequential model, read from its `.h5`, called on batches (N, *input_shape)."""

    def __init__(self, layers: Sequence[Layer], input_shape: tuple[int, ...]) -> None:
        self.layers = list(layers)
        self.input_shape = input_shape
        shape, self.macs_per_image = input_shape, 0
        for layer in self.layers:
            shape, macs = layer.shape(shape)
            self.macs_per_image += macs
        self.output_shape = shape

    @classmethod
    def load(cls, path: Path, input_shape: tuple[int, ...]) -> NumpyModel:
        """Read the model's layers and weights (h5py only); Unsupported if any layer cannot run here."""
        with h5py.File(path, "r") as h5:
            config = json.loads(h5.attrs["model_config"])
            if config["class_name"] != "Sequential":
                raise Unsupported(f"a {config['class_name']} model (only Sequential ones)")
            layers = [_layer(h5["model_weights"], spec) for spec in config["config"]["layers"]]
        return cls([layer for layer in layers if layer is not None], input_shape)

    @property
    def params(self) -> int:
        """Weights in the model (batch normalisation folded)."""
        return sum(a.size for layer in self.layers for a in vars(layer).values() if isinstance(a, np.ndarray))

    def __call__(self, batch: Array) -> Array:
        """The model's output for a batch."""
        x = np.asarray(batch, np.float32)
        for layer in self.layers:
            x = layer(x)
        return x


def _layer(stored: h5py.Group, spec: dict[str, Any]) -> Layer | None:
    """One layer from its config and its stored weights (None for layers inference skips)."""
    kind, config = spec["class_name"], spec["config"]
    if kind in SKIPPED:
        return None
    if kind not in BUILDERS:
        raise Unsupported(f"layer {kind}")
    if config.get("data_format", "channels_last") != "channels_last":
        raise Unsupported("channels-first data")
    group = stored.get(config["name"])  # layers without weights may have no group
    if group is None:
        return BUILDERS[kind](config, [])
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    return BUILDERS[kind](config, [np.asarray(group[n], np.float32) for n in names])
