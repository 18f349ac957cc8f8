"""The classifier head of a Keras model: which output, which Dense, which activation.

camlens explains pre-activation scores without editing the model: a softmax or sigmoid in the
output Dense is skipped by computing ``x @ kernel + bias`` in its place during the run, and a
trailing ``Activation``/``Softmax`` layer is passed through. A single-unit head becomes the two
logits ``[-z/2, z/2]`` of the equivalent softmax (negative, positive class): their softmax is
exactly ``[1 - sigmoid(z), sigmoid(z)]``. Segmentation heads (a convolution with ``(N, h, w,
classes)`` output) are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from camlens.adapters.keras.graph import LayerPath
from camlens.errors import ModelError

_PASS_THROUGH = (keras.layers.Activation, keras.layers.Softmax)


@dataclass(frozen=True)
class Head:
    """How to get pre-activation scores from one output of a model: ``(N, classes)`` from a
    Dense layer, or ``(N, h, w, classes)`` maps from a convolution (segmentation heads)."""

    output_index: int
    kind: str  # "logits", "softmax" or "sigmoid"
    units: int
    dense_path: LayerPath | None = None
    dense: Any = None
    skip_path: LayerPath | None = None
    maps: bool = False

    @property
    def binary(self) -> bool:
        return self.units == 1 and not self.maps

    @property
    def num_classes(self) -> int:
        return 2 if self.binary else self.units

    def class_weights(self) -> np.ndarray:
        """``(classes, C)`` weights of the Dense head, matching the classes of the head's scores (two for a one-unit head)."""
        w = keras.ops.convert_to_numpy(self.dense.kernel).T.astype(np.float32)
        return np.concatenate([-w / 2, w / 2]) if self.binary else w


def find_head(model: Any, output: int | str | None = None) -> Head:
    """Locate the head of output ``output`` (index or output layer name; the only one if None).

    Raises:
        ModelError: unknown output, or a multi-output model without ``output``.
    """
    outputs = list(model.outputs)
    names = [t._keras_history.operation.name for t in outputs]
    if output is None:
        if len(outputs) > 1:
            raise ModelError(f"model has {len(outputs)} outputs ({', '.join(names)}); choose one with output=")
        index = 0
    elif isinstance(output, int) and 0 <= output < len(outputs):
        index = output
    elif isinstance(output, str) and output in names:
        index = names.index(output)
    else:
        raise ModelError(f"model has no output {output!r}; outputs: {', '.join(names)}")
    tensor = outputs[index]
    shape = tuple(tensor.shape)
    if len(shape) not in (2, 4) or shape[-1] is None:
        raise ModelError(f"output {names[index]!r} has shape {shape}; expected (N, classes) or (N, H, W, classes) maps")
    op = tensor._keras_history.operation
    skip = None
    kind = "logits"
    if isinstance(op, _PASS_THROUGH):
        kind = _kind(getattr(op, "activation", keras.activations.softmax))
        if kind != "logits":
            skip = (op.name,)
            op = op.input._keras_history.operation
    maps = len(shape) == 4
    wanted = _CONVS if maps else keras.layers.Dense
    dense = op if isinstance(op, wanted) and getattr(op, "data_format", "channels_last") == "channels_last" else None
    if dense is not None and skip is None:
        kind = _kind(dense.activation)
    return Head(index, kind, int(shape[-1]), (dense.name,) if dense is not None else None, dense, skip, maps)


_CONVS = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def pre_activation(layer: Any, x: Any) -> Any:
    """A Dense or convolution layer's output without its activation (``x @ kernel + bias``, or
    the convolution plus bias)."""
    if isinstance(layer, keras.layers.Dense):
        y = keras.ops.matmul(x, layer.kernel)
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        y = keras.ops.conv_transpose(x, layer.kernel, layer.strides, layer.padding, layer.output_padding, layer.data_format,
                                    layer.dilation_rate)
    else:
        y = layer.convolution_op(x, layer.kernel)
    return keras.ops.add(y, layer.bias) if layer.use_bias else y


def _kind(activation: Any) -> str:
    if activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax":
        return "softmax"
    if activation is keras.activations.sigmoid or getattr(activation, "__name__", "") == "sigmoid":
        return "sigmoid"
    return "logits"
