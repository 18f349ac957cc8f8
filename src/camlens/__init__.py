"""camlens: see where an image classifier looks.

High level: :func:`explain` (one image, one call) and :class:`Lens` (a loaded model, batches).
Low level: :class:`Explainer`, :class:`CAM`, :class:`GradCAM`, :class:`GradCAMPlusPlus` on
preprocessed PyTorch batches, :class:`KerasExplainer` for Keras 3 models. The framework-free math lives in :mod:`camlens.core`.
"""

from camlens.adapters.pytorch import CAM, CamResult, Explainer, GradCAM, GradCAMPlusPlus
from camlens.errors import CamlensError
from camlens.explain import Explanation, Lens, Prediction, explain
from camlens.models import load_model

__all__ = [
    "CAM",
    "KerasExplainer",
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


def __getattr__(name: str) -> object:
    """``camlens.KerasExplainer`` imports Keras only when asked for."""
    if name == "KerasExplainer":
        from camlens.adapters.keras import KerasExplainer

        return KerasExplainer
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")
