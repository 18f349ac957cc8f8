"""CAM's requirement on the classifier, checked the same way for every framework."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camlens.errors import MethodError


def pooled_features(activations: np.ndarray, pooled: np.ndarray | None, layer: str) -> np.ndarray:
    """The maps whose spatial mean the linear classifier received: ``A`` or, when a ReLU sits
    between the layer and the pooling (DenseNet's functional ReLU), ``relu(A)``.

    Args:
        activations: ``(N, C, h, w)`` output of ``layer``.
        pooled: what the classifier received, ``(N, C)`` (any trailing singleton dims).

    Raises:
        MethodError: the classifier's input is not the global average of ``layer`` (or no
            input was seen), so CAM does not apply.
    """
    if pooled is not None:
        pooled = pooled.reshape(pooled.shape[0], -1)
        for features in (activations, np.maximum(activations, 0)):
            mean = features.mean(axis=(2, 3))
            tol = 1e-4 * float(np.abs(pooled).max()) + 1e-6
            if mean.shape == pooled.shape and np.allclose(mean, pooled, rtol=1e-4, atol=tol):
                return features
    raise no_head(layer, "the classifier's input is not the global average of this layer")


def check_cam_layers(feeding: str, layers: Sequence[str]) -> None:
    """CAM explains only the layer that feeds the classifier's global pooling."""
    others = [name for name in layers if name != feeding]
    if others:
        raise MethodError(
            f"CAM applies only to the layer that feeds the classifier ({feeding!r}), "
            f"not {others[0]!r}; use gradcam for other layers"
        )


def no_head(layer: str, why: str = "") -> MethodError:
    """The error for a model without a global-average-pooling -> linear head after ``layer``."""
    reason = f" ({why})" if why else ""
    return MethodError(
        f"CAM needs a global-average-pooling -> linear classifier right after layer {layer!r}, "
        f"and this model has none{reason}; use --method gradcam, which works for any CNN"
    )
