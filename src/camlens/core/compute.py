"""Running methods over everything an adapter captured for a batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from camlens.core.capture import Capture
from camlens.core.methods import Method
from camlens.errors import MethodError


def compute_maps(
    methods: Sequence[Method],
    activations: Mapping[str, np.ndarray],
    targets: np.ndarray,
    gradients: Sequence[Mapping[str, np.ndarray]] | None = None,
    head: tuple[str, np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Maps of every method at every layer for every target column.

    Args:
        methods: the methods to run.
        activations: layer -> ``(N, C, h, w)``.
        targets: ``(N, K)`` class indices.
        gradients: one dict per target column ``k``: layer -> ``(N, C, h, w)`` gradient of the
            column's scores; needed by gradient methods.
        head: ``(layer, features, weights)`` for class-weight methods (CAM): the ``(N, C, h, w)``
            maps whose spatial mean the linear classifier receives, and its ``(classes, C)``
            weight matrix.

    Returns:
        ``maps[method][layer]``: ``(N, K, h, w)``.
    """
    maps: dict[str, dict[str, np.ndarray]] = {m.name: {} for m in methods}
    for name, acts in activations.items():
        per_k: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
        for k in range(targets.shape[1]):
            column = targets[:, k]
            plain = Capture(acts, column, gradients=gradients[k][name] if gradients else None)
            for m in methods:
                if m.needs_class_weights:
                    if head is None or head[0] != name:
                        raise MethodError(f"{m.name} needs the classifier's weights at layer {name!r}")
                    _, features, weights = head
                    per_k[m.name].append(m(Capture(features, column, class_weights=weights[column])))
                else:
                    per_k[m.name].append(m(plain))
        for m in methods:
            maps[m.name][name] = np.stack(per_k[m.name], axis=1)
    return maps
