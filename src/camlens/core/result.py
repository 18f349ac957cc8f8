"""What an explainer returns for a batch, whatever the framework."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from camlens.core.scores import softmax


@dataclass(frozen=True)
class CamResult:
    """Raw maps for a batch.

    Attributes:
        logits: ``(N, classes)`` pre-softmax scores.
        targets: ``(N, K)`` class indices explained for each sample.
        maps: ``maps[method][layer]`` is ``(N, K, h, w)``, at the layer's resolution, not
            normalised (see :func:`camlens.core.normalize` and :func:`camlens.core.upsample`).
        activations: layer -> ``(N, C, h, w)`` captured feature maps (channels first).
    """

    logits: np.ndarray
    targets: np.ndarray
    maps: dict[str, dict[str, np.ndarray]]
    activations: dict[str, np.ndarray] = field(repr=False)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``(N, classes)``."""
        return softmax(self.logits)

    def map(self, method: str | None = None, layer: str | None = None) -> np.ndarray:
        """The ``(N, K, h, w)`` maps of one method and layer (either may be omitted when unique)."""
        by_method = self.maps[method] if method else _only(self.maps, "method")
        return by_method[layer] if layer else _only(by_method, "layer")


def _only(d: dict, what: str):  # type: ignore[no-untyped-def,type-arg]
    if len(d) != 1:
        raise KeyError(f"several {what}s computed ({', '.join(d)}); name one")
    return next(iter(d.values()))
