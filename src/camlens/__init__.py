"""camlens: see where an image classifier looks.

High level: :func:`explain` (one image, one call) and :class:`Lens` (a loaded model, batches).
Low level: :class:`Explainer` (any methods and layers) or a method bound to a model
(``GradCAM(model, layer="layer4")``) on preprocessed batches, PyTorch or Keras 3 alike. Every
method is a class of :mod:`camlens.core.methods`; ``camlens methods`` lists them.
"""

from camlens.adapters import Explainer
from camlens.core.augment import Augment
from camlens.core.methods import (
    CAM,
    KPCACAM,
    AttentionRollout,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GradCAMPlusPlusAuthors,
    GradCAMPlusPlusPGC,
    HiResCAM,
    LayerCAM,
    Method,
    ShapleyCAM,
    XGradCAM,
)
from camlens.core.perturbation import (
    ISCAM,
    RISE,
    SSCAM,
    AblationCAM,
    FasterScoreCAM,
    GroupCAM,
    ReciproCAM,
    ScoreCAM,
)
from camlens.core.result import CamResult
from camlens.errors import CamlensError
from camlens.explain import Explanation, Lens, Prediction, explain
from camlens.models import load_model

__all__ = [
    "CAM",
    "ISCAM",
    "KPCACAM",
    "RISE",
    "SSCAM",
    "AblationCAM",
    "Augment",
    "FasterScoreCAM",
    "GroupCAM",
    "ReciproCAM",
    "ScoreCAM",
    "AttentionRollout",
    "CamResult",
    "CamlensError",
    "EigenCAM",
    "EigenGradCAM",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradCAMPlusPlusAuthors",
    "GradCAMPlusPlusPGC",
    "HiResCAM",
    "KerasExplainer",
    "LayerCAM",
    "Lens",
    "Method",
    "Prediction",
    "ShapleyCAM",
    "XGradCAM",
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
