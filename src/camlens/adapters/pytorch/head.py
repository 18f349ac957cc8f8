"""Finding the global-average-pooling -> linear head that CAM needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlens.adapters.pytorch.layers import LayerInfo
from camlens.core.head import no_head


@dataclass(frozen=True)
class LinearHead:
    """The candidate classifier of ``layer``'s features: ``name`` is its module name, a
    ``nn.Linear`` or a 1x1 ``nn.Conv2d`` (timm's ResNetV2 pools, then classifies with a 1x1 conv).

    That its input really is the spatial mean of the layer is checked on every call by
    :func:`camlens.core.head.pooled_features`.
    """

    layer: str
    name: str
    linear: nn.Linear | nn.Conv2d

    @property
    def weight(self) -> torch.Tensor:
        """``(classes, C)`` weights."""
        w = self.linear.weight
        return w.reshape(w.shape[0], -1)


def find_linear_head(model: nn.Module, layer: str, layers: Sequence[LayerInfo], num_classes: int) -> LinearHead:
    """Locate the last ``nn.Linear`` (or 1x1, ungrouped, unstrided ``nn.Conv2d``) that maps
    ``layer``'s channels to the model's classes.

    Raises:
        MethodError: no such layer (e.g. VGG's MLP head), naming what was looked for.
    """
    info = {i.name: i for i in layers}[layer]
    channel_axis = 1 if info.layout is None or info.layout.kind == "NCHW" else -1
    channels = info.output_shape[channel_axis] if info.output_shape else -1
    modules = dict(model.named_modules())
    for candidate in reversed(layers):
        module = modules[candidate.name]
        if isinstance(module, nn.Linear) and module.in_features == channels and module.out_features == num_classes:
            return LinearHead(layer, candidate.name, module)
        if (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1) and module.in_channels == channels and module.out_channels == num_classes
        ):
            return LinearHead(layer, candidate.name, module)
    raise no_head(layer, f"no linear layer (or 1x1 conv) maps its {channels} channels to the {num_classes} classes")
