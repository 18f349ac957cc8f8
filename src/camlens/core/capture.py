"""What an adapter captured from one forward pass, for one layer and one set of targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Capture:
    """Tensors a method may use, as NumPy arrays.

    Attributes:
        activations: ``(N, C, h, w)`` output of the target layer.
        targets: ``(N,)`` class index explained for each sample.
        gradients: ``(N, C, h, w)`` gradient of each sample's target score (pre-softmax logit)
            with respect to ``activations``, or ``None`` when the method does not need it.
        class_weights: ``(N, C)`` row of the final linear classifier for each sample's target,
            or ``None`` when the method does not need it (only CAM does).
    """

    activations: np.ndarray
    targets: np.ndarray
    gradients: np.ndarray | None = None
    class_weights: np.ndarray | None = None
