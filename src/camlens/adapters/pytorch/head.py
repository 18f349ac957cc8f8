"""Finding the global-average-pooling -> linear head that CAM needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlens.adapters.pytorch.layers import LayerInfo
from camlens.errors import MethodError


@dataclass(frozen=True)
class LinearHead:
    """The classifier whose input is the spatial mean of ``layer``'s output.

    ``rectify`` is True when a functional ReLU sits between the layer and the pooling
    (DenseNet), so CAM's features are ``relu(A)`` rather than ``A``.
    """

    layer: str
    name: str
    linear: nn.Linear
    rectify: bool = False

    def features(self, activations: torch.Tensor) -> torch.Tensor:
        """The feature maps whose spatial mean the linear layer receives."""
        return torch.relu(activations) if self.rectify else activations


def find_linear_head(model: nn.Module, layer: str, layers: Sequence[LayerInfo], num_classes: int) -> LinearHead:
    """Locate the last ``nn.Linear`` that maps ``layer``'s channels to the model's classes.

    Whether its input really is the spatial mean of the layer is checked on every forward by
    :func:`verify_head`; this only finds the candidate.

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
    raise _no_head(layer)


def verify_head(head: LinearHead, activations: torch.Tensor, pooled: torch.Tensor) -> LinearHead:
    """Return the head (possibly with ``rectify`` set) if ``pooled`` is the spatial mean of
    ``activations`` (or of their ReLU); raise :class:`MethodError` otherwise."""
    pooled = pooled.detach().reshape(pooled.shape[0], -1).float()
    for rectify in (head.rectify, not head.rectify):
        mean = (torch.relu(activations) if rectify else activations).detach().float().mean(dim=(2, 3))
        if mean.shape == pooled.shape and torch.allclose(mean, pooled, rtol=1e-4, atol=1e-4 * float(pooled.abs().max()) + 1e-6):
            return head if rectify == head.rectify else LinearHead(head.layer, head.name, head.linear, rectify)
    raise _no_head(head.layer, f"the input of {head.name!r} is not the global average of {head.layer!r}")


def _no_head(layer: str, why: str = "") -> MethodError:
    reason = f" ({why})" if why else ""
    return MethodError(
        f"CAM needs a global-average-pooling -> linear classifier right after layer {layer!r}, "
        f"and this model has none{reason}; use --method gradcam, which works for any CNN"
    )
