"""Finding the global-average-pooling -> linear head that CAM needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from camlens.adapters.pytorch.layers import LayerInfo
from camlens.core.head import no_head


@dataclass(frozen=True)
class LinearHead:
    """The candidate classifier of ``layer``'s features: ``name`` is its module name.

    That its input really is the spatial mean of the layer is checked on every call by
    :func:`camlens.core.head.pooled_features`.
    """

    layer: str
    name: str
    linear: nn.Linear


def find_linear_head(model: nn.Module, layer: str, layers: Sequence[LayerInfo], num_classes: int) -> LinearHead:
    """Locate the last ``nn.Linear`` that maps ``layer``'s channels to the model's classes.

    Raises:
        MethodError: no such linear layer (e.g. VGG's MLP head or ConvNeXt's norm before the head).
    """
    info = {i.name: i for i in layers}[layer]
    channels = info.output_shape[1] if info.output_shape else -1
    modules = dict(model.named_modules())
    for candidate in reversed(layers):
        module = modules[candidate.name]
        if isinstance(module, nn.Linear) and module.in_features == channels and module.out_features == num_classes:
            return LinearHead(layer, candidate.name, module)
    raise no_head(layer)
