"""PyTorch adapter: hooks that capture activations and gradients for the core methods."""

from camlens.adapters.pytorch.extractor import CAM, CamResult, Explainer, GradCAM, GradCAMPlusPlus, resolve_targets
from camlens.adapters.pytorch.layers import LayerInfo, auto_layer, resolve, trace

__all__ = [
    "CAM",
    "CamResult",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerInfo",
    "auto_layer",
    "resolve",
    "resolve_targets",
    "trace",
]
