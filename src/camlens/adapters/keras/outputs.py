"""A Keras model's chosen output as the targets read it, and ``keras.ops`` for them (one
implementation for the TensorFlow, JAX and PyTorch backends)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras.head import Head
from camlens.core.targets import MAPS, SCORES, Output


class KerasOps:
    """:class:`~camlens.core.targets.Ops` with ``keras.ops``."""

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)

    def constant(self, a: np.ndarray) -> Any:
        return keras.ops.convert_to_tensor(np.array(a, dtype=np.float32, order="C"))  # 0-d stays 0-d

    def take(self, x: Any, index: np.ndarray) -> Any:
        shape = tuple(int(d) for d in x.shape)
        i = np.broadcast_to(index.reshape(*index.shape, *([1] * (len(shape) - 2))), (*index.shape, *shape[2:]))
        return keras.ops.take_along_axis(x, keras.ops.convert_to_tensor(np.ascontiguousarray(i, dtype=np.int32)), axis=1)

    def softmax(self, x: Any) -> Any:
        return keras.ops.softmax(x, axis=1)

    def sigmoid(self, x: Any) -> Any:
        return keras.ops.sigmoid(x)

    def sum(self, x: Any, axes: tuple[int, ...]) -> Any:
        return keras.ops.sum(x, axis=axes)

    def sqrt(self, x: Any) -> Any:
        return keras.ops.sqrt(x)

    def clip(self, x: Any, low: float | None = None, high: float | None = None) -> Any:
        if low is not None:
            x = keras.ops.maximum(x, low)
        return keras.ops.minimum(x, high) if high is not None else x

    def stack(self, xs: Sequence[Any]) -> Any:
        return keras.ops.stack(list(xs))

    def concat(self, xs: Sequence[Any]) -> Any:
        return keras.ops.concatenate(list(xs), axis=1)


OPS = KerasOps()


def output_of(head: Head, value: Any, input_size: tuple[int, int]) -> Output:
    """The :class:`~camlens.core.targets.Output` of the head's pre-activation ``value``:
    ``(N, classes)`` scores (two, ``[-z/2, z/2]``, for a one-unit sigmoid head) or
    ``(N, h, w, classes)`` maps, handed to the targets channels first."""
    if head.maps:
        return Output(MAPS, keras.ops.transpose(value, (0, 3, 1, 2)), value, OPS, input_size)
    scores = keras.ops.concatenate([-value / 2, value / 2], axis=1) if head.binary else value
    return Output(SCORES, scores, value, OPS, input_size, binary=head.binary)
