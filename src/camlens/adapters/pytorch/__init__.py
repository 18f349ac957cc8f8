"""PyTorch adapter: hooks that capture activations and gradients for the core methods."""

from camlens.adapters.pytorch.extractor import CAM, Explainer, GradCAM, GradCAMPlusPlus, feature_maps
from camlens.adapters.pytorch.layers import LayerInfo, auto_layer, resolve, trace
from camlens.core.result import CamResult

__all__ = [
    "CAM",
    "CamResult",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "LayerInfo",
    "auto_layer",
    "resolve",
    "feature_maps",
    "trace",
]
