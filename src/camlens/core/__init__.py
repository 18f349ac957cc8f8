"""Framework-free core: channel weights and maps from activations, gradients and logits.

Everything here works on NumPy arrays laid out as ``(N, C, H, W)``; framework adapters
(:mod:`camlens.adapters`) capture those arrays from a model and hand them over.
"""

from camlens.core.capture import Capture
from camlens.core.maps import normalize, upsample, weighted_sum
from camlens.core.methods import CAM, GradCAM, GradCAMPlusPlus, Method, get_method, method_names

__all__ = [
    "CAM",
    "Capture",
    "GradCAM",
    "GradCAMPlusPlus",
    "Method",
    "get_method",
    "method_names",
    "normalize",
    "upsample",
    "weighted_sum",
]
