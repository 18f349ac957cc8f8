"""CAM's requirement on the classifier, checked the same way for every framework."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camlens.errors import MethodError


def pooled_features(
    activations: np.ndarray,
    pooled: np.ndarray | None,
    layer: str,
    *,
    eps: float = float(np.finfo(np.float32).eps),
    dropout: bool = False,
) -> np.ndarray:
    """The maps whose spatial mean the linear classifier received: ``A`` or, when a ReLU sits
    between the layer and the pooling (DenseNet's functional ReLU), ``relu(A)``.

    The check is exact in kind (the classifier's input must *be* the spatial mean, sample by
    sample, in the same forward pass) with a tolerance for the model's precision: relative
    ``max(1e-4, 8 eps)`` for the activations' machine epsilon ``eps`` (float16 and bfloat16
    models pass). With ``dropout`` (a model in training mode with active dropout between
    pooling and classifier) each input may also be zeroed or scaled by one common factor
    ``1 / (1 - p)``, as dropout does; CAM then explains the classifier without the mask.

    Args:
        activations: ``(N, C, h, w)`` output of ``layer``.
        pooled: what the classifier received, ``(N, C)`` (any trailing singleton dims).

    Raises:
        MethodError: naming the cause: the classifier did not run, its input has another
            size, or its input is not the spatial mean of ``layer`` (by how much).
    """
    if pooled is None:
        raise no_head(layer, "the classifier did not run during the forward pass")
    pooled = pooled.reshape(pooled.shape[0], -1).astype(np.float64)
    if pooled.shape[1] != activations.shape[1]:
        raise no_head(layer, f"the classifier takes {pooled.shape[1]} features, the layer has {activations.shape[1]} channels")
    rtol = max(1e-4, 8.0 * eps)
    worst = np.inf
    for features in (activations, np.maximum(activations, 0)):
        mean = features.mean(axis=(2, 3), dtype=np.float64)
        atol = rtol * max(float(np.abs(mean).max()), float(np.abs(pooled).max()), 1e-12)
        if dropout:
            mean = _dropout_scaled(mean, pooled, atol)
        diff = float(np.abs(mean - pooled).max())
        if diff <= atol:
            return features
        worst = min(worst, diff / atol * rtol)
    raise no_head(
        layer,
        f"the classifier's input is not the spatial mean of this layer: they differ by up to {worst:.2g} "
        f"(relative) where the model's precision allows {rtol:.1g}",
    )


def _dropout_scaled(mean: np.ndarray, pooled: np.ndarray, atol: float) -> np.ndarray:
    """``mean`` with dropout's zeros and its one common scale applied where ``pooled`` shows
    them; unchanged where they do not fit (so the comparison fails)."""
    alive = np.abs(pooled) > atol
    ratios = pooled[alive] / np.where(np.abs(mean[alive]) > atol, mean[alive], np.nan)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return np.where(alive, mean, 0.0)
    scale = float(np.median(ratios))
    return np.where(alive, mean * scale, 0.0)


def check_cam_layers(feeding: str, layers: Sequence[str]) -> None:
    """CAM explains only the layer that feeds the classifier's global pooling."""
    others = [name for name in layers if name != feeding]
    if others:
        raise MethodError(
            f"CAM applies only to the layer that feeds the classifier ({feeding!r}), "
            f"not {others[0]!r}; use gradcam for other layers"
        )


def no_head(layer: str, why: str) -> MethodError:
    """The error for CAM where the model has no usable global-average-pooling -> linear head
    after ``layer``; ``why`` names the cause found."""
    return MethodError(
        f"CAM needs a global-average-pooling -> linear classifier right after layer {layer!r}, "
        f"but {why}; use gradcam, which works for any CNN"
    )
