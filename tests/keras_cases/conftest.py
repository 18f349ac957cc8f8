"""Keras tests run under the backend in KERAS_BACKEND (tests/test_keras_backends.py runs them
under each of tensorflow, jax and torch)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def small_cnn(head: str = "softmax", name: str = "small") -> keras.Model:
    """conv1(3->8) relu -> conv2(8->6) relu -> GAP -> dense(6->4), fixed weights."""
    rng = np.random.default_rng(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(4, activation=None if head == "logits" else head, name="fc")(x)
    model = keras.Model(inp, out, name=name)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])
    return model


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype("float32")
