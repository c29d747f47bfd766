"""The two architectures a worker can serve, their training defaults and the strong model's augmentation.

Both hold only built-in Keras layers, so workers load and call either from the .h5 alone.
"""

from __future__ import annotations

from typing import Any

# --architecture choice -> metadata "architecture", and its defaults where the option is not given.
ARCHITECTURES: dict[str, str] = {"seed": "seed-cnn", "strong": "strong-cnn"}
DEFAULT_EPOCHS = {"seed": 5, "strong": 10}
DEFAULT_BATCH_SIZE = {"seed": 32, "strong": 128}
DEFAULT_MIN_ACCURACY = {"seed": 0.98, "strong": 0.993}
AUGMENTATION = {  # the architecture's own, on every batch (training/captures.py adds degraded copies to both)
    "seed": "",
    "strong": "tf.data, training only: rotation +-12 deg, shift +-3 px, zoom +-10%, "
              "stroke dilation/erosion (2x2 max/min pool) on 30%, 3x3 Gaussian blur on 20%",
}


def build_model() -> Any:
    """Return the seed project's CNN, compiled: one conv layer, one pooling layer, a softmax head."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def build_strong_model(learning_rate: Any = 1e-3) -> Any:
    """Return the strong CNN, compiled: two blocks of (Conv-BN-ReLU) x2 + MaxPool + Dropout, then Dense.

    Built-in layers only and no augmentation inside: the saved .h5 loads without custom objects
    and ``model(x, training=False)`` is a plain deterministic function.
    """
    import keras
    from keras import layers

    def conv_bn_relu(filters: int) -> list[Any]:
        # momentum 0.9: the moving statistics settle within a few dozen steps (short test runs too).
        return [layers.Conv2D(filters, 3, use_bias=False), layers.BatchNormalization(momentum=0.9),
                layers.Activation("relu")]

    def block(filters: int) -> list[Any]:
        return [*conv_bn_relu(filters), *conv_bn_relu(filters), layers.MaxPooling2D(2), layers.Dropout(0.25)]

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        *block(32),  # 28 -> 26 -> 24 -> 12
        *block(64),  # 12 -> 10 -> 8 -> 4
        layers.Flatten(),
        layers.Dense(128, use_bias=False), layers.BatchNormalization(momentum=0.9), layers.Activation("relu"),
        layers.Dropout(0.4),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def augmenter(seed: int) -> Any:
    """Return a function augmenting a batch (B, 28, 28, 1) in [0, 1], for tf.data's ``map`` (training only)."""
    import keras
    import tensorflow as tf

    geometric = keras.Sequential([
        keras.layers.RandomRotation(12 / 360, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(3 / 28, 3 / 28, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
    ])
    gauss = tf.constant([0.25, 0.5, 0.25])
    blur_kernel = tf.reshape(gauss[:, None] * gauss[None, :], (3, 3, 1, 1))
    rng = tf.random.Generator.from_seed(seed + 3)

    def augment(x: Any, y: Any) -> Any:
        x = geometric(x, training=True)
        n = tf.shape(x)[0]
        # Stroke thickness: dilate (2x2 max pool, stride 1) 15%, erode (2x2 min pool) 15%.
        thick = tf.nn.max_pool2d(x, 2, 1, "SAME")
        thin = -tf.nn.max_pool2d(-x, 2, 1, "SAME")
        r = rng.uniform((n, 1, 1, 1))
        x = tf.where(r < 0.15, thick, tf.where(r > 0.85, thin, x))
        # Mild blur on 20%.
        blurred = tf.nn.conv2d(x, blur_kernel, 1, "SAME")
        x = tf.where(rng.uniform((n, 1, 1, 1)) < 0.2, blurred, x)
        return tf.clip_by_value(x, 0.0, 1.0), y

    return augment
