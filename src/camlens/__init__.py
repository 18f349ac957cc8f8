"""camlens: see where an image classifier looks.

High level: :func:`explain` (one image, one call) and :class:`Lens` (a loaded model, batches).
Low level: :class:`Explainer`, :class:`CAM`, :class:`GradCAM`, :class:`GradCAMPlusPlus` on
preprocessed batches. The framework-free math lives in :mod:`camlens.core`.
"""

from camlens.adapters.pytorch import CAM, CamResult, Explainer, GradCAM, GradCAMPlusPlus
from camlens.errors import CamlensError
from camlens.explain import Explanation, Lens, Prediction, explain
from camlens.models import load_model

__all__ = [
    "CAM",
    "CamResult",
    "CamlensError",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "Lens",
    "Prediction",
    "explain",
    "load_model",
]
__version__ = "0.1.0"
