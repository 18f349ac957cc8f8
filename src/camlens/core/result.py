"""What an explainer returns for a batch, whatever the framework."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from camlens.core.targets import Column


@dataclass(frozen=True)
class CamResult:
    """Raw maps for a batch.

    Attributes:
        logits: ``(N, units)`` the model's scores when it outputs a score vector (class logits;
            ``[-z/2, z/2]`` for a one-unit head), else None (segmentation, detection).
        probabilities: ``(N, classes)``: softmax of the logits; for a segmentation model the
            share of pixels each class wins; for a detector each label's best score.
        targets: ``(N, K)`` class index of each explained score (``-1`` where it has none:
            a similarity, a custom score).
        columns: the K explained scores, with what their targets decided (regions, boxes).
        scores: ``(N, K)`` the explained scores' values.
        maps: ``maps[method][layer]`` is ``(N, K, h, w)``, at the layer's resolution, not
            normalised (see :func:`camlens.core.normalize` and :func:`camlens.core.upsample`).
        activations: layer -> ``(N, C, h, w)`` captured feature maps (channels first).
    """

    logits: np.ndarray | None
    probabilities: np.ndarray
    targets: np.ndarray
    columns: tuple[Column, ...]
    scores: np.ndarray
    maps: dict[str, dict[str, np.ndarray]]
    activations: dict[str, np.ndarray] = field(repr=False)

    def map(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """The ``(N, K, h, w)`` maps of one method and layer (either may be omitted when unique)."""
        by_method = self.maps[method] if method else _only(self.maps, "method")
        return by_method[layer] if layer else _only(by_method, "layer")


def _only(d: dict, what: str):  # type: ignore[no-untyped-def,type-arg]
    if len(d) != 1:
        raise KeyError(f"several {what}s computed ({', '.join(d)}); name one")
    return next(iter(d.values()))
